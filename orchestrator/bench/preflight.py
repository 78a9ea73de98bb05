"""Time the preflight (pure: per host, for a 1,000-host fleet) and `orchestrator plan` against an
8-host testbed (probe over real sshd + preflight), the way a user runs it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.core.compat import _parse, load_compat
from orchestrator.core.facts import parse_facts
from orchestrator.core.hashing import hash_file
from orchestrator.core.lockfile import load_lock
from orchestrator.core.preflight import Requirements, preflight
from orchestrator.testbed import Testbed

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "tests" / "fixtures" / "locks" / "tensorflow-2.21-gpu.lock"
FACTS = ROOT / "tests" / "fixtures" / "facts"
FLEET = 1000
PROFILES = ["h100", "t4", "old-driver", "no-driver", "no-gpu", "mismatch", "h100", "h100"]


def run() -> None:
    if not LOCK.exists():
        print(f"skipped: {LOCK} not found (run from a source checkout)")
        return
    _pure()
    _plan()


def _pure() -> None:
    text = (ROOT / "orchestrator" / "core" / "data" / "compat.json").read_text()
    started = time.perf_counter()
    _parse(text, "compat.json")
    print(f"compat data parse: {(time.perf_counter() - started) * 1000:.2f} ms")
    data, lock = load_compat(), load_lock(LOCK)
    facts = [parse_facts(f"gpu-{i:04d}", p.read_text())
             for i, p in enumerate(sorted(FACTS.glob("*.json")))]
    req = Requirements("3.11", True, 1, 8.0, "7.0")
    started = time.perf_counter()
    for i in range(FLEET):
        preflight(req, lock, facts[i % len(facts)], data)
    elapsed = time.perf_counter() - started
    print(f"preflight, {FLEET} hosts x 12 checks (tensorflow 2.21 GPU lock, 44 packages): "
          f"{elapsed * 1000:.1f} ms, {elapsed / FLEET * 1e6:.0f} us per host")


def _plan() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        root = Path(tmp)
        tb = Testbed.up(root / "tb", len(PROFILES), PROFILES)
        try:
            spec = _spec(root / "spec", [h.name for h in tb.hosts])
            for label in ("first (ships probe tools)", "second (tools cached)"):
                started = time.monotonic()
                proc = subprocess.run(
                    [sys.executable, "-m", "orchestrator", "plan", str(spec), "--inventory",
                     str(tb.inventory_path)], capture_output=True, text=True, check=False)
                took = time.monotonic() - started
                print(f"orchestrator plan, {len(PROFILES)} testbed hosts, {label}: {took:.2f} s "
                      f"(exit {proc.returncode}; includes CLI start-up)")
        finally:
            Testbed.down(root / "tb")


def _spec(directory: Path, targets: list[str]) -> Path:
    directory.mkdir(parents=True)
    model = directory / "model.joblib"
    model.write_bytes(b"bench model\n")
    (directory / "golden.npz").write_bytes(b"bench golden\n")
    (directory / "requirements.lock").write_bytes(LOCK.read_bytes())
    spec = directory / "spec.yaml"
    spec.write_text(
        "apiVersion: orchestrator/v1\nkind: Deployment\nname: bench\n"
        f"model: {{path: model.joblib, format: joblib, "
        f"sha256: {hash_file(model)}}}\n"
        'environment: {python: "3.11", requirements: requirements.lock}\n'
        "gpu: {required: true, count: 1, min_memory_gib: 8}\n"
        f"targets: [{', '.join(targets)}]\n"
        "verify: {golden: golden.npz}\n")
    return spec
