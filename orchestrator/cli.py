"""The `orchestrator` command line: one subcommand per module in `orchestrator.commands`.

Each command module exposes `register(subparsers)`, which adds its parser and sets `func` to a
callable taking the parsed namespace and returning an exit code. Expected errors print one
line and exit with their code; anything else prints the traceback and asks for a report.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from collections.abc import Sequence

from orchestrator import __version__, commands
from orchestrator.errors import EXIT_INTERNAL, OrchestratorError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Deploy ML models to GPU hosts over SSH, and refuse to let a broken one serve.",
    )
    parser.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:  # the one place that turns a bug into a report instead of a crash
        traceback.print_exc()
        print("error: internal error; please report this with the traceback above", file=sys.stderr)
        return EXIT_INTERNAL
    return code
