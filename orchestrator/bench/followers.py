"""Many log followers against one rollout (issue 13, item 4), on a real daemon process over its
real socket with the runner that touches no host (`EchoRunner`, no delay: the daemon's own cost
is all there is to measure):

- the rollout time of a 400-host deployment with no follower, then with 1,000 followers
  attached before it starts, half reading everything and half never reading a byte
  (target: within 1.5x of the time alone);
- `/healthz` latency during the followed rollout, one request every 10 ms (target: p99 < 100 ms;
  a few hundred samples a run, so the p99 is not just the slowest one);
- the daemon's peak RSS during it (target < 300 MB).

The rollout time is the span of its own events' `ts` (from `running` to `succeeded`), so the
bench's polling does not count. To hold the followed deployment queued until all its followers
are attached, the daemon runs one deployment at a time and a gate deployment runs first.
Sizes: ORCHESTRATOR_BENCH_FOLLOWERS (1000) and ORCHESTRATOR_BENCH_HOSTS (400).

The followers run in a process of their own with the cheapest reader there is (one selectors
loop over raw sockets), and the `/healthz` prober in a third, so neither shows its own delays as
the daemon's; the CPU each used during the followed rollout is printed (the machine's cores are
shared by all three). ORCHESTRATOR_BENCH_PROFILE=FILE runs the daemon under cProfile (its event
loop thread) and writes the profile there.
"""

from __future__ import annotations

import json
import os
import re
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from orchestrator.bench.daemon import _bundle, _client, _rss_mb, _spec, _until_healthy

FOLLOWERS = int(os.environ.get("ORCHESTRATOR_BENCH_FOLLOWERS", "1000"))
HOSTS = int(os.environ.get("ORCHESTRATOR_BENCH_HOSTS", "400"))
PROFILE = os.environ.get("ORCHESTRATOR_BENCH_PROFILE", "")
HEALTH_EVERY_S = 0.01
AFTER = re.compile(rb'"event":"lagged","deployment":"[^"]+","after":(\d+)')


def _start(tmp: Path) -> subprocess.Popen[bytes]:
    config = tmp / "orchestrator.toml"
    config.write_text('state_dir = "state"\nsocket = "o.sock"\nmax_parallel_deployments = 1\n'
                      f"max_followers = {max(FOLLOWERS + 10, 16)}\n"
                      'runner = "orchestrator.daemon.runners.base:EchoRunner"\n')
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 2 * FOLLOWERS + 256))  # a socket per follower, both sides
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    command = [sys.executable, "-m", "orchestrator", "daemon", "--config", str(config)]
    if PROFILE:  # cProfile of the daemon's main thread (its event loop), written at its exit
        command[1:1] = ["-m", "cProfile", "-o", str(Path(PROFILE).resolve())]
    proc = subprocess.Popen(command, cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "ORCHESTRATOR_ECHO_DELAY_S": "0"})
    return _until_healthy(tmp, proc)


def _submit(tmp: Path, name: str) -> str:
    with _client(tmp) as http:
        deployment: str = http.post(
            "/v1/deployments", content=_bundle(_spec(tmp / name, name, HOSTS)),
            headers={"content-type": "application/x-tar"}).json()["id"]
    return deployment


def _rollout_s(tmp: Path, deployment: str) -> float:
    """Wait for the end; the span of the deployment's own events from running to the end."""
    with _client(tmp) as http:
        # The list, not the deployment's detail: with 400 hosts' steps that one costs the
        # daemon ~10 ms a call, which the bench would then measure as the followers' cost.
        while next(d for d in http.get("/v1/deployments", params={"limit": 10}).json()
                   if d["id"] == deployment)["state"] not in (
                "succeeded", "failed", "cancelled", "rolled_back"):
            time.sleep(0.5)
        lines = http.get(f"/v1/deployments/{deployment}/events").text.splitlines()
    events: list[dict[str, Any]] = [json.loads(line) for line in lines]
    running = next(e["ts"] for e in events if e["event"] == "deployment"
                   and e["status"] == "running")
    return float(events[-1]["ts"]) - float(running)


