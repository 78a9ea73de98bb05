"""`orchestrator releases APP [--host H]...`: an app's releases on its hosts, and
`orchestrator releases unmark-bad APP RELEASE [--host H]...`: clear a release's bad mark.

For each host: every release with its state (current, previous-good, bad, staging, old), when
it was made, its environment and model hashes (from its manifest.json). Through the daemon
when no `--inventory` is given (its inventory and SSH settings; `--socket` or
$ORCHESTRATOR_SOCKET find it), else directly over SSH with that inventory. `unmark-bad` always
goes through the daemon, which records an audit event (daemon/apps.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.cli import exits, render
from orchestrator.cli.client import Client, add_client_args
from orchestrator.core.terminal import safe
from orchestrator.errors import (
    EXIT_DEPLOY_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNREACHABLE,
    DaemonUnavailable,
    InvalidInput,
    worst,
)

EXITS = exits.table(
    {EXIT_OK: "every host answered (unmark-bad: cleared wherever it was marked)",
     EXIT_INVALID: "invalid input (inventory, unknown host, bad app name or release id)",
     EXIT_DEPLOY_FAILED: "a host could not be read (its answer was refused)",
     EXIT_UNREACHABLE: "none was refused, but a host (or the daemon) is unreachable"})

COLUMNS = ("HOST", "RELEASE", "STATE", "CREATED", "ENV", "MODEL")
UNMARK = "unmark-bad"


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "releases", help="list an app's releases on hosts; unmark-bad clears a bad mark",
        usage="orchestrator releases APP [options]\n"
              "       orchestrator releases unmark-bad APP RELEASE [options]",
        description="List the releases of APP on each host, with their state; or clear "
                    "RELEASE's bad mark (it may be switched to and rolled back to again).",
        **exits.help_args(EXITS))
    parser.add_argument("words", nargs="+", metavar="APP", help=argparse.SUPPRESS)
    parser.add_argument("--inventory", type=Path,
                        help="inventory YAML file: read the hosts directly (default: the daemon)")
    parser.add_argument("--host", action="append", default=[], metavar="H",
                        help="only these hosts/groups (default: every host)")
    add_client_args(parser)
    parser.set_defaults(func=run)


def _check_app(app: str) -> str:
    from orchestrator.core.inventory import NAME_PATTERN

    if not re.fullmatch(NAME_PATTERN, app):
        raise InvalidInput(f"not an app name ({NAME_PATTERN}): {app!r}")
    return app


def run(args: argparse.Namespace) -> int:
    words: list[str] = args.words
    if len(words) == 3 and words[0] == UNMARK:
        return unmark(args, _check_app(words[1]), words[2])
    if len(words) != 1:
        raise InvalidInput(f"expected APP, or {UNMARK} APP RELEASE: {' '.join(words)!r}")
    app = _check_app(words[0])
    if args.inventory is None:
        try:
            with Client.from_args(args) as client:
                rows: dict[str, Any] = client.releases(app, args.host)
        except DaemonUnavailable as exc:
            raise DaemonUnavailable(f"{exc}; or read the hosts directly with --inventory "
                                    "FILE") from None
    else:
        rows = direct(args.inventory, app, args.host)
    print(json.dumps(rows, indent=2, sort_keys=True) if args.json else render_table(rows))
    failed = {name: r["error"] for name, r in rows.items() if "error" in r}
    for name, why in failed.items():
        print(safe(f"error: {name}: {why}"), file=sys.stderr)
    return worst(int(rows[name].get("exit_code", EXIT_DEPLOY_FAILED)) for name in failed)


def direct(inventory_path: Path, app: str, names: list[str]) -> dict[str, Any]:
    """The releases read over SSH with this inventory, in the daemon's JSON shape."""
    from orchestrator.core.inventory import load_inventory
    from orchestrator.deploy.releases import app_releases, releases_json
    from orchestrator.hosts.pool import Pool
    from orchestrator.hosts.ssh import SshOptions

    inventory = load_inventory(inventory_path)
    hosts = inventory.resolve(names) if names else list(inventory.hosts.values())
    with Pool(SshOptions.for_inventory(inventory), max_connections=16) as pool:
        return releases_json(app_releases(pool, hosts, app))


def unmark(args: argparse.Namespace, app: str, release_id: str) -> int:
    from orchestrator.core.release import check_release_id

    check_release_id(release_id)
    if args.inventory is not None:
        raise InvalidInput(f"{UNMARK} goes through the daemon (it records an audit event): "
                           "drop --inventory")
    with Client.from_args(args) as client:
        out = client.unmark_bad(app, release_id, args.host)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        where = ", ".join(out["unmarked"]) or "no host (it was not marked bad)"
        print(safe(f"{release_id} ({app}): bad mark cleared on {where}"))
    for name, why in out["errors"].items():
        print(safe(f"error: {name}: {why}"), file=sys.stderr)
    return EXIT_UNREACHABLE if out["errors"] else EXIT_OK


def render_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """The table of `releases_json`'s shape: a row per release, one per host in error."""
    table: list[list[str]] = []
    for name, r in rows.items():
        if "error" in r:
            table.append([name, "-", f"error: {r['error']}", "-", "-", "-"])
            continue
        if not r["releases"]:
            table.append([name, "-", "no releases", "-", "-", "-"])
        for rel in r["releases"]:
            created = datetime.fromtimestamp(float(rel["created"]), UTC)
            table.append([name, rel["release_id"], rel["state"], f"{created:%Y-%m-%d %H:%M:%S}",
                          (rel["env_hash"] or "-")[:12], (rel["model_sha256"] or "-")[:12]])
    return render.table(COLUMNS, table)  # every cell (host text) shown through `safe`
