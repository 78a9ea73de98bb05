"""`orchestrator daemon [--config FILE]`: run the deployment service in the foreground."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from orchestrator.cli import exits
from orchestrator.daemon.config import load_config
from orchestrator.errors import EXIT_INTERNAL, EXIT_INVALID, EXIT_OK

EXITS = exits.table(
    {EXIT_OK: "stopped by SIGTERM or SIGINT after a clean shutdown",
     EXIT_INTERNAL: "could not start (another daemon owns the state dir, a damaged store), "
                    "or a bug",
     EXIT_INVALID: "a bad config file (names the file and key)"})


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "daemon", help="run the deployment daemon (API on a Unix socket)",
        description="Run the deployment daemon in the foreground; stop it with SIGTERM.",
        **exits.help_args(EXITS))
    parser.add_argument("--config", type=Path, help="TOML config (default: built-in defaults)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orchestrator.daemon.main import run_daemon  # imports uvicorn/fastapi only for this command

    return run_daemon(load_config(args.config))