class _Clients:
    """The bench's followers, in a process of their own (`clients` mode): one selectors loop
    over raw sockets, each reader keeping only the last bytes it got (to find a `lagged` line),
    so the clients cost the least CPU they can and their cost is measured apart from the
    daemon's. A reader reconnects with `after=SEQ` after a `lagged` line and stops at the end
    of a stream without one; a non-reader sends its request and never reads."""

    def __init__(self, sock: str, deployment: str, count: int) -> None:
        self.sock, self.deployment = sock, deployment
        self.selector = selectors.DefaultSelector()
        self.idle: list[socket.socket] = []
        self.readers = 0
        self.resumed = 0
        for i in range(count):
            if i % 2 == 0:
                self._open(0)
                self.readers += 1
            else:
                self.idle.append(self._connect(0))

    def _connect(self, after: int) -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.sock)
        conn.sendall(f"GET /v1/deployments/{self.deployment}/events?follow=true&after={after} "
                     "HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        return conn

    def _open(self, after: int) -> None:
        conn = self._connect(after)
        conn.setblocking(False)
        self.selector.register(conn, selectors.EVENT_READ, [b""])

    def run(self) -> None:
        buffer = bytearray(1 << 16)
        while self.readers:
            for key, _ in self.selector.select():
                conn: socket.socket = key.fileobj  # type: ignore[assignment]
                tail: list[bytes] = key.data
                try:
                    got = conn.recv_into(buffer)
                except BlockingIOError:
                    continue
                if got:
                    tail[0] = (tail[0] + bytes(buffer[max(0, got - 512):got]))[-512:]
                    continue
                self.selector.unregister(conn)
                conn.close()
                lagged = AFTER.search(tail[0])
                if lagged is None:
                    self.readers -= 1
                else:
                    self.resumed += 1
                    self._open(int(lagged.group(1)))


def _clients(sock: str, deployment: str, count: int) -> None:
    """`clients` mode: attach `count` followers, say so, read until every reader is done, say
    how many were resumed, and hold the non-readers open until stdin closes."""
    clients = _Clients(sock, deployment, count)
    print("attached", flush=True)
    clients.run()
    print(f"done {clients.resumed}", flush=True)
    sys.stdin.read()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _watch(sock: str, pid: int, out: str) -> None:
    """In its own process (the bench's followers would otherwise hold this one's GIL and show
    their own delays as the daemon's): GET /healthz every 10 ms and the daemon's RSS, one
    "latency_ms rss_mb" line each, until stdin closes."""
    stop = threading.Event()

    def until_stdin_closes() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://o",
                      timeout=60) as http, open(out, "w") as sink:
        while not stop.is_set():
            started = time.perf_counter()
            http.get("/healthz")
            sink.write(f"{(time.perf_counter() - started) * 1000} {_rss_mb(pid)}\n")
            stop.wait(HEALTH_EVERY_S)


def _followed(tmp: Path, pid: int) -> dict[str, Any]:
    gate = _submit(tmp, "gate")  # runs first: the followed one stays queued behind it
    followed = _submit(tmp, "followed")
    clients = subprocess.Popen(
        [sys.executable, "-m", __name__, "clients", str(tmp / "o.sock"), followed,
         str(FOLLOWERS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert clients.stdin is not None and clients.stdout is not None
    if clients.stdout.readline().strip() != "attached":
        raise RuntimeError("the bench's followers did not attach")
    _rollout_s(tmp, gate)
    out = tmp / "watch.txt"
    watcher = subprocess.Popen([sys.executable, "-m", __name__, "watch", str(tmp / "o.sock"),
                                str(pid), str(out)], stdin=subprocess.PIPE)
    cpu = (_cpu_s(pid), _cpu_s(clients.pid), time.monotonic())
    seconds = _rollout_s(tmp, followed)
    daemon_cpu, clients_cpu = _cpu_s(pid) - cpu[0], _cpu_s(clients.pid) - cpu[1]
    wall = time.monotonic() - cpu[2]
    assert watcher.stdin is not None
    watcher.stdin.close()
    watcher.wait(60)
    pairs = [line.split() for line in out.read_text().splitlines()]
    done = clients.stdout.readline().split()  # every reader has read to the end
    clients.stdin.close()
    clients.wait(60)
    return {"seconds": seconds, "health_ms": [float(a) for a, _ in pairs],
            "rss": [float(b) for _, b in pairs], "resumed": int(done[1]),
            "daemon_cpu": daemon_cpu, "clients_cpu": clients_cpu, "wall": wall}


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-followers-") as name:
        tmp = Path(name)
        proc = _start(tmp)
        try:
            before = _cpu_s(proc.pid)
            alone = _rollout_s(tmp, _submit(tmp, "alone"))
            print(f"{HOSTS}-host EchoRunner rollout, no follower: {alone:.2f} s "
                  f"(daemon CPU {_cpu_s(proc.pid) - before:.1f} s)")
            got = _followed(tmp, proc.pid)
            seconds, health = got["seconds"], sorted(got["health_ms"])
            p99 = health[min(len(health) - 1, int(len(health) * 0.99))]
            print(f"with {FOLLOWERS} followers ({FOLLOWERS // 2} not reading): {seconds:.2f} s, "
                  f"{seconds / alone:.2f}x (target within 1.5x); readers dropped as lagged "
                  f"and resumed: {got['resumed']}")
            print(f"CPU during it ({got['wall']:.1f} s): daemon {got['daemon_cpu']:.1f} s, "
                  f"the bench's followers (their own process) {got['clients_cpu']:.1f} s")
            print(f"/healthz meanwhile: median {statistics.median(health):.1f} ms, "
                  f"p99 {p99:.1f} ms, max {health[-1]:.1f} ms (n={len(health)}; "
                  "target p99 < 100 ms)")
            print(f"daemon RSS: peak {max(got['rss']):.0f} MB during the followed rollout "
                  "(target < 300 MB)")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    if sys.argv[1] == "clients":
        _clients(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        _watch(sys.argv[2], int(sys.argv[3]), sys.argv[4])
