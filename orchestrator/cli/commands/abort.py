"""`orchestrator abort ID`: stop a rollout; undo as rollout.on_failure says.

DESIGN.md "Fleet rollout"; the semantics are `Service.abort`'s (orchestrator/daemon/service.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.cli import exits
from orchestrator.cli.client import Client, add_client_args
from orchestrator.core.terminal import safe
from orchestrator.errors import EXIT_OK

EXITS = exits.table({EXIT_OK: "the abort was requested"},
                    exits.BY_ID, exits.CLIENT)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "abort", help="stop a rollout; undo as rollout.on_failure says",
        description=(
            "Start no more hosts (those in flight stop before their switch, their staged release "
            "removed). With rollout.on_failure: rollback (the default) the hosts this deployment "
            "already switched go back to their previous release; with pause they are left as they "
            "are. A queued deployment is cancelled."))
    parser.add_argument("deployment", metavar="ID")
    add_client_args(parser)
    parser.set_defaults(func=run)
    parser.epilog = exits.epilog(EXITS)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    with Client.from_args(args) as client:
        record = client.control(args.deployment, "abort")
    print(json.dumps(record) if args.json
          else safe(f"{record['id']}: {record['state']} (abort requested)"))
    return EXIT_OK
