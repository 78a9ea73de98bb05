"""Many log followers against one rollout (issue 13, item 4), on a real daemon process over its
real socket with the runner that touches no host (`EchoRunner`, no delay: the daemon's own cost
is all there is to measure):

- the rollout time of a 400-host deployment with no follower, then with 1,000 followers
  attached before it starts, half reading everything and half never reading a byte
  (target: within 1.5x of the time alone);
- `/healthz` latency during the followed rollout, one request every 50 ms (target: p99 < 100 ms);
- the daemon's peak RSS during it (target < 300 MB).

The rollout time is the span of its own events' `ts` (from `running` to `succeeded`), so the
bench's polling does not count. To hold the followed deployment queued until all its followers
are attached, the daemon runs one deployment at a time and a gate deployment runs first.
Sizes: ORCHESTRATOR_BENCH_FOLLOWERS (1000) and ORCHESTRATOR_BENCH_HOSTS (400).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import signal
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
HEALTH_EVERY_S = 0.05
AFTER = re.compile(rb'"event":"lagged","deployment":"[^"]+","after":(\d+)')


def _start(tmp: Path) -> subprocess.Popen[bytes]:
    config = tmp / "orchestrator.toml"
    config.write_text('state_dir = "state"\nsocket = "o.sock"\nmax_parallel_deployments = 1\n'
                      f"max_followers = {max(FOLLOWERS + 10, 16)}\n"
                      'runner = "orchestrator.daemon.runners.base:EchoRunner"\n')
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 2 * FOLLOWERS + 256))  # a socket per follower, both sides
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    exe = Path(sys.executable).parent / "orchestrator"
    proc = subprocess.Popen([str(exe), "daemon", "--config", str(config)], cwd=tmp,
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
        while http.get(f"/v1/deployments/{deployment}").json()["state"] not in (
                "succeeded", "failed", "cancelled", "rolled_back"):
            time.sleep(0.2)
        lines = http.get(f"/v1/deployments/{deployment}/events").text.splitlines()
    events: list[dict[str, Any]] = [json.loads(line) for line in lines]
    running = next(e["ts"] for e in events if e["event"] == "deployment"
                   and e["status"] == "running")
    return float(events[-1]["ts"]) - float(running)


async def _follower(tmp: Path, deployment: str, reads: bool, attached: list[int]) -> None:
    """Raw HTTP/1.1 over the socket; a reader reads to the end (reconnecting after a `lagged`
    line), a non-reader sends its request and never reads."""
    after = 0
    first = True
    while True:
        reader, writer = await asyncio.open_unix_connection(str(tmp / "o.sock"))
        writer.write(f"GET /v1/deployments/{deployment}/events?follow=true&after={after} "
                     "HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        if first:
            attached[0] += 1
            first = False
        if not reads:
            await asyncio.sleep(3600)  # cancelled at the end of the rollout
        tail = b""
        while chunk := await reader.read(1 << 16):
            tail = (tail + chunk)[-512:]
        writer.close()
        lagged = AFTER.search(tail)
        if lagged is None:
            return
        attached[1] += 1
        after = int(lagged.group(1))


def _watch(sock: str, pid: int, out: str) -> None:
    """In its own process (the bench's followers would otherwise hold this one's GIL and show
    their own delays as the daemon's): GET /healthz every 50 ms and the daemon's RSS, one
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


async def _followed(tmp: Path, pid: int) -> tuple[float, list[float], list[float], int]:
    gate = _submit(tmp, "gate")  # runs first: the followed one stays queued behind it
    followed = _submit(tmp, "followed")
    attached = [0, 0]
    tasks = [asyncio.create_task(_follower(tmp, followed, i % 2 == 0, attached))
             for i in range(FOLLOWERS)]
    while attached[0] < FOLLOWERS:
        await asyncio.sleep(0.05)
    await asyncio.to_thread(_rollout_s, tmp, gate)
    out = tmp / "watch.txt"
    watcher = subprocess.Popen([sys.executable, "-m", __name__, str(tmp / "o.sock"), str(pid),
                                str(out)], stdin=subprocess.PIPE)
    seconds = await asyncio.to_thread(_rollout_s, tmp, followed)
    assert watcher.stdin is not None
    watcher.stdin.close()
    watcher.wait(60)
    pairs = [line.split() for line in out.read_text().splitlines()]
    health_ms = [float(a) for a, _ in pairs]
    rss = [float(b) for _, b in pairs]
    readers = [t for i, t in enumerate(tasks) if i % 2 == 0]
    await asyncio.wait_for(asyncio.gather(*readers), 300)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return seconds, health_ms, rss, attached[1]


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-followers-") as name:
        tmp = Path(name)
        proc = _start(tmp)
        try:
            alone = _rollout_s(tmp, _submit(tmp, "alone"))
            print(f"{HOSTS}-host EchoRunner rollout, no follower: {alone:.2f} s")
            seconds, health, rss, resumed = asyncio.run(_followed(tmp, proc.pid))
            health.sort()
            p99 = health[min(len(health) - 1, int(len(health) * 0.99))]
            print(f"with {FOLLOWERS} followers ({FOLLOWERS // 2} not reading): {seconds:.2f} s, "
                  f"{seconds / alone:.2f}x (target within 1.5x); readers dropped as lagged "
                  f"and resumed: {resumed}")
            print(f"/healthz meanwhile: median {statistics.median(health):.1f} ms, "
                  f"p99 {p99:.1f} ms, max {health[-1]:.1f} ms (n={len(health)}; "
                  "target p99 < 100 ms)")
            print(f"daemon RSS: peak {max(rss):.0f} MB during the followed rollout "
                  "(target < 300 MB)")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    _watch(sys.argv[1], int(sys.argv[2]), sys.argv[3])
