"""The spec models and `load_spec`: defaults, resolved paths, digest, errors with line and field."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.spec import Spec, load_spec

GOOD = """\
apiVersion: orchestrator/v1
kind: Deployment
name: fraud-detector
model:
  path: models/fraud.joblib
  format: joblib
  sha256: 9f2c000000000000000000000000000000000000000000000000000000000000
environment:
  python: "3.11"
  requirements: requirements.lock
  wheelhouse: wheels/
gpu:
  required: false
targets: [gpu-01, inference, zone=a]
verify:
  golden: golden.npz
  rtol: 1.0e-5
  atol: 1.0e-6
  latency_ms: {p50: 5, p95: 10, p99: 20}
  timeout_s: 600
service: {restart: "systemctl restart fraud-detector", health_url: "http://127.0.0.1:8501/healthz"}
reverify: {every: 6h}
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_spec_loads_with_defaults_paths_and_digest(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    spec = load_spec(path)
    assert isinstance(spec, Spec)
    assert spec.name == "fraud-detector"
    assert spec.model.format == "joblib"
    assert spec.verify.rtol == 1e-5 and spec.verify.iterations == 200
    assert spec.verify.signature == "serving_default" and spec.verify.method == "predict"
    assert spec.verify.allow_version_mismatch is False
    assert spec.verify.latency_ms is not None and spec.verify.latency_ms.p95 == 10.0
    assert spec.rollout.on_failure == "rollback" and spec.rollout.max_parallel == 16
    assert spec.release.keep == 5
    assert spec.reverify is not None and spec.reverify.every_s == 6 * 3600
    assert spec.reverify.on_failure == "report"
    assert spec.service is not None and spec.service.health_timeout_s == 30
    root = tmp_path.resolve()
    assert spec.dir == root
    assert spec.paths.model == root / "models" / "fraud.joblib"
    assert spec.paths.requirements == root / "requirements.lock"
    assert spec.paths.golden == root / "golden.npz"
    assert spec.paths.wheelhouse == root / "wheels"
    assert spec.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert spec.file == str(path)


def test_minimal_spec_gets_defaults(tmp_path: Path) -> None:
    text = "\n".join(line for line in GOOD.splitlines()
                     if not line.startswith(("gpu:", "  required", "service", "reverify",
                                             "  wheelhouse")))
    spec = load_spec(write(tmp_path, text))
    assert spec.gpu.required is False and spec.gpu.count == 1
    assert spec.service is None and spec.reverify is None
    assert spec.paths.wheelhouse is None


def replace(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


BAD = [
    # (spec text, line, field, message fragment)
    (replace("name: fraud-detector", "name: fraud;rm -rf /"), 3, "name", "pattern"),
    (replace("name: fraud-detector", "name: ../etc"), 3, "name", "pattern"),
    (replace("name: fraud-detector", "name: Fraud"), 3, "name", "pattern"),
    (replace("path: models/fraud.joblib", "path: ../models/fraud.joblib"), 5, "model.path",
     "'..'"),
    (replace("path: models/fraud.joblib", "path: /etc/passwd"), 5, "model.path", "pattern"),
    (replace("path: models/fraud.joblib", "path: 'm$(reboot)'"), 5, "model.path", "pattern"),
    (replace("golden: golden.npz", "golden: a/../../g.npz"), 16, "verify.golden", "'..'"),
    (replace("format: joblib", "format: pickle"), 6, "model.format", "tensorflow-savedmodel"),
    (replace("sha256: 9f2c", "sha256: 9F2C"), 7, "model.sha256", "pattern"),
    (replace('python: "3.11"', "python: 3.11"), 9, "environment.python", "got float 3.11"),
    (replace("rtol: 1.0e-5", "rtol: .nan"), 17, "verify.rtol", "finite"),
    (replace("atol: 1.0e-6", "atol: .inf"), 18, "verify.atol", "finite"),
    (replace("timeout_s: 600", "timeout_s: -1"), 20, "verify.timeout_s", "greater than 0"),
    (replace("timeout_s: 600", "timeout_s: '600'"), 20, "verify.timeout_s", "valid number"),
    (replace("required: false", "required: 'no'"), 13, "gpu.required", "valid boolean"),
    (replace("required: false", "required: false\n  count: true"), 14, "gpu.count",
     "valid integer"),
    (replace("  rtol: 1.0e-5", "  rtol: 1.0e-5\n  colour: red"), 18, "verify.colour",
     "unknown field"),
    (replace("targets: [gpu-01", "targets: ['gpu-01 && reboot'"), 14, "targets[0]", "pattern"),
    (replace("targets: [gpu-01, inference, zone=a]", "targets: []"), 14, "targets",
     "at least 1"),
    (replace("{p50: 5, p95: 10, p99: 20}", "{p50: 50, p95: 10}"), 19, "verify.latency_ms",
     "p50 <= p95"),
    (replace("every: 6h", "every: 5s"), 22, "reverify.every", "between 1m"),
    (replace("health_url: \"http", "health_command: x, health_url: \"http"), 21, "service",
     "not both"),
    (replace("apiVersion: orchestrator/v1", "apiVersion: orchestrator/v2"), 1, "apiVersion",
     "orchestrator/v1"),
    (replace("  golden: golden.npz\n", ""), 15, "verify.golden", "required"),
    (replace("kind: Deployment", "kind: Deployment\nkind: Job"), 3, "kind", "duplicate key"),
]


@pytest.mark.parametrize("text, line, field, needle", BAD)
def test_bad_specs_name_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, needle: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err = info.value
    assert (err.file, err.line, err.field) == (str(path), line, field), str(err)
    assert needle in str(err)


def test_symlink_escaping_the_spec_folder_is_refused(tmp_path: Path) -> None:
    spec_dir = tmp_path / "app"
    (spec_dir / "models").mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    os.symlink(tmp_path / "secret", spec_dir / "models" / "fraud.joblib")
    with pytest.raises(SpecError) as info:
        load_spec(write(spec_dir, GOOD))
    assert info.value.line == 5 and info.value.field == "model.path"
    assert "outside the spec's folder" in str(info.value)


def test_symlink_inside_the_folder_is_resolved(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "v3.joblib").write_text("x")
    os.symlink(tmp_path / "store", tmp_path / "models")
    os.symlink("v3.joblib", tmp_path / "store" / "fraud.joblib")
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.paths.model == tmp_path.resolve() / "store" / "v3.joblib"


def test_size_limit_is_configurable(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    with pytest.raises(SpecError, match="more than the limit of 100"):
        load_spec(path, max_bytes=100)
