"""The `orchestrator` command line: one subcommand per module in `orchestrator.cli.commands`.

Each command module exposes `register(subparsers)`, which adds its parser (named like the module)
and sets `func` to a callable taking the parsed namespace and returning an exit code. Only the
invoked command's module is imported, so a quick command does not pay for paramiko, TensorFlow or
FastAPI; `--help` imports them all. Expected errors print one
line and exit with their code; anything else prints the traceback and asks for a report.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from orchestrator import __version__
from orchestrator.cli import commands
from orchestrator.core.terminal import safe
from orchestrator.errors import EXIT_INTERNAL, OrchestratorError


def _command_modules(argv: Sequence[str]) -> list[str]:
    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__))
    first = next((a for a in argv if not a.startswith("-")), None)
    return [first] if first in names else names


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors quote the arguments given (`invalid choice:
    '...'`) through `safe`: a pasted argument cannot drive the terminal either. Subcommand
    parsers are made of the same class (argparse's default for `add_subparsers`)."""

    def error(self, message: str) -> NoReturn:
        super().error(safe(message))


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="orchestrator",
        description="Deploy ML models to GPU hosts over SSH, and refuse to let a broken one serve.",
    )
    parser.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _command_modules(argv):
        module = importlib.import_module(f"{commands.__name__}.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        code: int = args.func(args)
    except OrchestratorError as exc:
        print(safe(f"error: {exc}"), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `orchestrator ... | head`: the reader left; not an error of ours.
        _silence_stdout()
        return 0
    except Exception:  # the one place that turns a bug into a report instead of a crash
        print(safe(traceback.format_exc()), file=sys.stderr, end="")  # a message may quote a host
        print("error: internal error; please report this with the traceback above", file=sys.stderr)
        return EXIT_INTERNAL
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
