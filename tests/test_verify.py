"""The pure side of verification: request from a real spec, result parsing, gates, fingerprints."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core import fingerprint
from orchestrator.core.facts import parse_facts
from orchestrator.core.gates import (
    Gate,
    WarmupRequest,
    failures,
    gates,
    parse_result,
    passed,
    result_from_raw,
)
from orchestrator.core.lockfile import load_lock
from orchestrator.core.spec import Spec, load_spec
from orchestrator.errors import BadHostOutput

SPEC = """\
apiVersion: orchestrator/v1
kind: Deployment
name: demo
model: {path: model.joblib, format: joblib, sha256: %s}
environment: {python: "3.11", requirements: requirements.lock}
gpu: {required: %s}
targets: [h]
verify:
  golden: golden.npz
  rtol: 1.0e-4
  iterations: 50
  batch_size: 4
  method: predict_proba
  timeout_s: 90
  %s
"""


def spec(tmp_path: Path, verify_extra: str = "", gpu: bool = False) -> Spec:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC % ("9f2c" + "0" * 60, str(gpu).lower(), verify_extra))
    return load_spec(path)


GOOD: dict[str, Any] = {
    "schema": 1, "ok": True, "phase": "done", "error": None, "duration_s": 3.2,
    "load": {"ok": True, "seconds": 1.5, "error": None},
    "findings": [], "warnings": [],
    "golden": {"ok": True, "samples": 32, "mismatched": 0, "rtol": 1e-5, "atol": 1e-6,
               "message": "all 32 samples match", "outputs": {}},
    "gpu": {"required": False, "ok": None, "message": "not applicable: joblib runs on the CPU"},
    "latency": {"samples": 200, "batch_size": 1, "cold_start_ms": 3.0, "p50_ms": 1.0,
                "p90_ms": 1.2, "p95_ms": 1.3, "p99_ms": 1.8, "max_ms": 2.5, "mean_ms": 1.05,
                "throughput_per_s": 950.0, "warmup_iterations": 20},
    "gpu_memory": {"peak_used_bytes": 1024, "before_used_bytes": 512, "devices": [1024]},
    "environment": {"python": "3.11.2", "frameworks": {"scikit-learn": "1.9.1"}},
}


def with_(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(GOOD)
    raw.update(changes)
    return raw


def by_name(gate_list: list[Gate]) -> dict[str, Gate]:
    return {g.name: g for g in gate_list}


def test_request_from_a_real_spec(tmp_path: Path) -> None:
    req = WarmupRequest.from_spec(spec(tmp_path, gpu=True), model_path="/r/model",
                                  golden_path="/r/golden.npz")
    data = json.loads(req.to_json())
    assert data["format"] == "joblib" and data["method"] == "predict_proba"
    assert data["gpu_required"] is True and data["deadline_s"] == 90
    assert (data["rtol"], data["iterations"], data["batch_size"]) == (1e-4, 50, 4)
    assert data["model_path"] == "/r/model" and data["golden_path"] == "/r/golden.npz"
    assert WarmupRequest.from_spec(spec(tmp_path), model_path="m", golden_path="g",
                                   deadline_s=12).deadline_s == 12


def test_good_result_passes_every_gate(tmp_path: Path) -> None:
    s = spec(tmp_path, "latency_ms: {p50: 5, p95: 10, p99: 20}\n  min_throughput: 100")
    result = parse_result("h1", "noise before\n" + json.dumps(GOOD) + "\n")
    got = gates(result, s.verify)
    assert passed(got), failures(got)
    names = [g.name for g in got]
    assert names == ["run", "load", "golden", "version", "gpu", "samples", "latency:p50",
                     "latency:p95", "latency:p99", "throughput"]
    assert result.latency is not None and result.latency.p99_ms == 1.8
    assert result.gpu_memory_peak_bytes == 1024 and result.raw == GOOD


def test_latency_limit_fails_with_the_measured_figure(tmp_path: Path) -> None:
    got = by_name(gates(result_from_raw("h1", GOOD), spec(tmp_path, "latency_ms: {p99: 0.001}")
                        .verify))
    assert not got["latency:p99"].passed
    assert got["latency:p99"].message == "p99 1.800 ms > limit 0.001 ms"


def test_throughput_floor(tmp_path: Path) -> None:
    got = by_name(gates(result_from_raw("h1", GOOD), spec(tmp_path, "min_throughput: 5000")
                        .verify))
    assert not got["throughput"].passed
    assert "950.0/s < minimum 5000/s" in got["throughput"].message


def test_zero_samples_fails(tmp_path: Path) -> None:
    raw = with_(latency={"samples": 0, "cold_start_ms": 2.0})
    got = by_name(gates(result_from_raw("h1", raw), spec(tmp_path, "latency_ms: {p50: 5}").verify))
    assert not got["samples"].passed and "zero timed samples" in got["samples"].message
    assert "latency:p50" not in got


def test_load_failure_names_the_exception(tmp_path: Path) -> None:
    err = {"type": "ValueError", "message": "invalid literal", "phase": "load"}
    unchecked = {"required": False, "checked": False, "ok": None, "message": "not checked"}
    raw = with_(ok=False, phase="load", error=err, golden=None, gpu=unchecked, latency=None,
                load={"ok": False, "seconds": 0.1, "error": err})
    got = gates(result_from_raw("h1", raw), spec(tmp_path).verify)
    bad = {g.name for g in got if not g.passed}
    assert bad == {"run", "load", "golden", "samples"}  # GPU: not required, so not a failure
    assert by_name(got)["load"].message == "model failed to load: ValueError: invalid literal"
    raw["gpu"] = dict(unchecked, required=True)
    gpu = by_name(gates(result_from_raw("h1", raw), spec(tmp_path, gpu=True).verify))["gpu"]
    assert not gpu.passed and gpu.message == "GPU required but not checked (runner stopped " \
                                             "during load)"


def test_golden_mismatch_is_a_failed_gate(tmp_path: Path) -> None:
    golden = {"ok": False, "samples": 32, "mismatched": 3, "rtol": 1e-5, "atol": 1e-6,
              "message": "outputs: 3 of 32 samples differ; worst: #4 expected 0.5 got 0.7"}
    got = by_name(gates(result_from_raw("h1", with_(ok=False, golden=golden)), spec(tmp_path)
                        .verify))
    assert not got["golden"].passed and "3 of 32 samples differ" in got["golden"].message


def test_version_finding_fails_unless_allowed(tmp_path: Path) -> None:
    finding = {"kind": "sklearn-version-mismatch", "trained_with": "1.5.2", "running": "1.9.1",
               "message": "model pickled with scikit-learn 1.5.2, running 1.9.1"}
    result = result_from_raw("h1", with_(findings=[finding]))
    refused = by_name(gates(result, spec(tmp_path).verify))["version"]
    assert not refused.passed and "1.5.2" in refused.message and "1.9.1" in refused.message
    allowed = by_name(gates(result, spec(tmp_path, "allow_version_mismatch: true").verify))
    assert allowed["version"].passed


def test_gpu_required_but_not_used_fails_with_what_tensorflow_saw(tmp_path: Path) -> None:
    gpu = {"required": True, "ok": False, "gpus": [], "built_with_cuda": False,
           "message": "model does not run on a GPU: TensorFlow 2.21.0: built with CUDA False"}
    got = by_name(gates(result_from_raw("h1", with_(gpu=gpu)), spec(tmp_path, gpu=True).verify))
    assert not got["gpu"].passed and "built with CUDA False" in got["gpu"].message


def test_deadline_is_named(tmp_path: Path) -> None:
    err = {"type": "DeadlineExceeded", "phase": "golden", "message": "deadline of 3s exceeded"}
    got = by_name(gates(result_from_raw("h1", with_(ok=False, error=err, phase="golden")),
                        spec(tmp_path).verify))
    assert not got["run"].passed and "killed at the deadline during golden" in got["run"].message


def test_regression_against_baseline(tmp_path: Path) -> None:
    s = spec(tmp_path, "max_regression: 1.5")
    slow = copy.deepcopy(GOOD)
    slow["latency"].update(p50_ms=1.2, p95_ms=2.6, p99_ms=2.0)
    got = by_name(gates(result_from_raw("h1", slow), s.verify, baseline=GOOD))
    assert got["regression:p50"].passed and got["regression:p99"].passed
    assert not got["regression:p95"].passed
    assert "2.00x the baseline 1.300 ms (max 1.5x)" in got["regression:p95"].message
    first = by_name(gates(result_from_raw("h1", slow), s.verify, baseline=None))
    assert first["regression"].passed


@pytest.mark.parametrize("text", [
    "", "Traceback (most recent call last):\n  boom", '{"schema": 99}', "[1, 2]",
    json.dumps(with_(latency={"samples": "many"})), json.dumps(with_(findings="x")),
    json.dumps(with_(golden=[1])),
])
def test_garbage_is_bad_host_output(text: str) -> None:
    with pytest.raises(BadHostOutput) as exc:
        parse_result("gpu-07", text)
    assert exc.value.host == "gpu-07"


FP: dict[str, Any] = {
    "python": "3.11.7", "machine": "x86_64",
    "frameworks": {"tensorflow": "2.21.0", "numpy": "2.4.6", "keras": None},
    "packages": {"tensorflow": "2.21.0", "numpy": "2.4.6", "protobuf": "5.29.0", "pytest": "8"},
    "gpu": {"driver": "550.54.15", "cuda_driver": "12.4", "devices": [{"name": "H100"}]},
}


def test_fingerprint_diff_lists_what_differs() -> None:
    host = copy.deepcopy(FP)
    host.update(python="3.11.2")
    host["frameworks"]["numpy"] = "1.26.4"
    host["packages"].update(numpy="1.26.4", protobuf="4.25.1")
    del host["packages"]["pytest"]  # only in the training env: not a difference
    host["gpu"] = {"driver": "470.82.01", "cuda_driver": "11.4", "devices": [{"name": "T4"}]}
    lines = fingerprint.report(FP, host)
    assert lines == [
        "python: recorded with 3.11.7, host has 3.11.2",
        "framework:numpy: recorded with 2.4.6, host has 1.26.4",
        "gpu:driver: recorded with 550.54.15, host has 470.82.01",
        "gpu:cuda_driver: recorded with 12.4, host has 11.4",
        "gpu:devices: recorded with H100, host has T4",
        "package:protobuf: recorded with 5.29.0, host has 4.25.1",
    ]
    assert fingerprint.diff(FP, copy.deepcopy(FP)) == []
    assert fingerprint.report(None, FP) == [
        "the golden file carries no fingerprint: nothing to compare"]


def test_plan_view_of_a_host_from_facts_and_lock() -> None:
    fixtures = Path(__file__).parent / "fixtures"
    facts = parse_facts("gpu-09", (fixtures / "facts" / "old-driver.json").read_text())
    lock = load_lock(fixtures / "locks" / "tensorflow-cpu-2.21.lock")
    planned = fingerprint.planned_environment(facts, lock)
    assert planned["frameworks"]["tensorflow"] == "2.21.0"  # from tensorflow-cpu
    golden = copy.deepcopy(FP)
    golden["frameworks"]["tensorflow"] = "2.20.0"
    lines = fingerprint.report(golden, planned)
    assert "framework:tensorflow: recorded with 2.20.0, host has 2.21.0" in lines
    assert "gpu:driver: recorded with 550.54.15, host has 470.82.01" in lines
    assert "gpu:devices: recorded with H100, host has Tesla V100-SXM2-16GB" in lines
