"""`orchestrator resume ID`: let a paused rollout go on.

DESIGN.md "Fleet rollout"; the semantics are `Service.resume`'s (orchestrator/daemon/service.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.cli import exits
from orchestrator.cli.client import Client, add_client_args
from orchestrator.core.terminal import safe
from orchestrator.errors import EXIT_OK

EXITS = exits.table({EXIT_OK: "the resume was requested"},
                    exits.BY_ID, exits.CLIENT)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "resume", help="let a paused rollout go on",
        description=(
            "Let a paused rollout go on with its next batch; a rollout held by "
            "rollout.on_failure: pause goes on too, accepting the failures that held it."))
    parser.add_argument("deployment", metavar="ID")
    add_client_args(parser)
    parser.set_defaults(func=run)
    parser.epilog = exits.epilog(EXITS)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    with Client.from_args(args) as client:
        record = client.control(args.deployment, "resume")
    print(json.dumps(record) if args.json
          else safe(f"{record['id']}: {record['state']} (resume requested)"))
    return EXIT_OK
