"""The real daemon as a child process, for every test that needs one: started with a config
file, ready once `/healthz` answers on its Unix socket, driven through its CLI and HTTP API.

    def test_x(tmp_path, daemons):        # the `daemons` fixture (tests/conftest.py)
        daemon = daemons(write_config(tmp_path, ECHO))
        daemon.cli("status", "--json")    # the orchestrator CLI against this daemon's socket

Module-scoped daemons call `start()` themselves and `stop()` the result. A daemon's stdout and
stderr go to daemon.out beside its config.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ORCHESTRATOR = str(Path(sys.executable).parent / "orchestrator")
# The runners the daemon tests choose between in their config (`runner = ...`).
ECHO = 'runner = "orchestrator.daemon.runners.base:EchoRunner"\n'
# Probes and preflights only: for tests about the daemon, not about installs.
PROBE = 'runner = "orchestrator.daemon.runners.probe:ProbeRunner"\n'
DEPLOY = 'runner = "orchestrator.daemon.runners.deploy:DeployRunner"\n'


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    config: Path
    socket: Path
    state_dir: Path
    output: Path  # its stdout and stderr

    def http(self) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)),
                            base_url="http://orchestrator", timeout=60)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ORCHESTRATOR, *args, "--socket", str(self.socket)],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)


def write_config(tmp: Path, extra: str = "") -> Path:
    """`orchestrator.toml` in `tmp`: state in tmp/state, the socket at tmp/o.sock."""
    config = tmp / "orchestrator.toml"
    config.write_text(f'state_dir = "state"\nsocket = "o.sock"\n{extra}')
    return config


def tcp_config(tmp: Path, token: str) -> tuple[str, int]:
    """Config lines for the TCP listener on a free local port, its token in tmp/token:
    (the lines, the port)."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port: int = free.getsockname()[1]
    (tmp / "token").write_text(token + "\n")
    return f'[tcp]\nenabled = true\nport = {port}\ntoken_file = "token"\n', port


def start(config: Path, env: dict[str, str] | None = None, wait: bool = True) -> Daemon:
    """The daemon for `config`, run in the config's folder; with `wait`, once it answers."""
    base = config.parent
    # A file, not a pipe: nobody reads a pipe while the daemon runs, and a full one would block
    # it. Appended to: a restarted daemon keeps the first one's output.
    output = base / "daemon.out"
    with output.open("a") as sink:
        proc = subprocess.Popen([ORCHESTRATOR, "daemon", "--config", str(config)],
                                stdout=sink, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **(env or {})}, cwd=base)
    daemon = Daemon(proc, config, base / "o.sock", base / "state", output)
    if wait:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited {proc.returncode}: {output.read_text()}")
            if _listening(daemon.socket):
                with daemon.http() as http:
                    if http.get("/healthz").status_code == 200:
                        return daemon
            time.sleep(0.05)
        daemon.stop(signal.SIGKILL)
        raise AssertionError("daemon did not answer within 60 s")
    return daemon


def run_to_exit(config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The daemon for `config`, run in the config's folder, which must refuse to start: its
    exit code and output once it has exited."""
    return subprocess.run([ORCHESTRATOR, "daemon", "--config", str(config)], cwd=config.parent,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _listening(path: Path) -> bool:
    # A plain connect first: a stale socket file left by kill -9 refuses connections.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def stored_events(daemon: Daemon, deployment: str) -> list[dict[str, Any]]:
    with daemon.http() as http:
        text = http.get(f"/v1/deployments/{deployment}/events").text
    return [json.loads(line) for line in text.splitlines()]


def jsonl_events(daemon: Daemon, deployment: str) -> list[dict[str, Any]]:
    path = daemon.state_dir / "logs" / f"{deployment}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(check: Callable[[], Any], timeout: float = 60, what: str = "the condition") -> Any:
    """The first true value `check()` returns, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
