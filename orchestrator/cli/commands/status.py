"""`orchestrator status [ID]`: the deployments, or one with its per-host steps."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.cli import exits
from orchestrator.cli.client import Client, add_client_args
from orchestrator.cli.render import deployment_detail, deployments_table, use_colour
from orchestrator.errors import EXIT_OK

EXITS = exits.table(
    {EXIT_OK: "listed, whatever the deployments' states (`wait ID` exits with an outcome)"},
    exits.UNKNOWN_ID, exits.CLIENT)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status", help="list deployments, or show one",
        description="Without ID: the latest deployments. With ID: its state and per-host steps.",
        **exits.help_args(EXITS))
    parser.add_argument("deployment", metavar="ID", nargs="?")
    parser.add_argument("--app", help="only this app's deployments")
    add_client_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    colour = use_colour()
    with Client.from_args(args) as client:
        if args.deployment:
            record = client.deployment(args.deployment)
            print(json.dumps(record, indent=2) if args.json
                  else deployment_detail(record, colour=colour))
        else:
            records = client.deployments(app=args.app)
            print(json.dumps(records, indent=2) if args.json
                  else deployments_table(records, colour=colour))
    return EXIT_OK
