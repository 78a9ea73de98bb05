"""`orchestrator inventory import FILE`: an Ansible inventory (INI or YAML) as ours.

The converted inventory is printed as YAML (or written to `--output`, never over an existing
file without `--force`); every problem goes to stderr as `file:line: error|warning: ...`
(orchestrator/core/ansible_inventory.py says what maps to what). Any error: exit 2 and
nothing written. Warnings (a var left out) do not change the exit code unless `--strict`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from orchestrator.cli import exits
from orchestrator.core.ansible_inventory import convert, read_ansible
from orchestrator.core.terminal import safe
from orchestrator.core.yamlio import read_limited
from orchestrator.errors import EXIT_INVALID, EXIT_OK, SpecError

MAX_BYTES = 8 << 20

EXITS = exits.table(
    {EXIT_OK: "converted (written to --output, or printed)",
     EXIT_INVALID: "the file cannot be read or converted (file:line), a warning with --strict, "
                   "or --output exists without --force"})


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "inventory", help="inventory tools: import an Ansible inventory",
        description="Inventory tools.", **exits.help_args(EXITS))
    sub = parser.add_subparsers(dest="inventory_command", required=True, metavar="ACTION")
    imp: argparse.ArgumentParser = sub.add_parser(
        "import", help="convert an Ansible inventory (INI or YAML) to ours",
        description="Convert an Ansible inventory (INI or YAML: hosts, groups, children, "
                    "ansible_host/port/user, vars as labels) to an orchestrator inventory. "
                    "Exit 2 with file:line for what cannot be converted.",
        epilog=exits.epilog(EXITS), formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("file", metavar="FILE", help="the Ansible inventory")
    imp.add_argument("--format", choices=("ini", "yaml"),
                     help="the file's format (default: YAML for .yml/.yaml, else INI)")
    imp.add_argument("--user", help="login for hosts without ansible_user")
    imp.add_argument("--deploy-root", metavar="PATH",
                     help="deploy_root for hosts without orchestrator_deploy_root")
    imp.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    imp.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    imp.add_argument("--strict", action="store_true", help="treat warnings as errors")
    imp.add_argument("--json", action="store_true",
                     help='print {"inventory": ..., "problems": [...]} as JSON')
    imp.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    raw = read_limited(Path(args.file), MAX_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"not UTF-8 (byte {exc.start})", file=args.file) from None
    result = convert(read_ansible(text, args.file, args.format), user=args.user,
                     deploy_root=args.deploy_root)
    failed = not result.ok or (args.strict and bool(result.problems))
    if args.json:
        print(json.dumps({"inventory": None if failed else result.data,
                          "problems": [{"file": p.file, "line": p.line, "message": p.message,
                                        "fatal": p.fatal} for p in result.problems]}, indent=2))
    else:
        for problem in result.problems:
            print(safe(str(problem)), file=sys.stderr)
    if failed:
        return EXIT_INVALID
    if args.json:
        return EXIT_OK
    body = (f"# Converted from {os.path.basename(args.file)} by `orchestrator inventory "
            "import`.\n# Check it: orchestrator validate SPEC --inventory THIS_FILE\n"
            + yaml.safe_dump(result.data, sort_keys=False, default_flow_style=False))
    if args.output:
        _write(Path(args.output), body, force=args.force)
    else:
        print(safe(body), end="")
    return EXIT_OK


def _write(path: Path, body: str, *, force: bool) -> None:
    try:
        with path.open("w" if force else "x", encoding="utf-8") as out:
            out.write(body)
    except FileExistsError:
        raise SpecError("exists: pass --force to overwrite it", file=str(path)) from None
    except OSError as exc:
        raise SpecError(f"cannot write: {exc.strerror}", file=str(path)) from None
