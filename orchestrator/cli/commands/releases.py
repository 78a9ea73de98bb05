"""`orchestrator releases APP --inventory FILE [--host H]...`: an app's releases on its hosts.

For each host: every release with its state (current, previous-good, bad, staging, old), when
it was made, its environment and model hashes (from its manifest.json). Read-only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.cli import exits, render
from orchestrator.core.terminal import safe
from orchestrator.errors import (
    EXIT_DEPLOY_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNREACHABLE,
    HostError,
    InvalidInput,
    worst,
)

EXITS = exits.table(
    {EXIT_OK: "every host answered",
     EXIT_INVALID: "invalid input (inventory, unknown host, bad app name)",
     EXIT_DEPLOY_FAILED: "a host could not be read (its answer was refused)",
     EXIT_UNREACHABLE: "none was refused, but a host is unreachable"})

COLUMNS = ("HOST", "RELEASE", "STATE", "CREATED", "ENV", "MODEL")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "releases", help="list an app's releases on hosts",
        description="List the releases of APP on each host, with their state.",
        **exits.help_args(EXITS))
    parser.add_argument("app", metavar="APP", help="the app (the spec's name)")
    parser.add_argument("--inventory", type=Path, required=True, help="inventory YAML file")
    parser.add_argument("--host", action="append", default=[], metavar="H",
                        help="only these hosts/groups (default: every host)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orchestrator.core.inventory import NAME_PATTERN, load_inventory
    from orchestrator.hosts.hostops import HostOps, ReleaseInfo
    from orchestrator.hosts.pool import Pool
    from orchestrator.hosts.ssh import SshOptions
    from orchestrator.hosts.transport import Transport

    if not re.fullmatch(NAME_PATTERN, args.app):
        raise InvalidInput(f"not an app name ({NAME_PATTERN}): {args.app!r}")
    inventory = load_inventory(args.inventory)
    hosts = inventory.resolve(args.host) if args.host else list(inventory.hosts.values())

    def one(transport: Transport, host: Any) -> list[ReleaseInfo]:
        return HostOps(transport, host.deploy_root).releases(args.app)

    with Pool(SshOptions.for_inventory(inventory), max_connections=16) as pool:
        results = pool.map_hosts(one, hosts, 16)
    rows = {name: (r if isinstance(r, HostError) else [_row(i) for i in r])
            for name, r in results.items()}
    print(render_json(rows) if args.json else render_table(rows))
    failed = [r for r in results.values() if isinstance(r, HostError)]
    for err in failed:
        print(safe(f"error: {err}"), file=sys.stderr)
    return worst(err.exit_code for err in failed)


def _row(info: Any) -> dict[str, Any]:
    manifest: Mapping[str, Any] = info.manifest
    return {"release_id": info.release_id, "state": info.state, "created": info.created,
            "env_hash": info.env_hash, "model_sha256": manifest.get("model_sha256"),
            "lock_sha256": manifest.get("lock_sha256"), "deployment": manifest.get("deployment")}


def render_json(rows: Mapping[str, Sequence[dict[str, Any]] | HostError]) -> str:
    out = {name: ({"error": r.reason} if isinstance(r, HostError) else {"releases": list(r)})
           for name, r in rows.items()}
    return json.dumps(out, indent=2, sort_keys=True)


def render_table(rows: Mapping[str, Sequence[dict[str, Any]] | HostError]) -> str:
    table: list[list[str]] = []
    for name, r in rows.items():
        if isinstance(r, HostError):
            table.append([name, "-", f"error: {r.reason}", "-", "-", "-"])
            continue
        if not r:
            table.append([name, "-", "no releases", "-", "-", "-"])
        for rel in r:
            created = datetime.fromtimestamp(float(rel["created"]), UTC)
            table.append([name, rel["release_id"], rel["state"], f"{created:%Y-%m-%d %H:%M:%S}",
                          (rel["env_hash"] or "-")[:12], (rel["model_sha256"] or "-")[:12]])
    return render.table(COLUMNS, table)  # every cell (host text) shown through `safe`
