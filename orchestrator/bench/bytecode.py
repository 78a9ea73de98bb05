"""Where shipping the lock's bytecode pays (issue 15): cold deploys of the anchors' TensorFlow spec
with and without the .pyc archive, interleaved, per host.

    python -m orchestrator.bench bytecode [--reps 2] [--hosts 4]

Each run: a fresh `Testbed.up` (no venv, wheel or uv cache on any host), `orchestrator deploy
--json` of the anchors' v1 spec (~/.cache/orchestrator/bench-anchors/project/v1/spec.yaml,
set up by `python -m orchestrator.bench anchors`), then the testbed down and deleted: one
TensorFlow testbed at a time (~7 GB). "off" is `--no-ship-bytecode`; the first "on" run starts
from an empty controller bytecode cache (its build is timed, once per lock), the others reuse
it. Printed per run: wall seconds, install and verify seconds per host (verify's first
TensorFlow import is what the archive is for), and the archive's build, size and unpacking.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.bench._anchorsetup import cache_dir, project_env
from orchestrator.testbed import Testbed


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orchestrator.bench bytecode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=2, help="pairs of cold runs (default 2)")
    p.add_argument("--hosts", type=int, default=4, help="testbed hosts (default 4)")
    p.add_argument("--spec", type=Path, default=cache_dir() / "project" / "v1" / "spec.yaml")
    return p


def cold_run(spec: Path, hosts: int, ship: bool, bytecode_cache: Path) -> dict[str, Any]:
    """One cold deploy on a fresh testbed; the per-host figures from its --json events."""
    with tempfile.TemporaryDirectory(prefix="bench-bytecode-") as tmp:
        tb = Path(tmp) / "testbed"
        Testbed.up(tb, hosts, ["h100"])
        try:
            os.sync()  # the previous run's deleted testbed is not written back during this one
            argv = [sys.executable, "-m", "orchestrator", "deploy", str(spec),
                    "--inventory", str(tb / "inventory.yaml"), "--json",
                    *([] if ship else ["--no-ship-bytecode"])]
            env = {**project_env(), "ORCHESTRATOR_BYTECODE_CACHE": str(bytecode_cache)}
            start = time.perf_counter()
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            wall = time.perf_counter() - start
        finally:
            Testbed.down(tb)
    row = step_figures(proc.stdout)
    row.update(ship=ship, ok=proc.returncode == 0, wall_s=round(wall, 1))
    if proc.returncode != 0:
        row["error"] = (proc.stderr or proc.stdout).strip()[-600:]
    return row


def step_figures(out: str) -> dict[str, Any]:
    """From `deploy --json` lines: install and verify seconds per host, and the install step's
    bytecode details per host. Pure."""
    install: dict[str, float] = {}
    verify: dict[str, float] = {}
    shipped: dict[str, dict[str, Any]] = {}
    for line in out.splitlines():
        try:
            e = json.loads(line) if line.startswith("{") else None
        except ValueError:
            continue
        if not e or e.get("event") != "step" or e.get("status") != "ok":
            continue
        host, secs = str(e.get("host")), float(e.get("duration_ms") or 0) / 1000
        if e.get("step") == "install":
            install[host] = round(secs, 2)
            shipped[host] = {**(e.get("bytecode") or {}),
                             "host_s": e.get("install_durations") or {}}
        elif e.get("step") == "verify":
            verify[host] = round(secs, 2)
    return {"install_s": install, "verify_s": verify, "bytecode": shipped}


def _fmt(values: dict[str, float]) -> str:
    got = sorted(values.values())
    return (f"{statistics.median(got):.1f} ({got[0]:.1f}-{got[-1]:.1f})" if got else "-")


def report(rows: list[dict[str, Any]]) -> None:
    print("| run | bytecode | wall s | install s, median (range) | verify s, median (range) "
          "| archive: build s / MB / unpack s per host |")
    print("|---|---|---|---|---|---|")
    for n, row in enumerate(rows, 1):
        info = [b for b in row["bytecode"].values() if b.get("shipped")]
        archive = "-"
        if info:
            unpack = sorted(float(b.get("unpack_s", 0)) for b in info)
            built = not all(b.get("cached") for b in info)
            archive = (f"{'built in ' if built else 'cached, '}"
                       f"{max(float(b.get('build_s', 0)) for b in info):.1f} / "
                       f"{max(int(b.get('archive_bytes', 0)) for b in info) / 1e6:.0f} / "
                       f"{unpack[0]:.2f}-{unpack[-1]:.2f}")
        print(f"| {n} | {'shipped' if row['ship'] else 'off'} | {row['wall_s']} "
              f"| {_fmt(row['install_s'])} | {_fmt(row['verify_s'])} | {archive} |"
              + ("" if row["ok"] else f" FAILED: {row.get('error', '')[:200]}"))


def run(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if not args.spec.is_file():
        print(f"bytecode: no {args.spec}: set up the anchors first "
              "(`python -m orchestrator.bench anchors --quick`)")
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-bytecode-cache-") as cache:
        for _ in range(args.reps):
            for ship in (False, True):
                rows.append(cold_run(args.spec, args.hosts, ship, Path(cache)))
                print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    report(rows)
