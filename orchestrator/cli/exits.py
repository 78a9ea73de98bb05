"""Each command's exit codes, written once as its module's `EXITS` table: shown at the end of
its `--help` and, all of them, in docs/operations.md "Exit codes" (tests/test_cli_exits.py checks
the page against `docs_tables()` and runs every command into every code it lists).

The codes themselves, and which one wins when a command meets several outcomes, are
orchestrator/errors.py's (`EXIT_*`, `worst`): 0 ok, 1 internal, 2 invalid input, 3 a deployment or
host failed, 4 unreachable or degraded.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Mapping

from orchestrator.errors import EXIT_INTERNAL, EXIT_INVALID, EXIT_UNREACHABLE

INTERNAL = {EXIT_INTERNAL: "internal error (a bug: please report it with the traceback)"}
#: What every client of the daemon may also answer.
CLIENT = {EXIT_UNREACHABLE: "the daemon does not answer (not running, wrong socket or URL)"}
#: A client command that reads a deployment.
UNKNOWN_ID = {EXIT_INVALID: "unknown deployment (HTTP 404)"}
#: A client command that asks something of a deployment.
BY_ID = {EXIT_INVALID: "unknown deployment, or its state refuses the request (HTTP 404, 409)"}


def table(*parts: Mapping[int, str]) -> dict[int, str]:
    """The command's table from its parts (a later part's meaning of a code wins), internal
    error included, sorted by code."""
    merged: dict[int, str] = dict(INTERNAL)
    for part in parts:
        merged.update(part)
    return dict(sorted(merged.items()))


def epilog(codes: Mapping[int, str]) -> str:
    """The `exit status:` block at the end of a command's --help."""
    return "exit status:\n" + "".join(f"  {code}  {what}\n" for code, what in codes.items())


def help_args(codes: Mapping[int, str]) -> dict[str, object]:
    """`add_parser(..., **help_args(EXITS))`: the epilog, kept as written."""
    return {"epilog": epilog(codes), "formatter_class": argparse.RawDescriptionHelpFormatter}


def command_tables() -> dict[str, dict[int, str]]:
    """{command: its EXITS} for every command module (each subcommand of golden and testbed
    shares its module's table)."""
    from orchestrator.cli import commands

    out: dict[str, dict[int, str]] = {}
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        codes = getattr(module, "EXITS", None)
        if codes is None:  # a new command: its table is part of it (docs/architecture.md)
            raise LookupError(f"orchestrator/cli/commands/{info.name}.py declares no EXITS "
                              "table (see orchestrator/cli/exits.py)")
        out[info.name] = dict(codes)
    return out


def docs_tables() -> str:
    """The Markdown of docs/operations.md's per-command tables, in command order; exit 1 is
    left out where it means what it always means (the page says it once)."""
    blocks = []
    for name, codes in command_tables().items():
        rows = "".join(f"| {code} | {what} |\n" for code, what in codes.items()
                       if INTERNAL.get(code) != what)
        blocks.append(f"`orchestrator {name}`\n\n| exit | when |\n|---|---|\n{rows}")
    return "\n".join(blocks)
