"""`orchestrator golden record|show` and fingerprints, with real scikit-learn models and files."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from orchestrator.cli import app as cli
from orchestrator.core import fingerprint
from orchestrator.errors import InvalidInput
from tests import models


def record(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["golden", "record", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_record_writes_inputs_outputs_and_fingerprint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_path, _ = models.make_joblib(tmp_path / "m")
    inputs = tmp_path / "in.npz"
    x = models.sample_inputs(10, seed=5)
    np.savez(inputs, inputs=x)
    out = tmp_path / "golden.npz"
    code, stdout, _ = record(capsys, "--model", str(model_path), "--format", "joblib",
                             "--inputs", str(inputs), "--method", "predict_proba", "-o", str(out))
    assert code == 0 and "10 samples" in stdout
    with np.load(out) as npz:
        assert sorted(npz.files) == ["__fingerprint__", "__golden__", "inputs", "outputs"]
        np.testing.assert_array_equal(npz["inputs"], x)
        expected = joblib.load(model_path).predict_proba(x)
        np.testing.assert_array_equal(npz["outputs"], expected)
        via_numpy = json.loads(str(npz["__fingerprint__"]))
    fp = fingerprint.read_fingerprint(out)  # read without numpy: same content
    assert fp == via_numpy
    assert fp is not None and fp["python"] == platform.python_version()
    assert fp["frameworks"]["scikit-learn"] == __import__("sklearn").__version__
    assert fp["packages"]["numpy"] == np.__version__ and "gpu" in fp
    meta = json.loads(fingerprint.read_npz_text(out, fingerprint.GOLDEN_META_KEY) or "{}")
    assert meta == {"schema": 1, "format": "joblib", "method": "predict_proba",
                    "signature": "serving_default"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".golden")] == []


def test_record_calls_a_callable_model_and_refuses_a_private_method(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_path, _ = models.make_polynomial(tmp_path / "m")
    inputs = tmp_path / "in.npz"
    np.savez(inputs, inputs=np.array([0.0, 0.5, 1.0]))
    out = tmp_path / "golden.npz"
    args = ("--model", str(model_path), "--format", "joblib", "--inputs", str(inputs),
            "-o", str(out))
    assert record(capsys, *args, "--method", "__call__")[0] == 0
    with np.load(out) as npz:
        np.testing.assert_array_equal(npz["outputs"], joblib.load(model_path)(npz["inputs"]))
    with pytest.raises(SystemExit) as exc:
        record(capsys, *args, "--method", "_fit")
    assert exc.value.code == 2 and "a public method name" in capsys.readouterr().err


def test_show_prints_the_fingerprint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, golden = models.make_joblib(tmp_path)
    assert cli.main(["golden", "show", str(golden)]) == 0
    out = capsys.readouterr().out
    assert f"python {platform.python_version()}" in out and "scikit-learn" in out
    assert cli.main(["golden", "show", "--json", str(golden)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["golden"]["format"] == "joblib" and shown["fingerprint"]["packages"]


def test_a_plain_npz_without_fingerprint_has_none(tmp_path: Path) -> None:
    path = tmp_path / "g.npz"
    np.savez(path, inputs=np.zeros((2, 2)), outputs=np.zeros(2))
    assert fingerprint.read_fingerprint(path) is None
    with pytest.raises(InvalidInput, match=r"not a readable \.npz"):
        fingerprint.read_fingerprint(Path(__file__))


@pytest.mark.parametrize("case", ["no-model", "raises", "ambiguous-inputs", "no-inputs-file"])
def test_bad_input_is_one_line_and_exit_2(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good_model, _ = models.make_joblib(tmp_path / "good")
    raising, _ = models.make_raising_model(tmp_path / "bad")
    inputs = tmp_path / "in.npz"
    np.savez(inputs, inputs=models.sample_inputs(4))
    ambiguous = tmp_path / "two.npz"
    np.savez(ambiguous, a=np.zeros((2, 4)), b=np.zeros((2, 4)))
    model, data, words = {
        "no-model": (tmp_path / "missing.joblib", inputs, "no such model"),
        "raises": (raising, inputs, "cannot run the model: ValueError: invalid literal"),
        "ambiguous-inputs": (good_model, ambiguous, "no inputs: use the key `inputs`"),
        "no-inputs-file": (good_model, tmp_path / "nope.npz", "no such inputs file"),
    }[case]
    out = tmp_path / "golden.npz"
    code, _, err = record(capsys, "--model", str(model), "--format", "joblib",
                          "--inputs", str(data), "-o", str(out))
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_record_refuses_a_model_pickled_by_another_sklearn(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uv = Path(sys.executable).parent / "uv"
    python = models.old_sklearn_python(tmp_path / "venvs", uv, "1.5.2")
    model, golden = models.make_joblib_other_sklearn(tmp_path / "old", python)
    code, _, err = record(capsys, "--model", str(model), "--format", "joblib",
                          "--inputs", str(golden), "-o", str(tmp_path / "g.npz"))
    assert code == 2 and "model pickled with scikit-learn 1.5.2" in err
