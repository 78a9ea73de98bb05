"""`orchestrator probe HOST... --inventory FILE [--all] [--json]`: read hosts' GPU stacks.

Rendering is pure (`render_table`, `render_json`); the command only loads the inventory, probes
through the connection pool and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.cli import exits
from orchestrator.cli.render import table
from orchestrator.core.facts import HostFacts
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
    {EXIT_OK: "every host answered (a missing driver or GPU is a fact, not a failure)",
     EXIT_INVALID: "invalid input (inventory, unknown host or group, no host named)",
     EXIT_DEPLOY_FAILED: "a host answered wrongly (host key refused, bad output)",
     EXIT_UNREACHABLE: "no host answered wrongly, but one is unreachable"})

GIB = 1 << 30


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "probe", help="show hosts' OS, Python, NVIDIA driver, CUDA, GPUs and CUDA libraries",
        description="Probe hosts over SSH (nothing but python3 needed there) and print their\n"
                    "facts: a table by default, the facts JSON with --json.",
        **exits.help_args(EXITS))
    parser.add_argument("hosts", nargs="*", metavar="HOST",
                        help="host names, group names or label selectors (key=value)")
    parser.add_argument("--inventory", type=Path, required=True, help="inventory YAML file")
    parser.add_argument("--all", action="store_true", help="every host in the inventory")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    parser.add_argument("--max-parallel", type=int, default=16, metavar="N",
                        help="hosts probed at once (default 16)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so `orchestrator --help` does not pay for paramiko.
    from orchestrator.core.inventory import load_inventory
    from orchestrator.hosts.pool import Pool
    from orchestrator.hosts.probe import probe_hosts
    from orchestrator.hosts.ssh import SshOptions

    if args.max_parallel < 1:
        raise InvalidInput("--max-parallel must be at least 1")
    inventory = load_inventory(args.inventory)
    if args.all:
        hosts = list(inventory.hosts.values())
    elif args.hosts:
        hosts = inventory.resolve(args.hosts)
    else:
        raise InvalidInput("name at least one HOST (or group), or use --all")
    with Pool(SshOptions.for_inventory(inventory), max_connections=args.max_parallel) as pool:
        results = probe_hosts(pool, hosts, args.max_parallel)
    print(render_json(results) if args.json else render_table(results))
    failed = [r for r in results.values() if isinstance(r, HostError)]
    if failed and not args.json:
        for err in failed:
            print(safe(f"error: {err}"), file=sys.stderr)
    return worst(err.exit_code for err in failed)


def render_json(results: Mapping[str, HostFacts | HostError]) -> str:
    out: dict[str, Any] = {"facts": {}, "errors": {}}
    for name, result in results.items():
        if isinstance(result, HostError):
            out["errors"][name] = {"type": type(result).__name__, "message": result.reason}
        else:
            out["facts"][name] = result.raw
    return json.dumps(out, indent=2, sort_keys=True)


COLUMNS = ("HOST", "PYTHON", "DRIVER", "CUDA", "GPUS", "CUDNN", "CUDART", "NVML ERROR")


def render_table(results: Mapping[str, HostFacts | HostError]) -> str:
    rows: list[list[str]] = []
    for name, result in results.items():
        if isinstance(result, HostError):
            failed = f"{type(result).__name__} (see below)"
            rows.append([name, "-", "-", "-", failed, "-", "-", "-"])
        else:
            rows.append(facts_row(result))
    return table(COLUMNS, rows)  # every cell (host text) shown through `safe`


def facts_row(facts: HostFacts) -> list[str]:
    err = facts.nvml_error
    return [
        facts.host,
        facts.python_version,
        facts.driver_version or "-",
        facts.cuda_driver_version or "-",
        gpus_cell(facts),
        library_cell(facts, "cudnn"),
        library_cell(facts, "cudart"),
        f"{err.name} ({err.code})" if err else "-",
    ]


def gpus_cell(facts: HostFacts) -> str:
    """"2x NVIDIA H100 80GB HBM3 (CC 9.0, 80.0 GiB)": identical GPUs grouped."""
    if not facts.gpus:
        return "none"
    kinds = Counter(
        (g.name, g.compute_capability, g.memory_total_bytes / GIB) for g in facts.gpus
    )
    return ", ".join(
        f"{count}x {name} (CC {cc}, {mem:.1f} GiB)" for (name, cc, mem), count in kinds.items()
    )


def library_cell(facts: HostFacts, kind: str) -> str:
    versions = dict.fromkeys(lib.version or "?" for lib in facts.libraries if lib.name == kind)
    return ",".join(versions) or "-"
