"""`orchestrator logs ID [--follow] [--host H] [--json]`: a deployment's events; with --follow,
until it ends, exiting with its outcome's code (as `wait` does)."""

from __future__ import annotations

import argparse
from typing import Any

from orchestrator.cli import exits
from orchestrator.cli.client import Client, add_client_args, print_events, wait_for_end
from orchestrator.errors import EXIT_DEPLOY_FAILED, EXIT_OK

EXITS = exits.table(
    {EXIT_OK: "the events were printed; with --follow: the deployment succeeded",
     EXIT_DEPLOY_FAILED: "with --follow: the deployment failed, was rolled back or cancelled"},
    exits.UNKNOWN_ID, exits.CLIENT)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "logs", help="show a deployment's events",
        description="Print a deployment's events in order; --follow streams them until it ends "
                    "and exits with its outcome.", **exits.help_args(EXITS))
    parser.add_argument("deployment", metavar="ID")
    parser.add_argument("--follow", "-f", action="store_true", help="stream until it finishes")
    parser.add_argument("--host", help="only this host's events")
    add_client_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with Client.from_args(args) as client:
        if args.follow:
            return wait_for_end(client, args.deployment, show=True, as_json=args.json,
                                host=args.host)
        print_events(client, args.deployment, follow=False, host=args.host, as_json=args.json)
    return EXIT_OK
