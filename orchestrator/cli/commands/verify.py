"""`orchestrator verify [HOST...]`: re-verify hosts now (all of the inventory without names).

With the deploying runner, each app's current release on those hosts is re-verified: probe and
diff against its manifest, audit of the model and venv files, the warmup again against its
baseline (orchestrator/core/findings.py says which finding gives which status). Exit 0 when
every host is healthy, 3 when any failed, else 4 when any is unreachable or degraded."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.cli import exits
from orchestrator.cli.client import Client, add_client_args
from orchestrator.cli.render import hosts_table, use_colour
from orchestrator.errors import (
    EXIT_DEPLOY_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNREACHABLE,
    worst,
)

EXITS = exits.table(
    {EXIT_OK: "every host verified healthy",
     EXIT_INVALID: "an unknown host, group or selector",
     EXIT_DEPLOY_FAILED: "a host failed its verification",
     EXIT_UNREACHABLE: "no host failed, but one is unreachable or degraded; or the daemon "
                       "does not answer"})

#: A host's status as an exit code.
STATUS_CODES = {"healthy": EXIT_OK, "degraded": EXIT_UNREACHABLE,
                "unreachable": EXIT_UNREACHABLE, "failed": EXIT_DEPLOY_FAILED}


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "verify", help="re-verify hosts now and record their status",
        description="Re-verify HOSTs (names, groups or label selectors; default: every host "
                    "of the daemon's inventory): probe them, check each deployed release's "
                    "files and warmup against its manifest, and show their status with the "
                    "reasons. A degraded or failed host is left out of new rollouts until it "
                    "verifies healthy again.",
        **exits.help_args(EXITS))
    parser.add_argument("hosts", metavar="HOST", nargs="*")
    add_client_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with Client.from_args(args) as client:
        hosts = client.verify(args.hosts)
    print(json.dumps(hosts, indent=2) if args.json else hosts_table(hosts, colour=use_colour()))
    return worst(STATUS_CODES.get(h["status"], EXIT_DEPLOY_FAILED) for h in hosts)
