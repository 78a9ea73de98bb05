"""Several daemons on one PostgreSQL beside one daemon on SQLite (issue 16), real daemon
processes over their real sockets, with the runner that touches no host (`EchoRunner`, a short
delay per step standing in for the SSH work, so the figures are the daemons' and the store's):

- a fleet: DEPLOYMENTS deployments of HOSTS hosts each, submitted round robin to the daemons
  (SQLite: one daemon; PostgreSQL: one, then three): host-rollouts per second from the first
  submission to the last deployment's end, and each daemon's CPU (user + system) per host;
- submit-to-first-event: from the POST to the first step event read by a follower on the
  daemon that took the submission;
- event-to-follower across daemons (three daemons): a follower on another daemon than the one
  running the deployment, each live event's `ts` (taken before its transaction: the commit is
  included) to its arrival (NOTIFY, the catch-up it wakes, the deployment's writer);
- takeover: three daemons, the owner of a running deployment killed with SIGKILL, the time to
  the `lease taken` event of another (lease_ttl_s TTL_S: bounded by ttl + a heartbeat).

Figures are printed, not asserted; the runner prints the machine's load.
Sizes: ORCHESTRATOR_BENCH_HOSTS (24), ORCHESTRATOR_BENCH_DEPLOYMENTS (6).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from orchestrator.bench.daemon import _bundle, _client, _spec

HOSTS = int(os.environ.get("ORCHESTRATOR_BENCH_HOSTS", "24"))
DEPLOYMENTS = int(os.environ.get("ORCHESTRATOR_BENCH_DEPLOYMENTS", "6"))
STEP_DELAY_S = 0.01
TTL_S = 3.0
START_TIMEOUT_S = 300.0  # a loaded machine (load 20+ on 2 cores) starts a daemon slowly
TAR = {"content-type": "application/x-tar"}
ENDED = {"succeeded", "failed", "rolled_back", "cancelled"}


@dataclass
class _Daemon:
    dir: Path
    proc: subprocess.Popen[bytes]

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


def _start(directory: Path, store: str | None, delay_s: float) -> _Daemon:
    directory.mkdir(parents=True)
    config = directory / "orchestrator.toml"
    config.write_text('state_dir = "state"\nsocket = "o.sock"\nmax_parallel_deployments = '
                      f'{DEPLOYMENTS}\nlease_ttl_s = {TTL_S}\n'
                      'runner = "orchestrator.daemon.runners.base:EchoRunner"\n'
                      + (f'store = "{store}"\n' if store else ""))
    exe = Path(sys.executable).parent / "orchestrator"
    proc = subprocess.Popen([str(exe), "daemon", "--config", str(config)], cwd=directory,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "ORCHESTRATOR_ECHO_DELAY_S": str(delay_s)})
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with _client(directory) as http:
                http.get("/healthz")
            return _Daemon(directory, proc)
        except (httpx.TransportError, OSError):
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the daemon did not start within {START_TIMEOUT_S:g} s")


def _submit(daemon: _Daemon, name: str, hosts: int) -> tuple[str, float]:
    """Submit; the deployment's id and the ms to its first step event on that daemon."""
    body = _bundle(_spec(daemon.dir / name, name, hosts))
    with _client(daemon.dir) as http:
        started = time.perf_counter()
        deployment: str = http.post("/v1/deployments", content=body, headers=TAR).json()["id"]
        with http.stream("GET", f"/v1/deployments/{deployment}/events",
                         params={"follow": True}) as stream:
            for line in stream.iter_lines():
                if json.loads(line)["event"] == "step":
                    break
    return deployment, (time.perf_counter() - started) * 1000


