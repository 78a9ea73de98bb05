"""Time `testbed up --hosts 8` (target: well under 10 s) and `testbed down`, through the CLI as a
user runs them, plus the first-ever up that also compiles the fake libraries and makes keys."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOSTS = 8
ROUNDS = 3


def _cli(*args: str, env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "orchestrator", "testbed", *args], check=True,
                   stdout=subprocess.DEVNULL, env=env)
    return time.monotonic() - started


def _round(root: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    up = _cli("up", "--hosts", str(HOSTS), "--dir", str(root), env=env)
    down = _cli("down", "--dir", str(root), env=env)  # a failed up has already stopped its servers
    return up, down


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-testbed-") as tmp:
        cold_env = {**os.environ, "ORCHESTRATOR_CACHE_DIR": str(Path(tmp) / "cache")}
        up, down = _round(Path(tmp) / "cold", cold_env)
        print(f"testbed up --hosts {HOSTS}, cold (compile fake libs, make keys): {up:.2f} s; "
              f"down: {down:.2f} s")
        ups, downs = [], []
        for i in range(ROUNDS):
            up, down = _round(Path(tmp) / f"warm{i}")
            ups.append(up)
            downs.append(down)
        print(f"testbed up --hosts {HOSTS}, warm cache, best of {ROUNDS}: {min(ups):.2f} s "
              f"(worst {max(ups):.2f} s; target < 10 s); "
              f"down: {min(downs):.2f} s (worst {max(downs):.2f} s)")
        print("  (CLI figures include the CLI's own Python start-up and imports)")
        api_up, api_down = _api_round(Path(tmp) / "api")
        print(f"Testbed.up(hosts={HOSTS}) in-process: {api_up:.2f} s; "
              f"Testbed.down: {api_down:.2f} s")


def _api_round(root: Path) -> tuple[float, float]:
    from orchestrator.testbed import Testbed  # here: the CLI rounds must not pre-import it

    started = time.monotonic()
    Testbed.up(root, HOSTS)
    up = time.monotonic() - started
    started = time.monotonic()
    Testbed.down(root)
    return up, time.monotonic() - started
