"""`orchestrator testbed up|down|profile`: a local fleet of simulated GPU hosts (real sshd servers
on 127.0.0.N, a fake libnvidia-ml.so.1 per host) to try everything on one machine."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

from orchestrator.core.terminal import safe
from orchestrator.testbed import PROFILES, Testbed


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "testbed", help="start or stop a local testbed of simulated GPU hosts",
        description="Real OpenSSH servers on 127.0.0.2, 127.0.0.3, ... whose GPUs are simulated.",
    )
    sub = parser.add_subparsers(dest="testbed_command", required=True, metavar="ACTION")

    up = sub.add_parser("up", help="start N hosts and write DIR/inventory.yaml")
    up.add_argument("--hosts", type=int, default=4, metavar="N", help="number of hosts (default 4)")
    up.add_argument(
        "--profile", action="append", default=[], choices=PROFILES, metavar="NAME",
        help=f"GPU profile of the next host, repeatable, cycled ({', '.join(PROFILES)}; "
        "default h100)",
    )
    up.add_argument("--dir", type=Path, required=True, help="where the testbed keeps its files")
    up.set_defaults(func=_up)

    down = sub.add_parser("down", help="stop the hosts started in DIR")
    down.add_argument("--dir", type=Path, required=True)
    down.set_defaults(func=_down)

    profile = sub.add_parser("profile", help="change one host's GPU profile (no restart)")
    profile.add_argument("--dir", type=Path, required=True)
    profile.add_argument("host", help="host name, e.g. tb-01")
    profile.add_argument("profile", choices=PROFILES, metavar="PROFILE", help=", ".join(PROFILES))
    profile.set_defaults(func=_profile)


def _up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    tb = Testbed.up(args.dir, args.hosts, args.profile)
    elapsed = time.monotonic() - started
    print(safe(f"testbed up in {elapsed:.2f}s: {len(tb.hosts)} hosts, port {tb.port}, "
               f"dir {tb.dir}"))
    for h in tb.hosts:
        print(safe(f"  {h.name:<8} {h.user}@{h.address}:{h.port}  profile {h.profile:<11} "
                   f"deploy_root {h.deploy_root}"))
    print(safe(f"inventory: {tb.inventory_path}"))
    print(safe(f"ssh:       {shlex.join(tb.ssh_argv(tb.hosts[0]))}"))
    return 0


def _down(args: argparse.Namespace) -> int:
    stopped = Testbed.down(args.dir)
    print(safe(f"testbed down: stopped {stopped} sshd server(s) in {Path(args.dir).resolve()}"))
    return 0


def _profile(args: argparse.Namespace) -> int:
    tb = Testbed.load(args.dir)
    tb.set_profile(args.host, args.profile)
    print(safe(f"{args.host}: profile {args.profile} "
               "(seen by the next process that initialises NVML)"))
    return 0
