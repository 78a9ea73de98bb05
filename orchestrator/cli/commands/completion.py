"""`orchestrator completion bash|zsh|fish`: print the shell's completion script, generated from
this CLI's own parser (orchestrator/cli/completion.py).

    source <(orchestrator completion bash)                      # bash, this shell
    orchestrator completion zsh > "${fpath[1]}/_orchestrator"   # zsh
    orchestrator completion fish > ~/.config/fish/completions/orchestrator.fish
"""

from __future__ import annotations

import argparse
from typing import Any

from orchestrator.cli import exits
from orchestrator.cli.completion import SHELLS, tree
from orchestrator.core.terminal import safe
from orchestrator.errors import EXIT_INVALID, EXIT_OK

EXITS = exits.table({EXIT_OK: "printed", EXIT_INVALID: "an unknown shell"})


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "completion", help="print a shell completion script (bash, zsh, fish)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        **exits.help_args(EXITS))
    parser.add_argument("shell", choices=sorted(SHELLS), metavar="SHELL",
                        help="bash, zsh or fish")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orchestrator.cli.app import build_parser  # every command's parser, not only this one

    # Our own parser's words only; `safe` all the same, as for everything the CLI prints.
    print(safe(SHELLS[args.shell](tree(build_parser(())))), end="")
    return EXIT_OK
