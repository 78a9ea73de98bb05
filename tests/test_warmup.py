"""The warmup runner, for real: real TensorFlow and scikit-learn models, run by the real script
(locally through subprocess, and over SSH on the testbed with the dev venv as "the venv")."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core import fingerprint
from orchestrator.core.gates import Gate, WarmupRequest, WarmupResult, gates, parse_result, passed
from orchestrator.core.inventory import load_inventory
from orchestrator.hosts import ssh
from orchestrator.hosts.shipping import RemoteTools, ensure_tools
from orchestrator.hosts.warmup import run_warmup
from orchestrator.testbed import Testbed
from orchestrator.testbed import profiles as gpu_profiles
from tests import models
from tests.procs import processes_mentioning

RUNNER = Path(__file__).resolve().parent.parent / "orchestrator" / "hosts" / "remote" / "warmup.py"
VENV_PYTHON = sys.executable  # the dev venv: numpy, TensorFlow, scikit-learn
SYSTEM_PYTHON = "/usr/bin/python3"  # what the testbed hosts run as python3: stdlib only


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def run_local(tmp: Path, model: Path, fmt: str, golden: Path, **options: object
              ) -> tuple[WarmupResult, subprocess.CompletedProcess[str]]:
    """The runner as the controller runs it: venv python, own process group, one JSON line."""
    request = WarmupRequest(model_path=str(model), format=fmt, golden_path=str(golden),
                            **options)  # type: ignore[arg-type]
    path = tmp / f"request-{time.monotonic_ns()}.json"
    path.write_text(request.to_json())
    proc = subprocess.run([VENV_PYTHON, "-E", str(RUNNER), str(path)], capture_output=True,
                          text=True, timeout=request.deadline_s + 60, start_new_session=True)
    assert len(proc.stdout.splitlines()) == 1, proc.stdout  # nothing but the result
    return parse_result("local", proc.stdout), proc


def by_name(gate_list: list[Gate]) -> dict[str, Gate]:
    return {g.name: g for g in gate_list}


def test_savedmodel_passes_with_sane_percentiles(built: Path, tmp_path: Path) -> None:
    model, golden = models.make_savedmodel(built / "sm")
    result, proc = run_local(tmp_path, model, "tensorflow-savedmodel", golden, iterations=100,
                             warmup_iterations=10, batch_size=4)
    verify = {"latency_ms": {"p50": 500, "p99": 2000}, "min_throughput": 1}
    got = gates(result, verify)
    assert passed(got) and result.ok and proc.returncode == 0, got
    lat = result.latency
    assert lat is not None and lat.samples == 100 and lat.batch_size == 4
    assert lat.p50_ms and lat.p90_ms and lat.p95_ms and lat.p99_ms and lat.max_ms and lat.mean_ms
    assert 0 < lat.p50_ms <= lat.p90_ms <= lat.p95_ms <= lat.p99_ms <= lat.max_ms
    assert lat.throughput_per_s == pytest.approx(4 * 1000 / lat.mean_ms, rel=1e-3)
    assert lat.cold_start_ms is not None and lat.cold_start_ms > 0
    assert result.golden and result.golden["outputs"].keys() == {"probabilities", "scaled"}
    assert result.environment["frameworks"]["tensorflow"] == "2.21.0"
    assert result.gpu_memory_peak_bytes is None  # no NVML here: null, with the reason
    assert result.raw["gpu_memory"]["error"]


def test_one_changed_weight_fails_golden_naming_the_samples(built: Path, tmp_path: Path) -> None:
    model, golden = models.make_savedmodel(built / "sm-changed", changed_weight=True)
    result, proc = run_local(tmp_path, model, "tensorflow-savedmodel", golden, iterations=5)
    got = by_name(gates(result, {}))
    assert proc.returncode == 1 and not result.ok and not got["golden"].passed
    assert got["load"].passed and got["samples"].passed
    worst = result.golden["outputs"]["probabilities"]["worst"] if result.golden else []
    assert worst and {"index", "expected", "got", "abs_diff"} <= worst[0].keys()
    assert f"#{worst[0]['index']} expected" in got["golden"].message
    assert "of 32 samples differ" in got["golden"].message


def test_joblib_latency_limit_fails_with_the_measured_figure(built: Path, tmp_path: Path) -> None:
    model, golden = models.make_joblib(built / "jl")
    result, _ = run_local(tmp_path, model, "joblib", golden, method="predict_proba")
    assert result.ok and result.latency is not None and result.latency.p99_ms
    got = by_name(gates(result, {"latency_ms": {"p99": 0.001}}))
    failed = [g.name for g in got.values() if not g.passed]
    assert failed == ["latency:p99"]
    assert got["latency:p99"].message == f"p99 {result.latency.p99_ms:.3f} ms > limit 0.001 ms"


def test_a_callable_joblib_model_needs_no_scikit_learn(built: Path, tmp_path: Path) -> None:
    model, golden = models.make_polynomial(built / "poly")
    result, _ = run_local(tmp_path, model, "joblib", golden, method="__call__", iterations=20)
    assert result.ok and passed(gates(result, {})), result
    changed, _ = models.make_polynomial(built / "poly-changed", changed=True)
    result, _ = run_local(tmp_path, changed, "joblib", golden, method="__call__", iterations=5)
    got = by_name(gates(result, {}))
    assert not got["golden"].passed and "of 32 samples differ" in got["golden"].message


def test_joblib_changed_weight_fails_golden(built: Path, tmp_path: Path) -> None:
    model, golden = models.make_joblib(built / "jl-changed", changed_weight=True)
    result, _ = run_local(tmp_path, model, "joblib", golden, method="predict_proba",
                          iterations=5)
    assert result.golden and not result.golden["ok"] and result.golden["mismatched"] > 0


def test_a_golden_recorded_with_another_method_fails_naming_both(built: Path,
                                                                tmp_path: Path) -> None:
    """issue 14: the canary's failure names the cause, not only the shapes that differ."""
    model, golden = models.make_joblib(built / "jl-method", method="predict_proba")
    result, _ = run_local(tmp_path, model, "joblib", golden, method="predict", iterations=5)
    assert result.golden and not result.golden["ok"]
    assert ("the golden file was recorded with method 'predict_proba' but verify.method is "
            "'predict'") in result.golden["message"]
    same, _ = run_local(tmp_path, model, "joblib", golden, method="predict_proba", iterations=5)
    assert same.golden and same.golden["ok"]


