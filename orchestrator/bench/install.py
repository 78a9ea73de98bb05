"""What a deploy really pays for its environment on one host: venv + install + the first import
of TensorFlow in it, pip and uv side by side (tensorflow-cpu 2.21 lock of tests/fixtures/locks).

Runs the host script (`orchestrator/hosts/remote/hostops.py venv-ensure`) as a host runs it, with
/usr/bin/python3, against a temporary deploy root whose wheel cache is already filled (the wheels
come from the controller's wheel cache, filled once). Targets (issue 4): uv at least 2.5 times
faster than pip for a cold host; a new venv for an already-cached lock in under 1 s.

Rows: pip as pip installs by default (it compiles bytecode), uv as venv-ensure does by default
(no bytecode: the first import compiles what it imports), and uv with --compile-bytecode. The
machine's 2 cores are shared: expect the figures to move by tens of percent between runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.core.hashing import hash_file
from orchestrator.core.release import env_hash
from orchestrator.deploy.steps.wheels import default_cache_dir
from orchestrator.deploy.wheelcache import WheelCache, filenames, platform_tags
from orchestrator.hosts import layout, ops

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "tests" / "fixtures" / "locks" / "tensorflow-cpu-2.21.lock"
SCRIPT = REPO / "orchestrator" / "hosts" / "remote" / "hostops.py"
HOST_PYTHON = "/usr/bin/python3"


def _op(root: Path, call: ops.OpCall[Any]) -> dict[str, Any]:
    """Run one host op on this machine as a host runs it (the script, its JSON arguments)."""
    args = json.dumps({"root": str(root), **call.args})
    proc = subprocess.run([HOST_PYTHON, str(SCRIPT), str(call.op), "--json-args", args],
                          capture_output=True, text=True, check=False)
    reply: dict[str, Any] = json.loads(proc.stdout)
    if not reply.get("ok"):
        raise RuntimeError(f"{call.op} failed: {reply.get('error')}")
    return reply


def _first_import(venv: str) -> float:
    started = time.monotonic()
    subprocess.run([layout.venv_python(venv), "-c", "import tensorflow"], check=True,
                   capture_output=True, env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})
    return time.monotonic() - started


def _ensure(root: Path, env: str, installer: str, lock: Path, wheels: dict[str, str],
            uv: str, compile_bytecode: bool = True) -> tuple[float, dict[str, object]]:
    started = time.monotonic()
    reply = _op(root, ops.venv_ensure(env, str(lock), wheels, python=HOST_PYTHON,
                                      installer=installer, uv=uv,
                                      compile_bytecode=compile_bytecode, wait_s=600.0,
                                      timeout_s=3600.0))
    return time.monotonic() - started, reply


def _host_with_wheels(base: Path, wheel_paths: dict[str, Path]) -> Path:
    root = Path(tempfile.mkdtemp(prefix="host-", dir=base))
    Path(layout.wheels_dir(str(root))).mkdir(parents=True)
    for sha, path in wheel_paths.items():
        target = layout.wheel(str(root), sha)
        try:
            os.link(path, target)  # what push_wheels leaves, without a copy
        except OSError:
            shutil.copyfile(path, target)
    return root


def run() -> None:
    if not Path(HOST_PYTHON).exists():
        print("install: skipped (no /usr/bin/python3)")
        return
    import uv as uv_pkg

    uv = uv_pkg.find_uv_bin()
    cache_dir = default_cache_dir()
    started = time.monotonic()
    wheels = WheelCache(cache_dir).fill(LOCK, "3.11", platform_tags("x86_64", "glibc 2.36"))
    fill_s = time.monotonic() - started
    names = filenames(wheels)
    lock_sha = hash_file(LOCK)
    size = sum(w.path.stat().st_size for w in wheels.values()) / 1e6
    print(f"install: tensorflow-cpu 2.21 lock, {len(wheels)} wheels, {size:.0f} MB; "
          f"controller wheel cache fill {fill_s:.1f} s")
    base = Path(tempfile.mkdtemp(prefix="bench-install-"))
    rows: dict[str, tuple[float, float]] = {}
    try:
        for installer, compile_bc in (("pip", True), ("uv", False), ("uv", True)):
            label = f"{installer}{'' if installer == 'pip' or not compile_bc else ' +bytecode'}"
            root = _host_with_wheels(base, {s: w.path for s, w in wheels.items()})
            env = env_hash("3.11", label, lock_sha)
            total, reply = _ensure(root, env, installer, LOCK, names, uv, compile_bc)
            rows[f"{label}, cold host"] = (total, _first_import(str(reply["path"])))
            if installer == "uv":
                warm_env = env_hash("3.11", label + " warm", lock_sha)
                warm, warm_reply = _ensure(root, warm_env, "uv", LOCK, names, uv, compile_bc)
                rows[f"{label}, new venv, lock cached"] = (
                    warm, _first_import(str(warm_reply["path"])))
                reuse, _ = _ensure(root, warm_env, "uv", LOCK, names, uv, compile_bc)
                rows[f"{label}, complete venv reused"] = (reuse, 0.0)
            shutil.rmtree(root)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    _report(rows)


def _report(rows: dict[str, tuple[float, float]]) -> None:
    print(f"  {'':32} {'venv+install':>12} {'1st import':>11} {'total':>8}")
    for label, (install, first) in rows.items():
        print(f"  {label:32} {install:11.1f}s {first:10.1f}s {install + first:7.1f}s")
    pip = sum(rows["pip, cold host"])
    uv = sum(rows["uv, cold host"])
    print(f"  uv vs pip, cold host: {pip / uv:.1f}x faster (target >= 2.5x); new venv for a "
          f"cached lock: {rows['uv, new venv, lock cached'][0]:.2f} s (target < 1 s)")
