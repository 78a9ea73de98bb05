"""`orchestrator wait ID [--timeout S] [--json]`: block until a deployment ends; exit with its
outcome (like `kubectl rollout status`).

It polls the deployment's record (not the event stream), so a daemon restart in between only
delays the answer; a daemon that stays away past the timeout is exit 4 like the timeout itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from orchestrator.cli import exits
from orchestrator.cli.client import FINISHED, Client, add_client_args, exit_code
from orchestrator.core.terminal import safe
from orchestrator.errors import (
    EXIT_DEPLOY_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    DaemonUnavailable,
)

EXITS = exits.table(
    {EXIT_OK: "the deployment succeeded",
     EXIT_DEPLOY_FAILED: "the deployment failed, was rolled back or cancelled"},
    exits.UNKNOWN_ID,
    {EXIT_UNREACHABLE: "--timeout passed before it ended (it goes on), or the daemon does not "
                       "answer"})

POLL_SECONDS = 0.5


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "wait", help="wait for a deployment to end; exit with its outcome",
        description="Block until deployment ID ends (succeeded, failed, rolled back, "
                    "cancelled), print its outcome and exit with its code.",
        **exits.help_args(EXITS))
    parser.add_argument("deployment", metavar="ID")
    parser.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                        help="give up after this long, exit 4 (default: wait for ever)")
    add_client_args(parser)
    parser.set_defaults(func=run)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {value!r}")
    return seconds


def run(args: argparse.Namespace) -> int:
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    with Client.from_args(args) as client:
        record = client.deployment(args.deployment)  # an unknown ID: exit 2 at once
        while record["state"] not in FINISHED:
            if deadline is not None and time.monotonic() >= deadline:
                return _timed_out(args, record)
            time.sleep(POLL_SECONDS if deadline is None
                       else max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))
            try:
                record = client.deployment(args.deployment)
            except DaemonUnavailable:
                if deadline is None:
                    raise  # nobody to ask and no bound given: say so now
                continue  # a restarting daemon: ask again until the deadline
    code = exit_code(record["state"])
    _show(args, record, code)
    return code


def _timed_out(args: argparse.Namespace, record: dict[str, Any]) -> int:
    _show(args, record, EXIT_UNREACHABLE)
    if not args.json:
        print(safe(f"error: {record['id']} still {record['state']} after {args.timeout:g} s"),
              file=sys.stderr)
    return EXIT_UNREACHABLE


def _show(args: argparse.Namespace, record: dict[str, Any], code: int) -> None:
    if args.json:
        print(json.dumps({"id": record["id"], "app": record["app"], "state": record["state"],
                          "reason": (record.get("result") or {}).get("reason"),
                          "exit_code": code}))
        return
    reason = (record.get("result") or {}).get("reason")
    print(safe(f"{record['id']} ({record['app']}): {record['state']}"
               + (f": {reason}" if reason and code != EXIT_OK else ""), line=True))

