"""`orchestrator hash PATH...`: the value `model.sha256` must hold for a file or directory.

One PATH prints the bare hex digest (so `sha256: $(orchestrator hash models/fraud/3)` works);
several print `<hex>  <path>` lines like sha256sum. The directory tree hash is defined in
orchestrator/core/hashing.py and docs/spec.md.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from orchestrator.cli import exits
from orchestrator.core.hashing import hash_path
from orchestrator.core.terminal import safe
from orchestrator.errors import EXIT_INVALID, EXIT_OK

EXITS = exits.table({EXIT_OK: "every PATH hashed",
                     EXIT_INVALID: "a PATH is missing, unreadable, or not a file or directory"})


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "hash", help="sha256 of a file, or the tree hash of a directory (model.sha256)",
        description="Print the sha256 of a file, or the tree hash of a directory: the value "
                    "a spec's model.sha256 must hold.", **exits.help_args(EXITS))
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--json", action="store_true",
                        help='print [{"path", "sha256", "kind": "file" | "directory"}]')
    parser.add_argument("--follow-symlinks", action="store_true",
                        help="count symlinks inside a directory as what they point to "
                             "(for a spec with model.follow_symlinks: true)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths: list[str] = args.paths
    follow: bool = args.follow_symlinks
    if args.json:
        print(json.dumps([{"path": p, "sha256": hash_path(p, follow),
                           "kind": "directory" if os.path.isdir(p) else "file"} for p in paths],
                         indent=2))
        return EXIT_OK
    if len(paths) == 1:
        print(safe(hash_path(paths[0], follow)))
        return EXIT_OK
    for path in paths:
        print(safe(f"{hash_path(path, follow)}  {path}"))
    return EXIT_OK
