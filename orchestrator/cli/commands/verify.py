"""`orchestrator verify [HOST...]`: re-verify hosts now (all of the inventory without names).

With the deploying runner, each app's current release on those hosts is re-verified: probe and
diff against its manifest, audit of the model and venv files, the warmup again against its
baseline (orchestrator/core/findings.py says which finding gives which status). Exit 0 when
every
host is healthy or degraded, 3 when any is failed or unreachable."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.cli.client import Client, add_client_args
from orchestrator.cli.render import hosts_table, use_colour
from orchestrator.errors import EXIT_DEPLOY_FAILED, EXIT_OK


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "verify", help="re-verify hosts now and record their status",
        description="Re-verify HOSTs (names, groups or label selectors; default: every host "
                    "of the daemon's inventory): probe them, check each deployed release's "
                    "files and warmup against its manifest, and show their status with the "
                    "reasons. A degraded or failed host is left out of new rollouts until it "
                    "verifies healthy again.")
    parser.add_argument("hosts", metavar="HOST", nargs="*")
    add_client_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with Client.from_args(args) as client:
        hosts = client.verify(args.hosts)
    print(json.dumps(hosts, indent=2) if args.json else hosts_table(hosts, colour=use_colour()))
    bad = any(h["status"] in ("failed", "unreachable") for h in hosts)
    return EXIT_DEPLOY_FAILED if bad else EXIT_OK