@pytest.fixture(scope="module")
def old_sklearn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = Path(sys.executable).parent / "uv"
    return models.old_sklearn_python(tmp_path_factory.mktemp("venvs"), uv, "1.5.2")


def test_joblib_from_another_sklearn_gives_the_version_finding(
        old_sklearn: Path, tmp_path: Path) -> None:
    import sklearn

    model, golden = models.make_joblib_other_sklearn(tmp_path / "old", old_sklearn)
    result, proc = run_local(tmp_path, model, "joblib", golden, method="predict_proba",
                             iterations=5)
    assert proc.returncode == 1 and not result.ok
    (finding,) = result.findings
    assert finding["trained_with"] == "1.5.2" and finding["running"] == sklearn.__version__
    assert finding["estimators"] == ["LogisticRegression"]
    refused = by_name(gates(result, {}))["version"]
    assert not refused.passed and "scikit-learn 1.5.2, running" in refused.message
    assert by_name(gates(result, {"allow_version_mismatch": True}))["version"].passed
    allowed, _ = run_local(tmp_path, model, "joblib", golden, method="predict_proba",
                           iterations=5, allow_version_mismatch=True)
    assert allowed.findings[0]["allowed"] is True


def test_model_raising_on_load_fails_with_the_exception_text(tmp_path: Path) -> None:
    model, golden = models.make_raising_model(tmp_path)
    result, proc = run_local(tmp_path, model, "joblib", golden)
    assert proc.returncode == 1 and result.error and result.error["phase"] == "load"
    load = by_name(gates(result, {}))["load"]
    assert not load.passed
    assert load.message == ("model failed to load: ValueError: invalid literal for int() "
                            "with base 10: 'not a number'")


