"""The spec models and `load_spec`: defaults, resolved paths, digest, errors with line and field."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from orchestrator.cli.app import main
from orchestrator.cli.commands.schema import schema_field_paths, spec_json_schema
from orchestrator.core.spec import Spec, load_spec
from orchestrator.errors import SpecError

REPO = Path(__file__).resolve().parent.parent
FIXTURE_WHEELS = REPO / "tests" / "fixtures" / "locks" / "small" / "wheelhouse"

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


@pytest.mark.parametrize("method", ["predict", "decision_function", "__call__"])
def test_a_joblib_model_may_name_any_public_method_or_be_called(
        tmp_path: Path, method: str) -> None:
    text = GOOD.replace("timeout_s: 600", f"timeout_s: 600\n  method: {method}")
    assert load_spec(write(tmp_path, text)).verify.method == method


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


def test_a_wheel_source_is_an_index_unless_it_says_directory(tmp_path: Path) -> None:
    text = replace("wheels/", "wheels/\n  wheel_source: {url: 'https://pypi.corp/simple/'}")
    source = load_spec(write(tmp_path, text)).environment.wheel_source
    assert source is not None and source.layout == "index"
    assert source.url == "https://pypi.corp/simple/"


def replace(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


BAD = [
    # (spec text, line, field, message fragment)
    (replace("name: fraud-detector", "name: fraud;rm -rf /"), 3, "name", "must be"),
    (replace("name: fraud-detector", "name: ../etc"), 3, "name", "must be"),
    (replace("name: fraud-detector", "name: Fraud"), 3, "name", "must be"),
    (replace("path: models/fraud.joblib", "path: ../models/fraud.joblib"), 5, "model.path",
     "'..'"),
    (replace("path: models/fraud.joblib", "path: /etc/passwd"), 5, "model.path", "must be"),
    (replace("path: models/fraud.joblib", "path: 'm$(reboot)'"), 5, "model.path", "must be"),
    (replace("golden: golden.npz", "golden: a/../../g.npz"), 16, "verify.golden", "'..'"),
    (replace("format: joblib", "format: pickle"), 6, "model.format", "tensorflow-savedmodel"),
    (replace("sha256: 9f2c", "sha256: 9F2C"), 7, "model.sha256", "must be"),
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
    (replace("targets: [gpu-01", "targets: ['gpu-01 && reboot'"), 14, "targets[0]", "must be"),
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
    (replace("timeout_s: 600", "timeout_s: 600\n  method: _fit"), 21, "verify.method",
     "should match"),
    (replace("timeout_s: 600", "timeout_s: 600\n  method: 'predict; reboot'"), 21,
     "verify.method", "should match"),
    (replace("kind: Deployment", "kind: Deployment\nkind: Job"), 3, "kind", "duplicate key"),
    # issue 15: the hosts' wheel mirror
    (replace("wheels/", "wheels/\n  wheel_source: {url: 'http://u:pw@mirror/simple/'}"), 12,
     "environment.wheel_source.url", "carries credentials"),
    (replace("wheels/", "wheels/\n  wheel_source: {url: 'ftp://mirror/simple/'}"), 12,
     "environment.wheel_source.url", "http:// or https://"),
    (replace("wheels/", "wheels/\n  wheel_source: {url: 'http://m/', layout: flat}"), 12,
     "environment.wheel_source.layout", "'index' or 'directory'"),
    (replace("wheels/", "wheels/\n  wheel_source: {layout: index}"), 12,
     "environment.wheel_source.url", "required"),
    (replace("wheels/", "wheels/\n  wheel_source: {url: 'http://m/'}\n"
                        "  image_base: {archive: base.tar, sha256: '%s'}" % ("a" * 64)), 8,
     "environment", "does not go with image_base"),
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


# --- the corpus: every bad spec through the real CLI -------------------------------------------

CORPUS = Path(__file__).resolve().parent / "corpus" / "specs"


def expectation(path: Path) -> tuple[int | None, str | None, str]:
    """`# expect: LINE FIELD | MESSAGE PART` from a corpus file's first line ("-" = none)."""
    head = path.read_text().splitlines()[0]
    assert head.startswith("# expect: "), path
    where, _, needle = head[len("# expect: "):].partition(" | ")
    line, field = where.split()
    return (None if line == "-" else int(line)), (None if field == "-" else field), needle


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("path", sorted(CORPUS.glob("bad-*.yaml")), ids=lambda p: p.stem)
def test_corpus_bad_spec_exits_2_naming_line_and_field(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line, field, needle = expectation(path)
    code, out, err = run_cli(["validate", str(path)], capsys)
    assert code == 2, err
    assert out == ""
    first = err.splitlines()[0]
    where = f"{path}:{line}: " + (f"{field}: " if field else "")
    assert first.startswith(f"error: {where}"), first
    assert needle in first, first


def test_corpus_good_spec_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["validate", str(CORPUS / "good.yaml")], capsys)
    assert (code, err) == (0, "")
    assert out.count("\n") == 1 and "valid: fraud-detector" in out and "2 locked packages" in out


