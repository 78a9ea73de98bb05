"""`orchestrator testbed up|down|profile`: a local fleet of simulated GPU hosts (real sshd servers
on 127.0.0.N, a fake libnvidia-ml.so.1 per host) to try everything on one machine."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Any

from orchestrator.cli import exits
from orchestrator.core.terminal import safe
from orchestrator.errors import EXIT_INTERNAL, EXIT_INVALID, EXIT_OK, InvalidInput
from orchestrator.testbed import PROFILES, Testbed

EXITS = exits.table(
    {EXIT_OK: "done",
     EXIT_INTERNAL: "the testbed could not start or stop (sshd missing, no free address, "
                    "--rtt without root), or DIR holds no readable testbed",
     EXIT_INVALID: "invalid input (an unknown host or profile, a bad --hosts or --rtt)"})

JSON_HELP = ('print {"dir", "port", "inventory", "known_hosts", "elapsed_s", "hosts": [{"name", '
             '"address", "port", "user", "profile", "deploy_root"}]} (down: {"dir", "stopped"})')


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "testbed", help="start or stop a local testbed of simulated GPU hosts",
        description="Real OpenSSH servers on 127.0.0.2, 127.0.0.3, ... whose GPUs are simulated.",
        **exits.help_args(EXITS),
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
    up.add_argument(
        "--rtt", metavar="TIME", type=_rtt,
        help="put each host in a network namespace of its own, this round trip away (e.g. 50ms; "
        "netem on a veth pair, or a delay relay where the kernel has no netem); root only")
    up.add_argument("--json", action="store_true", help=JSON_HELP)
    up.set_defaults(func=_up)

    down = sub.add_parser("down", help="stop the hosts started in DIR")
    down.add_argument("--dir", type=Path, required=True)
    down.add_argument("--json", action="store_true", help=JSON_HELP)
    down.set_defaults(func=_down)

    profile = sub.add_parser("profile", help="change one host's GPU profile (no restart)")
    profile.add_argument("--dir", type=Path, required=True)
    profile.add_argument("host", help="host name, e.g. tb-01")
    profile.add_argument("profile", choices=PROFILES, metavar="PROFILE", help=", ".join(PROFILES))
    profile.add_argument("--json", action="store_true", help='print {"host", "profile"}')
    profile.set_defaults(func=_profile)


def _up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    tb = Testbed.up(args.dir, args.hosts, args.profile, rtt_ms=args.rtt)
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({
            "dir": str(tb.dir), "port": tb.port, "inventory": str(tb.inventory_path),
            "known_hosts": str(tb.known_hosts_path), "elapsed_s": round(elapsed, 3),
            "hosts": [{"name": h.name, "address": h.address, "port": h.port, "user": h.user,
                       "profile": h.profile, "deploy_root": str(h.deploy_root)}
                      for h in tb.hosts]}, indent=2))
        return EXIT_OK
    far = f", {args.rtt:g} ms away (network namespaces)" if args.rtt else ""
    print(safe(f"testbed up in {elapsed:.2f}s: {len(tb.hosts)} hosts{far}, port {tb.port}, "
               f"dir {tb.dir}"))
    for h in tb.hosts:
        print(safe(f"  {h.name:<8} {h.user}@{h.address}:{h.port}  profile {h.profile:<11} "
                   f"deploy_root {h.deploy_root}"))
    print(safe(f"inventory: {tb.inventory_path}"))
    print(safe(f"ssh:       {shlex.join(tb.ssh_argv(tb.hosts[0]))}"))
    return EXIT_OK


def _rtt(text: str) -> float:
    from orchestrator.testbed.far import parse_rtt

    try:
        return parse_rtt(text)
    except InvalidInput as exc:  # argparse's own error: usage line, exit 2
        raise argparse.ArgumentTypeError(str(exc)) from None


def _down(args: argparse.Namespace) -> int:
    stopped = Testbed.down(args.dir)
    if args.json:
        print(json.dumps({"dir": str(Path(args.dir).resolve()), "stopped": stopped}))
        return EXIT_OK
    print(safe(f"testbed down: stopped {stopped} sshd server(s) in {Path(args.dir).resolve()}"))
    return EXIT_OK


def _profile(args: argparse.Namespace) -> int:
    tb = Testbed.load(args.dir)
    tb.set_profile(args.host, args.profile)
    if args.json:
        print(json.dumps({"host": args.host, "profile": args.profile}))
        return EXIT_OK
    print(safe(f"{args.host}: profile {args.profile} "
               "(seen by the next process that initialises NVML)"))
    return EXIT_OK
