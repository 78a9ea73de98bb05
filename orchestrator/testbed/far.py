"""Testbed hosts far away (`orchestrator testbed up --rtt 50ms`): each host in a network
namespace of its own, behind a veth pair (testbed/netns.py), its sshd listening inside it, with
the round trip put on the pair by netem, half each way. Where the kernel has no netem, a delay
relay (testbed/delay.py) in the namespace listens on the host's address instead and holds every
byte for half the round trip each way, in front of the sshd on the namespace's loopback.

Addresses: host i is 10.214.K.(4i+2), our end of its pair 10.214.K.(4i+1) (a /30 each, K a
/24 none of our interfaces uses): at most 62 hosts. Names carry a hash of the testbed's DIR
(`orch-tb-<hash>-NN`, veth `otb<hash>NNa`), so `down`, or an `up` after a crash, finds them.
Root only (CAP_NET_ADMIN); the loopback testbed needs none of this.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

from orchestrator.errors import InvalidInput, TestbedError
from orchestrator.testbed import delay, netns, sshd
from orchestrator.testbed.layout import TestbedHost

MAX_HOSTS = 62
SUBNET = "10.214"
MAX_RTT_MS = 10_000.0
_RTT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")


def parse_rtt(text: str) -> float:
    """`50ms`, `0.05s` or `50` (ms) -> 50.0; InvalidInput naming the value otherwise. Pure."""
    m = _RTT.match(text)
    if m is None:
        raise InvalidInput(f"--rtt {text!r}: a round trip such as 50ms or 0.05s")
    ms = float(m.group(1)) * (1000.0 if m.group(2) == "s" else 1.0)
    if not 0 < ms <= MAX_RTT_MS:
        raise InvalidInput(f"--rtt {text!r}: between 0 and {MAX_RTT_MS:g} ms (exclusive of 0)")
    return ms


def names(root: Path, index: int) -> tuple[str, str, str]:
    """(netns, our veth end, its peer) of host `index` of the testbed in `root`. Pure."""
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:6]
    n = f"{index + 1:02d}"
    return f"orch-tb-{tag}-{n}", f"otb{tag}{n}a", f"otb{tag}{n}b"


def place(root: Path, hosts: list[TestbedHost], rtt_ms: float) -> tuple[list[TestbedHost], bool]:
    """Each host behind its own delayed link; returns the hosts at their new addresses and
    whether the delay is the relay's (no netem here). TestbedError if this machine cannot."""
    reason = netns.why_not()
    if reason is not None:
        raise TestbedError(f"--rtt: {reason} (without --rtt the testbed runs on loopback and "
                           "needs none)")
    if len(hosts) > MAX_HOSTS:
        raise InvalidInput(f"--rtt: at most {MAX_HOSTS} hosts, not {len(hosts)}")
    prefix = netns.free_prefix(SUBNET)
    placed: list[TestbedHost] = []
    relayed = False
    try:
        for i, h in enumerate(hosts):
            ns, veth, peer = names(root, i)
            netns.remove(ns, veth)  # a crashed testbed's leftover in this DIR
            link = netns.add(ns, veth, peer, f"{prefix}.{4 * i + 1}", f"{prefix}.{4 * i + 2}")
            placed.append(replace(h, address=link.theirs, netns=ns, veth=veth, rtt_ms=rtt_ms))
            if i == 0:
                relayed = not netns.delay(link, rtt_ms)
            elif not relayed and not netns.delay(link, rtt_ms):
                raise TestbedError(f"tc netem worked on {hosts[0].name} but not on {h.name}")
    except BaseException:
        remove(placed)
        raise
    return placed, relayed


def start_relay(host: TestbedHost, sshd_address: str) -> sshd.Running:
    """The delay relay for `host` (inside its namespace, on its address and port), to the sshd
    listening on `sshd_address` there."""
    argv, env = delay.command(host.address, host.port, sshd_address, host.port,
                              host.rtt_ms / 2)
    return sshd.spawn_detached(netns.exec_argv(host.netns, argv), env)


def relay_is_ours(host: TestbedHost) -> bool:
    """The relay pid still the process we started (pid reuse cannot fake its start time)."""
    return bool(host.relay_pid) and sshd.starttime(host.relay_pid) == host.relay_starttime


def remove(hosts: list[TestbedHost]) -> None:
    """Stop the relays we started and delete the namespaces (and with them the veth pairs)."""
    if not any(h.netns for h in hosts):
        return  # the loopback testbed
    sshd.stop([h.relay_pid for h in hosts if relay_is_ours(h)])
    for h in hosts:
        if h.netns:
            netns.remove(h.netns, h.veth)
