"""`orchestrator hosts`: every host's last probe (facts and status) as the daemon saw it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.cli import exits
from orchestrator.cli.client import Client, add_client_args
from orchestrator.cli.render import hosts_table, use_colour
from orchestrator.errors import EXIT_OK

EXITS = exits.table({EXIT_OK: "listed, whatever the hosts' status (`verify` exits with it)"},
                    exits.CLIENT)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "hosts", help="list hosts with their last facts and status",
        description="Hosts the daemon has probed: status healthy/degraded/failed/unreachable.",
        **exits.help_args(EXITS))
    add_client_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with Client.from_args(args) as client:
        hosts = client.hosts()
    print(json.dumps(hosts, indent=2) if args.json else hosts_table(hosts, colour=use_colour()))
    return EXIT_OK