def test_known_cost_of_2ms_gives_p50_within_10_percent(tmp_path: Path) -> None:
    model, golden = models.make_sleepy_model(tmp_path, ms=2.0)
    result, _ = run_local(tmp_path, model, "joblib", golden, iterations=200, warmup_iterations=5)
    assert result.ok and result.latency is not None and result.latency.p50_ms is not None
    assert result.latency.p50_ms == pytest.approx(2.0, rel=0.10)


def test_model_printing_to_stdout_cannot_corrupt_the_result(tmp_path: Path) -> None:
    model, golden = models.make_sleepy_model(tmp_path, ms=0, noisy=True)
    result, proc = run_local(tmp_path, model, "joblib", golden, iterations=3)
    assert result.ok
    assert "chatter from predict" in proc.stderr and "raw chatter on fd 1" in proc.stderr


def test_model_sleeping_past_the_deadline_is_killed_with_its_children(tmp_path: Path) -> None:
    model, golden = models.make_sleepy_model(tmp_path, ms=60_000, spawn_child=True)
    started = time.monotonic()
    result, proc = run_local(tmp_path, model, "joblib", golden, deadline_s=3.0)
    assert time.monotonic() - started < 20
    assert proc.returncode == -9  # the watchdog's SIGKILL of its own group
    assert result.error and result.error["type"] == "DeadlineExceeded"
    assert not by_name(gates(result, {}))["run"].passed
    time.sleep(0.2)
    assert processes_mentioning(str(model)) == []  # the model's child died with the group


@pytest.mark.parametrize(("request_", "words"), [
    ({"model_path": "x", "format": "onnx", "golden_path": "g"}, "unknown format 'onnx'"),
    ({"model_path": "x", "format": "joblib"}, "request lacks golden_path"),
    ({"model_path": "x", "format": "joblib", "golden_path": "g", "deadline_s": "soon"},
     "deadline_s must be float >= 0.1, not 'soon'"),
    ({"model_path": "x", "format": "joblib", "golden_path": "g", "batch_size": 0},
     "batch_size must be int >= 1, not 0"),
])
def test_bad_request_is_one_json_line_and_exit_2(
        request_: dict[str, Any], words: str, tmp_path: Path) -> None:
    path = tmp_path / "req.json"
    path.write_text(json.dumps(request_))
    proc = subprocess.run([SYSTEM_PYTHON, str(RUNNER), str(path)], capture_output=True,
                          text=True, start_new_session=True, timeout=60)
    assert proc.returncode == 2
    result = parse_result("local", proc.stdout)
    assert result.error and result.error["phase"] == "request"
    assert words in result.error["message"]


def test_runner_is_stdlib_only_at_top_level_and_py39_syntax(tmp_path: Path) -> None:
    # the runner and the modules it imports (the format registry: formats*.py)
    parts = sorted([*RUNNER.parent.glob("warmup*.py"), *RUNNER.parent.glob("formats*.py")])
    assert {p.name for p in parts} >= {"warmup.py", "warmup_env.py", "warmup_golden.py",
                                       "formats.py", "formats_base.py"}
    for part in parts:
        ast.parse(part.read_text(), feature_version=(3, 9))
    model, golden = models.make_raising_model(tmp_path)  # any path: numpy is missing first
    path = tmp_path / "req.json"
    path.write_text(WarmupRequest(str(model), "joblib", str(golden)).to_json())
    proc = subprocess.run([SYSTEM_PYTHON, str(RUNNER), str(path)], capture_output=True, text=True,
                          start_new_session=True, timeout=60)  # a host's python3: no numpy
    result = parse_result("local", proc.stdout)
    assert proc.returncode == 1 and result.error is not None
    assert result.error["type"] == "ModuleNotFoundError" and "numpy" in result.error["message"]
    assert result.environment["executable"] == SYSTEM_PYTHON