def _follow(daemon: _Daemon, deployment: str, lags: list[float], before: list[int]) -> None:
    """Each event's `ts` to its arrival, for the events written once the follower was
    connected (the live ones, as tests/test_pgdaemons.py counts them); the earlier ones, read
    from the store, are only counted in `before`."""
    with _client(daemon.dir) as http, http.stream(
            "GET", f"/v1/deployments/{deployment}/events", params={"follow": True}) as stream:
        connected = time.time()
        for line in stream.iter_lines():
            ts = float(json.loads(line)["ts"])
            if ts > connected:
                lags.append((time.time() - ts) * 1000)
            else:
                before.append(1)


def _wait_ended(daemon: _Daemon, deployments: list[str]) -> None:
    with _client(daemon.dir) as http:
        while not all(http.get(f"/v1/deployments/{d}").json()["state"] in ENDED
                      for d in deployments):
            time.sleep(0.05)


def _fleet(daemons: list[_Daemon], label: str) -> None:
    cpu0 = [d.cpu_s() for d in daemons]
    started = time.perf_counter()
    firsts: list[float] = []
    lags: list[float] = []
    before: list[int] = []
    follower: threading.Thread | None = None
    ids = []
    for i in range(DEPLOYMENTS):
        owner = daemons[i % len(daemons)]
        deployment, first = _submit(owner, f"fleet-{i}", HOSTS)
        ids.append(deployment)
        firsts.append(first)
        if i == 0 and len(daemons) > 1:  # the first deployment, followed from another daemon
            follower = threading.Thread(target=_follow,
                                        args=(daemons[1], deployment, lags, before))
            follower.start()
    _wait_ended(daemons[0], ids)
    took = time.perf_counter() - started
    if follower is not None:
        follower.join(timeout=60)
    cpu = ", ".join(f"{(d.cpu_s() - c) / (DEPLOYMENTS * HOSTS) * 1000:.1f}"
                    for d, c in zip(daemons, cpu0, strict=True))
    print(f"{label}: {DEPLOYMENTS} x {HOSTS} hosts in {took:.1f} s = "
          f"{DEPLOYMENTS * HOSTS / took:.1f} host-rollouts/s; CPU ms per host, each daemon: "
          f"{cpu}; submit-to-first-event {_ms(firsts)}")
    if lags:
        print(f"{label}: event-to-follower on another daemon {_ms(lags)} "
              f"over {len(lags)} live events ({len(before)} written before it connected)")


def _takeover(url: str, root: Path) -> float:
    """Seconds from the owner's SIGKILL to another daemon's `lease taken` event."""
    daemons = [_start(root / f"t{i}", url, 0.5) for i in range(3)]
    try:
        deployment, _ = _submit(daemons[0], "takeover", 4)
        daemons[0].proc.kill()
        killed = time.monotonic()
        with _client(daemons[1].dir) as http:
            while not any(json.loads(line)["event"] == "lease" for line in http.get(
                    f"/v1/deployments/{deployment}/events").text.splitlines()):
                time.sleep(0.05)
        return time.monotonic() - killed
    finally:
        for d in daemons:
            d.stop()


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    return f"p50 {statistics.median(ordered):.0f} ms, p95 {at(0.95):.0f} ms, p99 {at(0.99):.0f} ms"


def run() -> None:
    from orchestrator.testbed.postgres import Cluster

    with tempfile.TemporaryDirectory(prefix="bench-daemons-") as name:
        root = Path(name)
        sqlite = _start(root / "sqlite", None, STEP_DELAY_S)
        try:
            _fleet([sqlite], "SQLite, 1 daemon    ")
        finally:
            sqlite.stop()
        cluster = Cluster.start()
        try:
            for n in (1, 3):
                url = cluster.database()
                daemons = [_start(root / f"pg{n}-{i}", url, STEP_DELAY_S) for i in range(n)]
                try:
                    _fleet(daemons, f"PostgreSQL, {n} daemon{'s' if n > 1 else ' '}")
                finally:
                    for d in daemons:
                        d.stop()
            print(f"takeover after kill -9 (lease_ttl_s {TTL_S:g}): "
                  f"{_takeover(cluster.database(), root):.1f} s")
        finally:
            cluster.stop()
