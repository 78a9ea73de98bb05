"""`orchestrator image build SPEC --base ARCHIVE -o OUT`: the image a venv spec's lock makes on
a base image archive, saved as an archive an image release deploys (`environment.image`).

Runs the controller's container engine (`--engine`, default podman; its configuration from the
environment as usual: CONTAINERS_CONF ...). Prints the archive's path and sha256, the two
values `environment.image` takes. Nothing is pulled: the base comes as an archive
(`docker save` / `podman save`, or a `podman import` of a debootstrap tree)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from orchestrator.cli import exits
from orchestrator.core.spec import load_spec
from orchestrator.core.terminal import safe
from orchestrator.deploy.imagebuild import build_image
from orchestrator.errors import EXIT_INVALID, EXIT_OK, InvalidInput

EXITS = exits.table(
    {EXIT_OK: "the image was built and saved (its path and sha256 printed)",
     EXIT_INVALID: "invalid input (spec, base archive), or the engine refused a build step"})


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "image", help="build an image archive from a spec's lock (image build)",
        description="Container images for image releases (environment.image).",
        **exits.help_args(EXITS))
    sub = parser.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    build = sub.add_parser(
        "build", help="build the image a venv spec's lock makes on a base image archive",
        description="Load BASE (an image archive with python3 and python3-venv), install the "
                    "spec's hashed lock into /opt/venv offline in a container without network, "
                    "and save the result to OUT; prints OUT's sha256 for environment.image.",
        **exits.help_args(EXITS))
    build.add_argument("spec", type=Path, metavar="SPEC", help="a spec with "
                       "environment.requirements (and python)")
    build.add_argument("--base", type=Path, required=True, metavar="ARCHIVE",
                       help="the base image archive")
    build.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                       help="where the image archive is written")
    build.add_argument("--engine", default="podman", metavar="CMD",
                       help="the container engine command (default: podman; e.g. docker, or "
                            "'podman --root DIR')")
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    if not args.base.is_file():
        raise InvalidInput(f"--base {args.base}: not a file")
    spec = load_spec(args.spec)
    sha256 = build_image(spec, args.base, args.output, engine=shlex.split(args.engine))
    print(safe(f"{args.output}\nsha256: {sha256}"))
    return EXIT_OK