def test_dlopen_failures_on_stderr_are_named_in_the_gpu_verdict() -> None:
    runner: Any = importlib.import_module("orchestrator.hosts.remote.warmup")
    channel = runner.Channel()
    with tempfile.TemporaryFile() as log:
        log.write(b"2026 W dso_loader.cc:64] Could not load dynamic library 'libcudnn.so.9';"
                  b" dlerror: libcudnn.so.9: cannot open shared object file\nother line\n")
        log.flush()
        channel.log = log
        read_fd, channel.out_fd = os.pipe()
        result = {"schema": 1, "ok": False, "phase": "done", "error": None, "findings": [],
                  "gpu": {"required": True, "checked": True, "ok": False,
                          "message": "model does not run on a GPU: GPUs listed: none"}}
        assert channel.emit(result) and not channel.emit(result)  # once only
    os.close(channel.out_fd)
    with os.fdopen(read_fd) as pipe:
        parsed = parse_result("h", pipe.read())
    assert parsed.gpu is not None
    assert parsed.gpu["missing_libraries"] == [
        "2026 W dso_loader.cc:64] Could not load dynamic library 'libcudnn.so.9'; dlerror: "
        "libcudnn.so.9: cannot open shared object file"]
    gate = by_name(gates(parsed, {}))["gpu"]
    assert not gate.passed and "Could not load dynamic library 'libcudnn.so.9'" in gate.message


# ---------------------------------------------------------------- over SSH, on the testbed

@pytest.fixture(scope="module")
def h100(testbed: Testbed) -> Iterator[tuple[ssh.SshTransport, RemoteTools]]:
    """A connection to an h100-profile host, with the tools shipped."""
    inventory = load_inventory(testbed.inventory_path)
    host = inventory.hosts[next(h.name for h in testbed.hosts if h.profile == "h100")]
    with ssh.connect(host, ssh.SshOptions.for_inventory(inventory)) as t:
        yield t, ensure_tools(t, host.deploy_root)


def test_over_ssh_joblib_passes_with_nvml_memory_and_fingerprint_diff(
        h100: tuple[ssh.SshTransport, RemoteTools], built: Path, tmp_path: Path) -> None:
    transport, tools = h100
    model, golden = models.make_joblib(built / "jl-ssh")
    request = WarmupRequest(str(model), "joblib", str(golden), method="predict_proba",
                            iterations=50)
    result = run_warmup(transport, VENV_PYTHON, tools, request, timeout=120,
                        workdir=str(tmp_path))
    assert result.host == transport.host and passed(gates(result, {})), gates(result, {})
    assert isinstance(result.gpu_memory_peak_bytes, int)  # the fake NVML, through pynvml.py
    assert result.environment["gpu"]["driver"], result.environment["gpu"]
    diffs = fingerprint.report(fingerprint.read_fingerprint(golden), result.environment)
    assert any(line.startswith("gpu:driver: recorded with none, host has ") for line in diffs)
    assert list(tmp_path.iterdir()) == []  # request and pid file removed


def test_over_ssh_deadline_kills_the_remote_group(
        h100: tuple[ssh.SshTransport, RemoteTools], tmp_path: Path) -> None:
    transport, tools = h100
    model, golden = models.make_sleepy_model(tmp_path / "m", ms=60_000, spawn_child=True)
    request = WarmupRequest(str(model), "joblib", str(golden), deadline_s=3)
    started = time.monotonic()
    result = run_warmup(transport, VENV_PYTHON, tools, request, timeout=60,
                        workdir=str(tmp_path))
    assert time.monotonic() - started < 30
    assert result.error and result.error["type"] == "DeadlineExceeded"
    time.sleep(0.2)
    assert processes_mentioning(str(model)) == []
    assert processes_mentioning(str(tmp_path)) == []


def test_over_ssh_gpu_required_fails_naming_what_tensorflow_saw(
        h100: tuple[ssh.SshTransport, RemoteTools], built: Path, tmp_path: Path) -> None:
    transport, tools = h100
    model, golden = models.make_keras(built / "keras")
    request = WarmupRequest(str(model), "keras", str(golden), gpu_required=True, iterations=50)
    result = run_warmup(transport, VENV_PYTHON, tools, request, timeout=180,
                        workdir=str(tmp_path))
    got = by_name(gates(result, {"latency_ms": {"p99": 1000}}))
    assert [n for n, g in got.items() if not g.passed] == ["gpu"]  # Keras loads, golden passes
    message = got["gpu"].message
    assert "built with CUDA False" in message and "GPUs listed: none" in message
    assert "device:CPU:0" in message


