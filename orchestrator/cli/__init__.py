"""The `orchestrator` command line: a client of the daemon's API, plus the offline commands."""

from orchestrator.cli.app import main

__all__ = ["main"]
