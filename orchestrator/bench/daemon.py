"""The daemon's own overhead, on a real daemon process over its real socket, with the runner
that touches no host (`EchoRunner`), so the figures are the daemon's and not SSH's:

- submit-to-first-event: from the start of `POST /v1/deployments` (a small tar bundle) to a
  follower receiving the deployment's first runner event (target < 100 ms);
- event-to-follower: from an event's `ts` (set when it is emitted) to its arrival at a follower
  of `GET .../events?follow=1` (target < 100 ms);
- the daemon's RSS with 50 followers attached to a running deployment (target < 200 MB).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from orchestrator.daemon.bundle import pack_bundle

ROUNDS = 15
FOLLOWERS = 50
STEP_DELAY_S = 0.05


def _spec(directory: Path, name: str, hosts: int) -> Path:
    import hashlib

    directory.mkdir(parents=True, exist_ok=True)
    lock = Path(__file__).resolve().parents[2] / "tests/fixtures/deploy/sklearn.lock"
    (directory / "requirements.lock").write_bytes(
        lock.read_bytes() if lock.exists() else b"numpy==2.0.0 --hash=sha256:" + b"0" * 64 + b"\n")
    (directory / "model.joblib").write_bytes(b"model")
    (directory / "golden.npz").write_bytes(b"golden")
    sha = hashlib.sha256(b"model").hexdigest()
    targets = ", ".join(f"h{i}" for i in range(hosts))
    spec = directory / "spec.yaml"
    spec.write_text(
        f"apiVersion: orchestrator/v1\nkind: Deployment\nname: {name}\n"
        f"model: {{path: model.joblib, format: joblib, sha256: {sha}}}\n"
        'environment: {python: "3.11", requirements: requirements.lock}\n'
        f"targets: [{targets}]\nverify: {{golden: golden.npz}}\n")
    return spec


def _bundle(spec: Path) -> bytes:
    out = io.BytesIO()
    pack_bundle(spec, out)
    return out.getvalue()


def _start(tmp: Path, delay_s: float) -> subprocess.Popen[bytes]:
    config = tmp / "orchestrator.toml"
    config.write_text('state_dir = "state"\nsocket = "o.sock"\nmax_parallel_deployments = 4\n'
                      'runner = "orchestrator.daemon.runners.base:EchoRunner"\n')
    exe = Path(sys.executable).parent / "orchestrator"
    proc = subprocess.Popen([str(exe), "daemon", "--config", str(config)], cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "ORCHESTRATOR_ECHO_DELAY_S": str(delay_s)})
    return _until_healthy(tmp, proc)


def _until_healthy(tmp: Path, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """`proc` once the daemon in `tmp` answers /healthz (killed if it does not within 60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with _client(tmp) as http:
                http.get("/healthz")
            return proc
        except (httpx.TransportError, OSError):
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the daemon did not start within 60 s")


def _client(tmp: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(tmp / "o.sock")),
                        base_url="http://orchestrator", timeout=60)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _ms(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return (f"median {statistics.median(values):.1f} ms, p95 {p95:.1f} ms, "
            f"max {values[-1]:.1f} ms (n={len(values)})")


def submit_to_first_event(tmp: Path) -> list[float]:
    out = []
    with _client(tmp) as http:
        for i in range(ROUNDS + 1):
            body = _bundle(_spec(tmp / f"s{i}", f"app-{i}", 1))
            started = time.perf_counter()
            record = http.post("/v1/deployments", content=body,
                               headers={"content-type": "application/x-tar"}).json()
            with http.stream("GET", f"/v1/deployments/{record['id']}/events",
                             params={"follow": True}) as stream:
                first = None
                for line in stream.iter_lines():  # to the end: no round queues behind another
                    if first is None and json.loads(line)["event"] == "step":
                        first = (time.perf_counter() - started) * 1000
                if first is not None:
                    out.append(first)
    return out


async def _follow(tmp: Path, deployment: str, lags: list[float] | None,
                  attached: asyncio.Event, count: list[int], followers: int) -> None:
    """A follower as light as a client can be (raw HTTP/1.1 over the socket, chunked body
    decoded by hand), so 50 of them in this process measure the daemon, not httpx."""
    reader, writer = await asyncio.open_unix_connection(str(tmp / "o.sock"), limit=1 << 24)
    writer.write(f"GET /v1/deployments/{deployment}/events?follow=true HTTP/1.1\r\n"
                 "Host: localhost\r\n\r\n".encode())
    await writer.drain()
    while (await reader.readline()) not in (b"\r\n", b""):
        pass  # the response headers
    count[0] += 1
    if count[0] == followers:
        attached.set()
    while True:
        size = int((await reader.readline()).strip() or b"0", 16)
        if size == 0:
            break
        data = await reader.readexactly(size)
        await reader.readline()
        if lags is not None:
            now = time.time()
            for line in data.splitlines():
                event: dict[str, Any] = json.loads(line)
                lags.append((now - float(event["ts"])) * 1000)
    writer.close()


async def followers_run(tmp: Path, pid: int, followers: int,
                        name: str) -> tuple[list[float], float, float]:
    with _client(tmp) as http:
        body = _bundle(_spec(tmp / name, name, 30))
        rss_before = _rss_mb(pid)
        deployment = http.post("/v1/deployments", content=body,
                               headers={"content-type": "application/x-tar"}).json()["id"]
    lags: list[float] = []
    attached = asyncio.Event()
    count = [0]
    tasks = [asyncio.create_task(_follow(tmp, deployment, lags if i == 0 else None, attached,
                                         count, followers)) for i in range(followers)]
    await asyncio.wait_for(attached.wait(), 60)
    await asyncio.sleep(1.0)
    rss = _rss_mb(pid)
    await asyncio.gather(*tasks)
    return lags, rss_before, rss


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as name:
        tmp = Path(name)
        # 50 ms per step: still faster than any real SSH step, so events come in bursts.
        proc = _start(tmp, delay_s=STEP_DELAY_S)
        try:
            print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
            rounds = submit_to_first_event(tmp)
            # The first submission pays the daemon's lazy imports (spec models, tarfile): shown
            # apart so the steady state is not hidden behind it.
            print(f"submit-to-first-event: first {rounds[0]:.1f} ms; then {_ms(rounds[1:])} "
                  "(target < 100 ms)")
            lags, _, _ = asyncio.run(followers_run(tmp, proc.pid, 1, "one"))
            print(f"event-to-follower, 1 follower: {_ms(lags)} (target < 100 ms)")
            lags, before, rss = asyncio.run(followers_run(tmp, proc.pid, FOLLOWERS, "many"))
            print(f"event-to-follower, {FOLLOWERS} followers: "
                  f"{_ms(lags)} (target < 100 ms)")
            print(f"daemon RSS: {before:.0f} MB idle, {rss:.0f} MB with {FOLLOWERS} followers "
                  "(target < 200 MB)")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