def test_over_ssh_the_runner_sees_exactly_the_placed_gpus(
        testbed: Testbed, h100: tuple[ssh.SshTransport, RemoteTools], built: Path,
        tmp_path: Path) -> None:
    """Placement's CUDA_VISIBLE_DEVICES (by UUID) reaches the runner: NVML, which ignores the
    variable, is asked for exactly those GPUs, in that order."""
    transport, tools = h100
    host = transport.host
    uuids = [gpu_profiles.gpu_uuid(host, i, "NVIDIA H100 80GB HBM3") for i in (4, 1)]
    model, golden = models.make_joblib(built / "jl-gpus")
    request = WarmupRequest(str(model), "joblib", str(golden), method="predict_proba",
                            iterations=10)
    with testbed.profile(host, "multi-gpu"):
        result = run_warmup(transport, VENV_PYTHON, tools, request, timeout=120,
                            workdir=str(tmp_path), visible_devices=",".join(uuids))
    assert result.raw["gpu_memory"]["uuids"] == uuids, result.raw["gpu_memory"]
    assert len(result.raw["gpu_memory"]["devices"]) == 2


@pytest.mark.parametrize(("expected", "got", "message"), [
    ({"": [[1.0, 2.0], [3.0, 4.0]]}, {"": [[1.0, float("nan")], [3.0, 4.5]]},
     "outputs: 2 of 2 samples differ; worst: #0 expected 2 got nan (|diff| nan), "
     "#1 expected 4 got 4.5 (|diff| 0.5)"),
    ({"": ["a", "b", "c"]}, {"": ["a", "x", "c"]},
     "outputs: 1 of 3 samples differ; worst: #1 expected 'b' got 'x'"),
    ({"": [1, 2, 3]}, {"y": [1, 2, 3], "z": [1]},
     "outputs: missing from the model's outputs (has: y, z)"),
    ({"": [1, 2, 3]}, {"": [1, 2]}, "outputs: shape [2], golden has [3]"),
    ({"": [1.0, 2.0]}, {"": [1.0 + 1e-9, 2.0]}, "all 2 samples match"),
    ({"p": [0.5]}, {"": [0.5]}, "all 1 samples match"),  # one named golden, one unnamed output
])
def test_golden_comparison_edge_cases(expected: dict[str, Any], got: dict[str, Any],
                                      message: str) -> None:
    import numpy as np

    runner: Any = importlib.import_module("orchestrator.hosts.remote.warmup_golden")
    out = runner.compare_golden({k: np.array(v) for k, v in expected.items()},
                                {k: np.array(v) for k, v in got.items()}, 1e-5, 1e-6)
    assert out["message"] == message
    json.dumps(out, allow_nan=False)  # what the runner prints is strict JSON


def test_missing_golden_file_is_named_and_not_blamed_on_the_model(
        built: Path, tmp_path: Path) -> None:
    model, _ = models.make_joblib(built / "jl-nogolden")
    result, proc = run_local(tmp_path, model, "joblib", tmp_path / "absent.npz")
    got = by_name(gates(result, {}))
    assert proc.returncode == 1 and result.error and result.error["phase"] == "read-golden"
    assert "absent.npz" in got["run"].message and "FileNotFoundError" in got["run"].message
    assert got["load"].message == "model not loaded (runner stopped during read-golden)"


def test_request_sys_path_lets_a_pickle_find_its_module(tmp_path: Path) -> None:
    model_dir, golden = models.make_sleepy_model(tmp_path, ms=0)
    lib = tmp_path / "lib"  # the estimator's module, apart from the model file
    lib.mkdir()
    (model_dir / "sleepy_model.py").rename(lib / "sleepy_model.py")
    model = model_dir / "model.joblib"  # a file: its directory does not go on sys.path
    without, _ = run_local(tmp_path, model, "joblib", golden, iterations=5)
    assert without.error and without.error["type"] == "ModuleNotFoundError", without.error
    result, proc = run_local(tmp_path, model, "joblib", golden, iterations=5,
                             sys_path=(str(lib),))
    assert proc.returncode == 0 and result.error is None, result.error
    assert passed(gates(result, {})), gates(result, {})
