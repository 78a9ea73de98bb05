"""`orchestrator verify [HOST...]`: probe hosts now (all of the inventory without names).

Exit 0 when every host is healthy or degraded, 3 when any is failed or unreachable."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.client import Client, add_client_args
from orchestrator.errors import EXIT_DEPLOY_FAILED, EXIT_OK
from orchestrator.render import hosts_table, use_colour


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "verify", help="probe hosts now and record their facts",
        description="Probe HOSTs (names, groups or label selectors; default: every host of "
                    "the daemon's inventory) and show their status.")
    parser.add_argument("hosts", metavar="HOST", nargs="*")
    add_client_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with Client.from_args(args) as client:
        hosts = client.verify(args.hosts)
    print(json.dumps(hosts, indent=2) if args.json else hosts_table(hosts, colour=use_colour()))
    bad = any(h["status"] in ("failed", "unreachable") for h in hosts)
    return EXIT_DEPLOY_FAILED if bad else EXIT_OK
