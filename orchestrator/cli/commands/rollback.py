"""`orchestrator rollback ID|--app APP [--to RELEASE]`: roll a deployment's hosts back to their
previous good release, or to a chosen one (a running one is stopped first).

The daemon asks every host before anything changes: a host with nowhere to go (the app's first
release, a chosen release missing or marked bad) refuses the whole rollback, exit 2 with the
reason, nothing marked and the deployment's state untouched."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.cli import exits
from orchestrator.cli.client import Client, add_client_args
from orchestrator.core.release import check_release_id
from orchestrator.core.terminal import safe
from orchestrator.errors import EXIT_OK

EXITS = exits.table({EXIT_OK: "the rollback started (follow it: `logs ID -f`, `wait ID`)"},
                    exits.BY_ID, exits.CLIENT)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "rollback", help="roll back a deployment",
        description="Roll back deployment ID, or the running or latest succeeded deployment "
                    "of --app APP.")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("deployment", metavar="ID", nargs="?")
    target.add_argument("--app", help="the app whose deployment to roll back")
    parser.add_argument("--to", metavar="RELEASE",
                        help="a release id (see `orchestrator releases APP`) instead of the "
                             "previous good release; a succeeded deployment only")
    add_client_args(parser)
    parser.set_defaults(func=run)
    parser.epilog = exits.epilog(EXITS)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    if args.to is not None:
        check_release_id(args.to)
    with Client.from_args(args) as client:
        record = client.rollback(deployment=args.deployment, app=args.app, to=args.to)
    print(json.dumps(record) if args.json else safe(
        f"{record['id']} ({record['app']}): {record['state']}; "
        f"follow with `orchestrator logs {record['id']} --follow`"))
    return EXIT_OK
