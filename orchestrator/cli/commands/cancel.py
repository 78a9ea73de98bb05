"""`orchestrator cancel ID`: stop a queued or running deployment after its current step."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.cli import exits
from orchestrator.cli.client import Client, add_client_args
from orchestrator.core.terminal import safe
from orchestrator.errors import EXIT_OK

EXITS = exits.table({EXIT_OK: "the deployment was cancelled, or its cancel requested"},
                    exits.BY_ID, exits.CLIENT)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cancel", help="cancel a deployment",
        description="Cancel a queued deployment, or stop a running one after its current step.")
    parser.add_argument("deployment", metavar="ID")
    add_client_args(parser)
    parser.set_defaults(func=run)
    parser.epilog = exits.epilog(EXITS)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    with Client.from_args(args) as client:
        record = client.cancel(args.deployment)
    print(json.dumps(record) if args.json else safe(
        f"{record['id']}: {record['state']}"
        + (" (cancel requested)" if record["state"] == "running" else "")))
    return EXIT_OK
