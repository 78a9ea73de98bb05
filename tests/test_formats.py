"""The model-format registry (orchestrator/hosts/remote/formats.py) and everything that reads it:
the spec, `validate`, `golden record`, the fingerprint and the warmup runner accept exactly the
registry's formats, no other module spells the format list, and each format's own parts (shape
check, loader, GPU verdict) behave as the runner and `validate` rely on."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.app import build_parser
from orchestrator.cli.app import main as cli_main
from orchestrator.cli.commands.schema import spec_json_schema
from orchestrator.core import fingerprint, spec
from orchestrator.hosts.remote import formats
from orchestrator.hosts.remote.formats_base import ModelFormat
from tests import models

REPO = Path(__file__).resolve().parent.parent
REMOTE = REPO / "orchestrator" / "hosts" / "remote"
CORPUS = Path(__file__).resolve().parent / "corpus" / "specs"
PY39 = sorted(Path("/root/.pyenv/versions").glob("3.9.*/bin/python3"))


def test_the_registry_lists_each_format_once_with_what_the_others_need() -> None:
    assert formats.NAMES == ("tensorflow-savedmodel", "keras", "joblib")
    assert len(set(formats.NAMES)) == len(formats.FORMATS)
    for fmt in formats.FORMATS:
        assert fmt.summary and fmt.frameworks and callable(fmt.load)
        assert formats.get(fmt.name) is fmt
    with pytest.raises(ValueError) as exc:
        formats.get("onnx")
    assert str(exc.value) == f"unknown model format 'onnx' (one of {', '.join(formats.NAMES)})"


# ---------------------------------------------------------------- every reader reads it

def test_spec_accepts_exactly_the_registry_formats() -> None:
    field = spec_json_schema()["$defs"]["ModelSection"]["properties"]["format"]
    assert field["enum"] == list(formats.NAMES)
    assert field["description"] == f"How the model is loaded: {formats.summary()}."
    assert spec.FORMATS == formats.NAMES


def test_a_spec_with_another_format_is_refused_listing_the_registry(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["validate", str(CORPUS / "bad-format.yaml")])
    *first, last = [f"'{name}'" for name in formats.NAMES]
    assert code == 2
    assert f"model.format: Input should be {', '.join(first)} or {last}\n" in \
        capsys.readouterr().err


def test_golden_record_offers_exactly_the_registry_formats() -> None:
    parser = build_parser()
    base = ["golden", "record", "--model", "m", "--inputs", "i.npz", "-o", "g.npz"]
    for name in formats.NAMES:
        assert parser.parse_args([*base, "--format", name]).format == name
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--format", "onnx"])


def test_validate_asks_the_registry_for_the_model_shape(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real = formats.get("joblib")
    fake = ModelFormat(name=real.name, summary=real.summary, frameworks=real.frameworks,
                       shape_problem=lambda path: "shape says no", load=real.load)
    monkeypatch.setattr(formats, "get", lambda name: fake)
    assert cli_main(["validate", str(CORPUS / "good.yaml")]) == 2
    assert "model.format: " in capsys.readouterr().err
    monkeypatch.undo()
    assert cli_main(["validate", str(CORPUS / "good.yaml")]) == 0


def test_warmup_runner_accepts_exactly_the_registry_formats(tmp_path: Path) -> None:
    runner: Any = importlib.import_module("orchestrator.hosts.remote.warmup")
    path = tmp_path / "request.json"
    for name in (*formats.NAMES, "onnx"):
        path.write_text(json.dumps({"model_path": "m", "format": name, "golden_path": "g"}))
        if name == "onnx":
            with pytest.raises(runner.BadRequest) as exc:
                runner.read_request(str(path))
            assert str(exc.value).endswith(f"(one of {', '.join(formats.NAMES)})")
        else:
            assert runner.read_request(str(path))["format"] == name


def test_fingerprints_record_the_registry_frameworks() -> None:
    env: Any = importlib.import_module("orchestrator.hosts.remote.warmup_env")
    assert fingerprint.FRAMEWORKS == env.FRAMEWORKS == formats.FRAMEWORKS
    assert formats.FRAMEWORKS == ("tensorflow", "keras", "scikit-learn", "numpy", "joblib")
    assert all(set(f.frameworks) <= set(formats.FRAMEWORKS) for f in formats.FORMATS)


def test_docs_name_every_format() -> None:
    row = next(line for line in (REPO / "docs" / "spec.md").read_text().splitlines()
               if line.startswith("| `model.format`"))
    assert all(f"`{name}`" in row for name in formats.NAMES), row


def _spelled(node: ast.AST) -> list[str]:
    return [e.value for e in ast.walk(node)
            if isinstance(e, ast.Constant) and e.value in formats.NAMES]


def test_no_module_but_the_registry_spells_the_format_list_or_dispatches_on_a_name() -> None:
    """A collection of two or more format names anywhere is the list spelled again; comparing
    with a format name is a dispatch the format's own module should hold. bench/ and demo.py
    build example specs of one chosen format: their comparisons pick examples."""
    found = []
    for path in sorted((REPO / "orchestrator").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if path.parent == REMOTE and path.name.startswith("formats"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Subscript)) \
                    and len(_spelled(node)) >= 2:
                found.append(f"{rel}:{node.lineno} lists {_spelled(node)}")
            if isinstance(node, ast.Compare) and _spelled(node) \
                    and not rel.startswith(("orchestrator/bench/", "orchestrator/demo.py")):
                found.append(f"{rel}:{node.lineno} compares with {_spelled(node)}")
    assert found == []


# ---------------------------------------------------------------- host-side: 3.9, stdlib

def test_registry_modules_are_python39_stdlib_only_and_import_each_other_only() -> None:
    files = sorted(REMOTE.glob("formats*.py"))
    siblings = {p.stem for p in files}
    for path in files:
        tree = ast.parse(path.read_text(), feature_version=(3, 9))
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                    for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom) and n.module}
        assert imported <= set(sys.stdlib_module_names) | {"__future__"} | siblings, path.name


@pytest.mark.skipif(not PY39, reason="no Python 3.9 on this machine")
def test_registry_imports_flat_on_python39_as_on_a_host() -> None:
    code = "import formats; print(','.join(formats.NAMES))"
    out = subprocess.run([str(PY39[-1]), "-E", "-c", code], cwd=REMOTE, capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.strip() == ",".join(formats.NAMES)


# ---------------------------------------------------------------- each format's parts

def test_shape_checks(tmp_path: Path) -> None:
    empty_dir, saved, blob = tmp_path / "d", tmp_path / "saved", tmp_path / "blob"
    empty_dir.mkdir()
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"graph")
    blob.write_bytes(b"not a model archive")
    keras_zip, h5 = tmp_path / "model.keras", tmp_path / "model.h5"
    with zipfile.ZipFile(keras_zip, "w") as z:
        z.writestr("config.json", "{}")
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 8)

    def shape(name: str, path: Path) -> str | None:
        return formats.get(name).shape_problem(str(path))

    assert shape("tensorflow-savedmodel", blob) == "a tensorflow-savedmodel must be a directory"
    assert shape("tensorflow-savedmodel", empty_dir) == \
        "no saved_model.pb in this tensorflow-savedmodel directory"
    assert shape("tensorflow-savedmodel", saved) is None
    assert shape("keras", empty_dir) == "a keras model must be a file"
    assert shape("keras", blob) == \
        "not a Keras model: neither a .keras archive (zip) nor an HDF5 .h5 file"
    assert shape("keras", keras_zip) is None and shape("keras", h5) is None
    assert shape("joblib", empty_dir) == "a joblib model must be a file"
    assert shape("joblib", blob) is None


def test_joblib_loads_runs_and_says_it_runs_on_the_cpu(tmp_path: Path) -> None:
    model_path, _ = models.make_joblib(tmp_path)
    model = formats.get("joblib").load(str(model_path), "serving_default", "predict_proba")
    inputs = {"": models.sample_inputs(4)}
    out = model.run(model.prepare(inputs))
    assert list(out) == [""] and out[""].shape == (4, models.CLASSES)
    assert model.findings == []
    verdict = model.gpu(model.prepare(inputs), True)
    assert verdict == {"required": True, "checked": True, "ok": None,
                       "message": "not applicable: joblib runs on the CPU"}
