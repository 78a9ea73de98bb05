"""`orchestrator logs ID [--follow] [--host H] [--json]`: a deployment's events."""

from __future__ import annotations

import argparse
from typing import Any

from orchestrator.cli.client import Client, add_client_args, print_events


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "logs", help="show a deployment's events",
        description="Print a deployment's events in order; --follow streams them until it ends.")
    parser.add_argument("deployment", metavar="ID")
    parser.add_argument("--follow", "-f", action="store_true", help="stream until it finishes")
    parser.add_argument("--host", help="only this host's events")
    add_client_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with Client.from_args(args) as client:
        print_events(client, args.deployment, follow=args.follow, host=args.host,
                     as_json=args.json)
    return 0
