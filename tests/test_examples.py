"""The examples in configs/examples/ are real and stay true: each validates (model hash, lock
hashes, golden file) through the real CLI, with and without the example inventory, and `plan`s
against the testbed's sshd hosts as its README says: the GPU example passes the H100 and T4 hosts
and is refused on the old-driver host for its CUDA driver; the CPU examples pass everywhere.
The demo's own specs (orchestrator/demo.py) are checked the same way (its image release too), and
its latency and image tables.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator import demo, demo_image
from orchestrator.errors import InvalidInput
from orchestrator.testbed import Testbed, TestbedHost, baseimage
from tests.procs import processes_mentioning

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "configs" / "examples"
INVENTORY = ROOT / "configs" / "inventory.yaml"
ORCHESTRATOR = Path(sys.executable).parent / "orchestrator"
NAMES = ("tensorflow-savedmodel", "keras", "sklearn-joblib")
MAX_COMMITTED_BYTES = 300_000  # tiny models: the examples stay small in the repository


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ORCHESTRATOR), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def aimed_at(tmp_path: Path, name: str, hosts: list[str]) -> Path:
    """A copy of the example whose targets are testbed hosts."""
    copy = tmp_path / name
    shutil.copytree(EXAMPLES / name, copy, ignore=shutil.ignore_patterns("model-v2"))
    spec = copy / "spec.yaml"
    text, n = re.subn(r"(?m)^targets: \[.*\]$", f"targets: [{', '.join(hosts)}]",
                      spec.read_text())
    assert n == 1, "the example's targets line moved: update this test"
    spec.write_text(text)
    return spec


def plan(spec: Path, testbed: Testbed) -> dict[str, Any]:
    done = cli("plan", str(spec), "--inventory", str(testbed.inventory_path), "--json")
    assert done.returncode in (0, 3), done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["exit_code"] == done.returncode
    return result


def verdicts(result: dict[str, Any]) -> dict[str, str]:
    return {h["host"]: h["status"] for h in result["hosts"]}


def failing_checks(result: dict[str, Any], host: str) -> dict[str, str]:
    entry = next(h for h in result["hosts"] if h["host"] == host)
    return {c["name"]: c["message"] for c in entry["checks"] if c["status"] == "fail"}


@pytest.mark.parametrize("name", NAMES)
def test_example_validates_alone_and_against_the_example_inventory(name: str) -> None:
    spec = EXAMPLES / name / "spec.yaml"
    alone = cli("validate", str(spec))
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "valid" in alone.stdout
    with_inventory = cli("validate", str(spec), "--inventory", str(INVENTORY))
    assert with_inventory.returncode == 0, with_inventory.stdout + with_inventory.stderr


@pytest.mark.parametrize("name", NAMES)
def test_example_is_small_and_says_how_it_was_made(name: str) -> None:
    folder = EXAMPLES / name
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < MAX_COMMITTED_BYTES, f"{name}: {size} bytes"
    lock = (folder / "requirements.lock").read_text()
    entries = re.split(r"(?m)^(?=[a-z0-9])", lock)[1:]  # one entry per locked package
    assert entries and all(re.search(r"==\S+ \\\n\s+--hash=sha256:[0-9a-f]{64}", e)
                           for e in entries), "every locked package pinned with its hashes"
    assert (folder / "requirements.in").is_file()
    assert name in (EXAMPLES / "README.md").read_text()


def test_a_tampered_example_model_is_refused(tmp_path: Path) -> None:
    spec = aimed_at(tmp_path, "sklearn-joblib", ["gpu-03"])
    model = spec.parent / "model.joblib"
    model.write_bytes(model.read_bytes() + b"\0")
    done = cli("validate", str(spec))
    assert done.returncode == 2
    assert "model.sha256" in done.stdout + done.stderr


def test_gpu_example_plans_pass_on_h100_and_t4_and_refuses_the_old_driver(
        testbed: Testbed, host_by_profile: Callable[[str], TestbedHost], tmp_path: Path) -> None:
    h100, t4, old = (host_by_profile(p).name for p in ("h100", "t4", "old-driver"))
    result = plan(aimed_at(tmp_path, "tensorflow-savedmodel", [h100, t4, old]), testbed)
    assert result["exit_code"] == 3
    status = verdicts(result)
    assert status[h100] in ("pass", "warn") and status[t4] in ("pass", "warn")
    assert status[old] == "fail"
    reason = failing_checks(result, old)
    assert list(reason) == ["cuda-driver"], reason
    assert "470.82.01" in reason["cuda-driver"] and "upgrade the NVIDIA driver" in \
        reason["cuda-driver"]


@pytest.mark.parametrize("name", ["keras", "sklearn-joblib"])
def test_cpu_examples_plan_pass_on_hosts_without_a_usable_gpu(
        name: str, testbed: Testbed, host_by_profile: Callable[[str], TestbedHost],
        tmp_path: Path) -> None:
    hosts = [host_by_profile(p).name for p in ("old-driver", "no-gpu", "h100")]
    result = plan(aimed_at(tmp_path, name, hosts), testbed)
    assert result["exit_code"] == 0, result
    assert set(verdicts(result).values()) == {"pass"}


def test_demo_specs_validate_and_each_version_is_another_model(tmp_path: Path) -> None:
    specs = demo.Demo(tmp_path).write_specs()
    for spec in specs.values():
        done = cli("validate", str(spec))
        assert done.returncode == 0, done.stdout + done.stderr
    v1, v2, v3 = (cli("hash", str(specs[v].parent / "model")).stdout.split()[0]
                  for v in ("v1", "v2", "v3"))
    assert len({v1, v2, v3}) == 3, "versions 2 and 3 must be other models"
    assert "gpu: {required: false}" in specs["v1"].read_text()
    assert "features=" in specs["v3"].read_text(), "v3's health check is the clients' request"


def test_demo_latency_table_lists_each_verified_host() -> None:
    events: list[dict[str, Any]] = [
        {"step": "verify", "status": "ok", "host": "tb-01", "p50_ms": 0.2, "p95_ms": 0.5,
         "p99_ms": 0.7, "cold_start_ms": 40.0, "throughput_per_s": 4000.0},
        {"step": "verify", "status": "failed", "host": "tb-02"},
        {"step": "switch", "status": "ok", "host": "tb-01"},
    ]
    lines = demo.render_latency(events).splitlines()
    assert lines[0].split()[:2] == ["HOST", "P50"]
    assert len(lines) == 2 and lines[1].split() == ["tb-01", "0.20", "0.50", "0.70", "40.00",
                                                    "4000.00"]


def test_demo_image_spec_validates_and_leaves_out_the_degraded_host(tmp_path: Path) -> None:
    d = demo.Demo(tmp_path / "demo")
    (d.dir / "specs").mkdir(parents=True)
    base = tmp_path / "base.tar"  # validate checks the archive's sha256, not what it holds
    base.write_bytes(b"a base image archive\n")
    spec = demo_image.write_spec(d.dir / "specs", base)
    done = cli("validate", str(spec))
    assert done.returncode == 0, done.stdout + done.stderr
    text = spec.read_text()
    assert "image_base: {archive: base.tar, sha256: " in text
    # tb-02 is degraded by stage 6: the daemon would exclude it and fail the rollout
    assert "targets: [tb-01, tb-03, tb-04]" in text


def test_demo_image_table_names_each_host_image_and_what_was_shipped(tmp_path: Path) -> None:
    serving = tmp_path / "tb-01" / "iris-sklearn" / "current"
    serving.mkdir(parents=True)
    (serving / "manifest.json").write_text(json.dumps(
        {"image": {"image_id": "sha256:" + "ab" * 32, "engine": "podman",
                   "engine_version": "4.3.1"}}))
    events: list[dict[str, Any]] = [
        {"step": "install", "status": "ok", "host": "tb-01", "shipped_bytes": 570_000_000},
        {"step": "verify", "status": "ok", "host": "tb-01", "p99_ms": 4.25},
        {"step": "install", "status": "failed", "host": "tb-03"},
    ]
    lines = demo_image.render_images(events, {"tb-01": tmp_path / "tb-01",
                                        "tb-03": tmp_path / "tb-03"}).splitlines()
    assert lines[0].split()[:3] == ["HOST", "IMAGE", "ID"]
    assert lines[1].split() == ["tb-01", "sha256:abababababab", "podman", "4.3.1", "570", "4.25"]
    assert lines[2].split() == ["tb-03", "(not", "serving)", "-", "-", "-"]


def test_demo_image_stage_is_skipped_saying_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(baseimage, "why_not", lambda: "runc is not installed")
    d = demo.Demo(tmp_path / "demo")
    demo_image.image_release(d)  # nothing submitted: no daemon is needed
    out = capsys.readouterr().out
    assert "7. The scikit-learn model as a container image" in out
    assert "Skipped: runc is not installed." in out


def test_demo_down_refuses_nothing_and_wipes_only_a_demo_dir(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(InvalidInput):
        demo.Demo(foreign).prepare_dir()
    assert (foreign / "precious.txt").read_text() == "keep me"
    demo.stop(tmp_path / "never-started")  # nothing running: quiet, no error


def test_demo_down_leaves_no_process_of_the_daemon_or_the_testbed(tmp_path: Path) -> None:
    d = demo.Demo(tmp_path / "demo")
    d.prepare_dir()
    Testbed.up(d.dir, 2, ("h100", "old-driver"))
    pid = d.start_daemon()
    assert d.socket.exists() and processes_mentioning(str(d.dir))
    verified = subprocess.run([str(ORCHESTRATOR), "verify", "--socket", str(d.socket)],
                              capture_output=True, text=True, timeout=120, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr  # the daemon reaches them
    demo.stop(d.dir)
    assert d.daemon is not None and d.daemon.wait(timeout=10) == 0  # stopped by SIGTERM, cleanly
    assert processes_mentioning(str(d.dir)) == [], "left behind"
    assert not Path(f"/proc/{pid}").exists()
    demo.stop(d.dir)  # twice: nothing to do, no error


def test_demo_socket_stays_short_enough_for_a_unix_socket(tmp_path: Path) -> None:
    assert demo.demo_socket(tmp_path / "d") == tmp_path / "d" / "orchestrator.sock"
    deep = tmp_path / ("x" * 120) / "daemon"
    socket = demo.demo_socket(deep)
    assert len(str(socket)) < 100 and socket != demo.demo_socket(tmp_path / ("y" * 120))
