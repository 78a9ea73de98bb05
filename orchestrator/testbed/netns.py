"""Network namespaces joined to ours by a veth pair: a host that is on another network, possibly
far away (the testbed's `--rtt`, the bastion tests' hidden host).

    ours (this netns) --veth OURS/30 ---- PEER THEIRS/30 (in NS, lo up)

`add(ns, veth, ours, theirs)` creates it; `delay(link, rtt_ms)` puts half the round trip on
each end with netem (sch_netem) and returns False where the kernel has no netem (the caller
then delays in user space, testbed/delay.py); `remove` deletes the namespace, which takes the
peer and with it our end of the pair. Needs root (CAP_NET_ADMIN): `why_not()` says why not.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.errors import TestbedError


@dataclass(frozen=True)
class Link:
    netns: str
    veth: str       # our end
    peer: str       # the end inside netns
    ours: str       # our end's address
    theirs: str     # the address inside netns, reachable from ours


def why_not() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces and veth links need root (CAP_NET_ADMIN)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return None if probe.returncode == 0 else f"`ip netns` does not work: {probe.stderr.strip()}"


def free_prefix(first_octets: str) -> str:
    """`10.213` -> `10.213.K` with no address of ours in 10.213.K.0/24 yet (random K)."""
    taken = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True,
                           check=True).stdout
    for k in random.sample(range(1, 250), 249):
        if f" {first_octets}.{k}." not in taken:
            return f"{first_octets}.{k}"
    raise TestbedError(f"no free {first_octets}.K.0/24 for a veth link")


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """`argv` run inside `netns` (`ip netns exec` execs it: the pid stays the command's)."""
    return ["ip", "netns", "exec", netns, *argv]


def add(netns: str, veth: str, peer: str, ours: str, theirs: str) -> Link:
    link = Link(netns, veth, peer, ours, theirs)
    steps = (["ip", "netns", "add", netns],
             ["ip", "link", "add", veth, "type", "veth", "peer", "name", peer],
             ["ip", "link", "set", peer, "netns", netns],
             ["ip", "addr", "add", f"{ours}/30", "dev", veth],
             ["ip", "link", "set", veth, "up"],
             exec_argv(netns, ["ip", "addr", "add", f"{theirs}/30", "dev", peer]),
             exec_argv(netns, ["ip", "link", "set", peer, "up"]),
             exec_argv(netns, ["ip", "link", "set", "lo", "up"]))
    try:
        for argv in steps:
            _run(argv)
    except BaseException:
        remove(netns, veth)
        raise
    return link


def delay(link: Link, rtt_ms: float) -> bool:
    """Half of `rtt_ms` on each direction with netem; False if this kernel has no netem (the
    link is left as it was), TestbedError for any other failure."""
    half = f"{rtt_ms / 2:g}ms"
    first = subprocess.run(["tc", "qdisc", "add", "dev", link.veth, "root", "netem", "delay",
                            half], capture_output=True, text=True, check=False)
    if first.returncode != 0:
        if "unknown" in first.stderr.lower() or "no such file" in first.stderr.lower():
            return False  # "Specified qdisc kind is unknown": sch_netem not built or loaded
        raise TestbedError(f"tc netem on {link.veth} failed: {first.stderr.strip()}")
    _run(exec_argv(link.netns, ["tc", "qdisc", "add", "dev", link.peer, "root", "netem",
                                "delay", half]))
    return True


def remove(netns: str, veth: str) -> None:
    """Best effort, idempotent: what is already gone is fine."""
    subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


def exists(netns: str) -> bool:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return any(line.split()[:1] == [netns] for line in listed.stdout.splitlines())


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
