"""The anchors' harness hosts far away (`anchors --rtt 50ms`): each of the harness's own sshds
(started by its scripts/hosts.sh, untouched) gets the testbed's delay relay
(orchestrator/testbed/delay.py) in front of it, on the same address at the sshd's port +
OFFSET, holding every byte half the round trip each way; the harness's clients (its ssh+uv
loop, pyinfra, Ansible) are pointed at the relays. So the anchors cross the same delay, made by
the same code, as the project's far testbed hosts (`Testbed.up(rtt_ms=...)`, where this kernel
has no netem) while their hosts keep everything else of the 4-host figures: the same sshd
config, per-host HOME and caches, deploy roots, reset and verify scripts.

Why not namespaces, as the testbed's far hosts: the harness's sshds listen on this namespace's
loopback (127.0.0.(10+N)), which no other namespace can reach, and the relay already is the
whole delay where there is no netem. Where there is netem the project's hosts get it and the
anchors still get the relay: the same round trip per exchange, the handshake not delayed.

How the clients are pointed there: the harness takes every host's port from `host_port` in its
scripts/common.sh. The materialised copy (never the source) gets a few lines appended that,
when BENCH_RELAY_OFFSET is set, wrap that function to add the offset; hosts.sh up runs without
it (the sshds keep their ports), everything else with it. known_hosts gets each host's key
again under the relay's port. The relays' pids are kept in <harness>/relays.json, so a crashed
run's relays are stopped by the next one.

Each relay also appends a line per connection it carried to <harness>/relay-stats/hN.jsonl (its
turns and bytes, testbed/delay.py): `tally` sums a run's per host, which is how the anchors'
round trips are counted without looking inside Ansible, pyinfra or ssh.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.testbed import delay, sshd

OFFSET = 100  # the relay of a host listens at its sshd's port + OFFSET, same address
MARK = "# orchestrator.bench anchors --rtt: relays"
READY_TIMEOUT_S = 15.0
# Appended to the copy's scripts/common.sh: the sshd's own host_port, kept under another name,
# plus the offset (only where BENCH_RELAY_OFFSET is set; the harness's numbers are not repeated).
OVERRIDE = f"""
{MARK} (appended by orchestrator/bench/_farharness.py)
if [ -n "${{BENCH_RELAY_OFFSET:-}}" ]; then
  eval "_sshd_$(declare -f host_port)"
  host_port() {{ echo "$(( $(_sshd_host_port "$1") + BENCH_RELAY_OFFSET ))"; }}
