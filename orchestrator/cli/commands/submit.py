"""`orchestrator submit SPEC [--wait] [--follow] [--force]`: send a spec and its files to the
daemon. A spec whose exact release (spec, model, lock) already serves, verified, on every target
is a no-op with a message and exit 0, unless `--force`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from orchestrator.cli import exits
from orchestrator.cli.client import Client, add_client_args, wait_for_end
from orchestrator.core.terminal import safe
from orchestrator.core.yamlio import DEFAULT_MAX_BYTES, read_limited
from orchestrator.errors import EXIT_DEPLOY_FAILED, EXIT_INVALID, EXIT_OK

EXITS = exits.table(
    {EXIT_OK: "submitted; with --wait or --follow: the deployment succeeded",
     EXIT_INVALID: "invalid spec or files, unknown target, or the app is being deployed (409)",
     EXIT_DEPLOY_FAILED: "with --wait or --follow: it failed, was rolled back or cancelled"},
    exits.CLIENT)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "submit", help="submit a deployment spec to the daemon",
        description="Pack SPEC with the files it names (model, lock, golden, wheelhouse) and "
                    "submit it; with --wait or --follow, exit with the deployment's outcome.",
        **exits.help_args(EXITS))
    parser.add_argument("spec", type=Path, help="the spec file (YAML)")
    parser.add_argument("--wait", action="store_true", help="wait for the deployment to finish")
    parser.add_argument("--follow", action="store_true", help="print its events until it ends")
    parser.add_argument("--force", action="store_true",
                        help="deploy even if every target already serves this exact release "
                             "(by default that is a no-op, exit 0)")
    add_client_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Before connecting: a missing spec, a directory, a FIFO or a device is refused with what it
    # is (yamlio.read_limited reads regular files only, never waits on a pipe).
    read_limited(args.spec, DEFAULT_MAX_BYTES)
    with Client.from_args(args) as client:
        record = client.submit(args.spec, force=args.force)
        if record.get("noop"):  # nothing queued: the release already serves everywhere
            print(json.dumps(record) if args.json else safe(record["noop"]))
            return 0
        if args.json and not args.follow:
            print(json.dumps(record))
        elif not args.json:
            print(safe(f"submitted {record['id']} ({record['app']}): {record['state']}"),
                  flush=True)
        if args.follow or args.wait:
            return wait_for_end(client, record["id"], show=args.follow, as_json=args.json)
    return EXIT_OK
