"""`orchestrator pause ID`: hold a running rollout before its next batch.

DESIGN.md "Fleet rollout"; the semantics are `Service.pause`'s (orchestrator/daemon/service.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.cli import exits
from orchestrator.cli.client import Client, add_client_args
from orchestrator.core.terminal import safe
from orchestrator.errors import EXIT_OK

EXITS = exits.table({EXIT_OK: "the pause was requested"},
                    exits.BY_ID, exits.CLIENT)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "pause", help="hold a running rollout before its next batch",
        description=(
            "Hold a running rollout: the batch in flight finishes, then it waits (state paused) "
            "for `orchestrator resume ID` or `orchestrator abort ID`."))
    parser.add_argument("deployment", metavar="ID")
    add_client_args(parser)
    parser.set_defaults(func=run)
    parser.epilog = exits.epilog(EXITS)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    with Client.from_args(args) as client:
        record = client.control(args.deployment, "pause")
    print(json.dumps(record) if args.json
          else safe(f"{record['id']}: {record['state']} (pause requested)"))
    return EXIT_OK