fi
"""


@dataclass(frozen=True)
class Relay:
    host: str        # the harness's name, h1..hN
    address: str     # the sshd's and the relay's
    sshd_port: int
    port: int        # the relay's, where the clients connect
    one_way_ms: float


def plan(endpoints: list[tuple[str, int]], rtt_ms: float) -> list[Relay]:
    """One relay per (address, sshd port) of hosts h1..hN, half the round trip each way. Pure."""
    return [Relay(f"h{i}", address, port, port + OFFSET, rtt_ms / 2)
            for i, (address, port) in enumerate(endpoints, start=1)]


def with_relays(known_hosts: str, relays: list[Relay]) -> str:
    """`known_hosts` plus each host's key line again under its relay's port (the client checks
    the key of `[address]:port` it connects to; the key is the sshd's). Pure; ValueError naming
    the host whose key is missing."""
    lines = known_hosts.splitlines()
    added: list[str] = []
    for r in relays:
        own = f"[{r.address}]:{r.sshd_port} "
        keys = [ln for ln in lines if ln.startswith(own)]
        if not keys:
            raise ValueError(f"{r.host}: no key for {own.strip()} in the harness's known_hosts")
        added += [f"[{r.address}]:{r.port} " + k[len(own):] for k in keys]
    kept = [ln for ln in lines if not any(ln.startswith(f"[{r.address}]:{r.port} ")
                                          for r in relays)]
    return "\n".join([*kept, *added]) + "\n"


def point_clients(harness: Path) -> None:
    """Append OVERRIDE to the copy's scripts/common.sh once (idempotent)."""
    common = harness / "scripts" / "common.sh"
    text = common.read_text()
    if MARK in text:
        return
    if "host_port()" not in text:
        raise SystemExit(f"anchors --rtt: {common} defines no host_port(): cannot point the "
                         "harness's clients at the relays (has the harness changed?)")
    common.write_text(text + OVERRIDE)


def endpoints(harness: Path, nhosts: int) -> list[tuple[str, int]]:
    """Each host's sshd address and port, asked from the harness's own common.sh."""
    proc = subprocess.run(
        ["bash", "-c", '. scripts/common.sh; for i in $(seq 1 "$NHOSTS"); do '
         'echo "$(host_ip "$i") $(host_port "$i")"; done'],
        cwd=harness, env={**_without_offset(), "NHOSTS": str(nhosts)},
        capture_output=True, text=True, check=True)
    pairs = [line.split() for line in proc.stdout.splitlines()]
    return [(a, int(p)) for a, p in pairs]


@dataclass(frozen=True)
class Tally:
    connections: int
    turns: int  # the client sending again after an answer: at least a round trip each


def tally(lines: list[str], since: float, until: float) -> Tally:
    """The connections a relay's stats `lines` record as closed within [since, until]. Pure;
    a torn or foreign line is skipped."""
    connections = turns = 0
    for line in lines:
        try:
            record = json.loads(line)
            closed, n = float(record["closed"]), int(record["turns"])
        except (ValueError, KeyError, TypeError):
            continue
        if since <= closed <= until:
            connections += 1
            turns += n
    return Tally(connections, turns)


def tallies(harness: Path, hosts: int, since: float, until: float) -> dict[str, Tally]:
    """Per host h1..hN, what its relay carried in [since, until]."""
    found = {}
    for i in range(1, hosts + 1):
        path = _stats(harness) / f"h{i}.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        found[f"h{i}"] = tally(lines, since, until)
    return found


def start(harness: Path, relays: list[Relay]) -> None:
    """Stop a previous run's relays, trust the relays' ports, start one relay per host and wait
    until each passes its sshd's banner through."""
    stop(harness)
    known = harness / "keys" / "known_hosts"
    known.write_text(with_relays(known.read_text(), relays))
    running: list[dict[str, int]] = []
    _stats(harness).mkdir(exist_ok=True)
    try:
        for r in relays:
            argv, env = delay.command(r.address, r.port, r.address, r.sshd_port, r.one_way_ms,
                                      _stats(harness) / f"{r.host}.jsonl")
            run = sshd.spawn_detached(argv, env)
            running.append({"pid": run.pid, "starttime": run.starttime})
            _state(harness).write_text(json.dumps(running))
        for r in relays:
            _wait_banner(r)
    except BaseException:
        stop(harness)
        raise


def stop(harness: Path) -> None:
    """Stop the relays recorded in <harness>/relays.json that are still the processes we
    started (a reused pid is left alone)."""
    state = _state(harness)
    if not state.exists():
        return
    ours = [r["pid"] for r in json.loads(state.read_text())
            if sshd.starttime(r["pid"]) == r["starttime"]]
    sshd.stop(ours)
    state.unlink()


def client_env(nhosts: int, relayed: bool) -> dict[str, str]:
    """The environment of the harness's scripts: its fleet size, and the relays' offset for
    everything but hosts.sh up."""
    env = {**_without_offset(), "NHOSTS": str(nhosts)}
    return {**env, "BENCH_RELAY_OFFSET": str(OFFSET)} if relayed else env


def _without_offset() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "BENCH_RELAY_OFFSET"}


def _state(harness: Path) -> Path:
    return harness / "relays.json"


def _stats(harness: Path) -> Path:
    return harness / "relay-stats"


def _wait_banner(r: Relay) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((r.address, r.port), timeout=2) as conn:
                if conn.recv(64).startswith(b"SSH-"):
                    return
                last = "no SSH banner"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise SystemExit(f"anchors --rtt: {r.host}'s relay {r.address}:{r.port} -> :{r.sshd_port} "
                     f"not ready after {READY_TIMEOUT_S:g} s ({last})")
