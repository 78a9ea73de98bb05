"""`orchestrator plan SPEC [--inventory FILE] [--json]`: probe the spec's targets and show, per
host, every preflight check with its verdict and each step of the playbook as it would run there
(each step describes itself), changing nothing of the app on any host.

Phases: load (spec, lock, inventory, playbook: any problem exits 2 before a host is touched) ->
probe (read-only, in the bounded pool; the probe's own tools are shipped to the host's
content-addressed `.orchestrator/tools/` cache if missing, as every step does) -> pure plan ->
print.
Exit codes: `EXITS`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from orchestrator.cli import exits
from orchestrator.core.compat import load_compat
from orchestrator.core.envinputs import load_environment
from orchestrator.core.inventory import load_inventory
from orchestrator.core.spec import load_spec
from orchestrator.core.terminal import safe
from orchestrator.deploy.imagebuild import pack_layout
from orchestrator.deploy.plan import build_plan, render_text
from orchestrator.deploy.playbook import load_playbook
from orchestrator.errors import (
    EXIT_DEPLOY_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNREACHABLE,
    InvalidInput,
)
from orchestrator.hosts import ssh
from orchestrator.hosts.pool import Pool
from orchestrator.hosts.probe import probe_hosts

INVENTORY_ENV = "ORCHESTRATOR_INVENTORY"

EXITS = exits.table(
    {EXIT_OK: "every target passes its preflight (warnings allowed)",
     EXIT_INVALID: "invalid input (spec, lock, inventory, unknown target); no host touched",
     EXIT_DEPLOY_FAILED: "a target fails its preflight (or answered the probe wrongly)",
     EXIT_UNREACHABLE: "none fails, but a target is unreachable"})


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan", help="show what a rollout would find and do on each target, changing nothing",
        description="Probe the spec's targets, run the preflight on each, and print every check "
                    "with its verdict and the rollout steps.",
        **exits.help_args(EXITS),
    )
    parser.add_argument("spec", type=Path, metavar="SPEC", help="the deployment spec (YAML)")
    parser.add_argument("--inventory", type=Path, metavar="FILE",
                        help=f"inventory YAML (default: ${INVENTORY_ENV})")
    parser.add_argument("--known-hosts", type=Path, metavar="FILE",
                        help="known_hosts file (default: the inventory's ssh.known_hosts, else "
                             "$ORCHESTRATOR_KNOWN_HOSTS, else ~/.config/orchestrator/known_hosts)")
    parser.add_argument("--identity", type=Path, metavar="FILE",
                        help="SSH private key (default: the inventory's ssh.identity_file)")
    parser.add_argument("--max-parallel", type=int, metavar="N",
                        help="SSH sessions at once (default: the spec's rollout.max_parallel)")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = pack_layout(load_spec(args.spec))  # an OCI layout directory: read as an archive
    lock = load_environment(spec)
    inventory = load_inventory(_inventory_path(args.inventory))
    hosts = inventory.resolve(spec.targets)
    data = load_compat()
    playbook = load_playbook()
    max_parallel = args.max_parallel or spec.rollout.max_parallel
    if max_parallel < 1:
        raise InvalidInput(f"--max-parallel must be at least 1, not {max_parallel}")
    overrides: dict[str, Any] = {}
    if args.known_hosts is not None:
        overrides["known_hosts"] = args.known_hosts
    if args.identity is not None:
        overrides["identity_file"] = args.identity
    options = ssh.SshOptions.for_inventory(inventory, **overrides)
    with Pool(options, max_connections=max_parallel) as pool:
        probed = probe_hosts(pool, hosts, max_parallel)
    plan = build_plan(spec, lock, hosts, probed, data, playbook)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else safe(render_text(plan)))
    return plan.exit_code


def _inventory_path(given: Path | None) -> Path:
    if given is not None:
        return given
    env = os.environ.get(INVENTORY_ENV)
    if env:
        return Path(env)
    raise InvalidInput(f"no inventory: give --inventory FILE or set {INVENTORY_ENV}")