def test_real_cli_process_exit_codes(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "orchestrator"
    good = subprocess.run([exe, "validate", CORPUS / "good.yaml"], capture_output=True,
                          text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    bad = subprocess.run([exe, "validate", CORPUS / "bad-rtol-nan.yaml"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (f"error: {CORPUS / 'bad-rtol-nan.yaml'}:20: verify.rtol: "
                                  "Input should be a finite number")


def copy_good(tmp_path: Path) -> Path:
    for name in ("good.yaml", "model.joblib", "requirements.lock", "golden.npz"):
        shutil.copy(CORPUS / name, tmp_path / name)
    return tmp_path / "good.yaml"


def test_validate_reports_every_problem_with_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = copy_good(tmp_path)
    (tmp_path / "model.joblib").write_bytes(b"retrained")
    (tmp_path / "requirements.lock").write_text("six>=1\n")
    with open(tmp_path / "golden.npz", "r+b") as fh:  # truncate the archive: a bad .npz
        fh.truncate(100)
    code, _, err = run_cli(["validate", str(spec)], capsys)
    assert code == 2
    lines = err.splitlines()
    assert f"{spec}:9: model.sha256: mismatch" in lines[0]
    assert "hashes to " + hashlib.sha256(b"retrained").hexdigest() in lines[0]
    assert f"{tmp_path / 'requirements.lock'}:1: six: loose pin" in lines[1]
    assert f"{spec}:18: verify.golden:" in lines[2] and "not a readable .npz" in lines[2]
    assert lines[-1] == f"{spec}: 3 problems"


def test_validate_reports_missing_files_at_their_spec_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = copy_good(tmp_path)
    for name in ("model.joblib", "requirements.lock", "golden.npz"):
        (tmp_path / name).unlink()
    code, _, err = run_cli(["validate", str(spec)], capsys)
    assert code == 2
    assert err.splitlines() == [
        f"error: {spec}:7: model.path: {tmp_path.resolve() / 'model.joblib'} does not exist",
        f"error: {spec}:12: environment.requirements: {tmp_path.resolve() / 'requirements.lock'}"
        " does not exist or is not a file",
        f"error: {spec}:18: verify.golden: {tmp_path.resolve() / 'golden.npz'} does not exist "
        "or is not a file",
        f"{spec}: 3 problems",
    ]


def test_validate_checks_the_wheelhouse(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    spec = copy_good(tmp_path)
    text = spec.read_text().replace("  requirements: requirements.lock\n",
                                    "  requirements: requirements.lock\n  wheelhouse: wheels\n")
    spec.write_text(text)
    shutil.copytree(FIXTURE_WHEELS, tmp_path / "wheels")
    code, _, err = run_cli(["validate", str(spec)], capsys)
    assert (code, err) == (0, ""), err
    (tmp_path / "wheels" / "extra-1.0-py3-none-any.whl").write_bytes(b"not locked")
    (tmp_path / "wheels" / "six-1.16.0-py2.py3-none-any.whl").unlink()
    code, _, err = run_cli(["validate", str(spec)], capsys)
    assert code == 2
    assert "extra-1.0-py3-none-any.whl: extra: wheel not named by the lock" in err
    assert "requirements.lock:4: six: no wheel in" in err


def test_validate_checks_targets_against_an_inventory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = copy_good(tmp_path)
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("hosts:\n  gpu-01: {address: 127.0.0.2, user: u, deploy_root: /srv}\n")
    code, _, err = run_cli(["validate", str(spec), "--inventory", str(inventory)], capsys)
    assert code == 2
    assert f"{spec}:15: targets[1]: unknown host or group 'inference' in {inventory}" in err


# --- generated hostile inputs --------------------------------------------------------------------

def test_yaml_bomb_is_refused_fast_and_small(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = write(tmp_path, "\n".join(lines) + "\n")  # 9**10 = 3.5 billion strings if expanded
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(SpecError) as info:
            load_spec(path)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "anchor &a0 is not allowed" in str(info.value) and info.value.line == 1
    assert elapsed < 0.1, elapsed
    assert peak < 50 * 2**20, peak
    code, _, err = run_cli(["validate", str(path)], capsys)
    assert code == 2 and f"{path}:1: YAML anchor" in err


def test_10000_deep_nesting_is_refused_without_recursion_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = write(tmp_path, "a: " + "[" * 10_000 + "]" * 10_000 + "\n", "flow.yaml")
    block = write(tmp_path, "- " * 10_000 + "x\n", "block.yaml")  # block style, one line
    for path in (deep, block):
        start = time.perf_counter()
        code, _, err = run_cli(["validate", str(path)], capsys)
        assert time.perf_counter() - start < 5
        assert code == 2 and "nesting deeper than 32 levels" in err, err
        assert f"{path}:" in err


def test_100_mb_file_is_refused_before_reading(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as fh:  # sparse: no disk used
        fh.truncate(100 * 2**20)
    start = time.perf_counter()
    code, _, err = run_cli(["validate", str(path)], capsys)
    assert time.perf_counter() - start < 1
    assert code == 2 and f"{path}: file is 104857600 bytes, more than the limit" in err


def test_symlink_escape_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    (tmp_path / "app").mkdir()
    spec = copy_good(tmp_path / "app")
    (tmp_path / "app" / "model.joblib").unlink()
    (tmp_path / "outside.joblib").write_bytes(b"x")
    os.symlink("../outside.joblib", tmp_path / "app" / "model.joblib")
    code, _, err = run_cli(["validate", str(spec)], capsys)
    assert code == 2 and f"{spec}:7: model.path: 'model.joblib' resolves to" in err
    assert "outside the spec's folder" in err


# --- docs: the committed JSON Schema is the models' ----------------------------------------------

def test_committed_json_schema_is_current() -> None:
    committed = json.loads((REPO / "docs" / "spec.schema.json").read_text())
    assert committed == spec_json_schema(), (
        "docs/spec.schema.json is stale: run `orchestrator schema > docs/spec.schema.json`")


def test_schema_command_prints_the_committed_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert printed == (REPO / "docs" / "spec.schema.json").read_text()
    assert json.loads(printed)["properties"]["verify"]["$ref"] == "#/$defs/Verify"


def test_docs_describe_every_field() -> None:
    doc = (REPO / "docs" / "spec.md").read_text()
    for path in schema_field_paths(spec_json_schema()):
        assert f"`{path}`" in doc, f"docs/spec.md does not document {path}"
