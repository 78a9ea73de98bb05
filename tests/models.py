"""Small real models and their golden files, for tests (import these from any test).

Every `make_*` writes into `directory` and returns `(model_path, golden_path)`. Models are tiny
(a 4-feature, 3-class classifier), so exporting and loading cost little beyond importing the
framework. `changed_weight=True` exports the same model with one weight changed, next to the
golden file recorded from the unchanged one: golden must then fail.

Golden files are written by `orchestrator.core.golden.record`, i.e. through the runner's own code.

- `make_savedmodel`: a tf.Module exported with a `serving_default` signature taking two named
  inputs (`features` [N,4] float32, `scale` [N,1] float32) and returning two named outputs
  (`probabilities`, `scaled`): the golden uses `input:<name>` / `output:<name>` keys.
- `make_keras`: a Sequential Dense softmax model saved as `model.keras` (single unnamed input).
- `make_joblib`: a scikit-learn LogisticRegression in `model.joblib`, golden from
  `predict_proba` (the default `method` here) or `predict`.
- `make_joblib_other_sklearn`: the same estimator fitted and pickled by *another* Python that
  has another scikit-learn (`python` argument; see `old_sklearn_python`), golden recorded there.
- `make_sleepy_model`: a model *directory* holding `sleepy_model.py` (an estimator whose
  `predict` sleeps `ms` milliseconds and returns zeros) and `model.joblib` (its pickle). The
  runner loads it with no extra setup because a joblib model directory goes on sys.path.
  `spawn_child=True` makes the first predict also start a child process (a python sleeping
  300 s, its argv tagged with the model directory), so a test can check that the deadline
  kills the whole process group; `noisy=True` makes predict print to stdout (print and fd 1).
- `make_raising_model`: a `model.joblib` whose unpickling raises ValueError("invalid literal...").
"""

from __future__ import annotations

import pickle
import subprocess
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.core import golden

FEATURES = 4
CLASSES = 3
SAMPLES = 32


def sample_inputs(samples: int = SAMPLES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(samples, FEATURES)).astype(np.float32)


def _weights(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(FEATURES, CLASSES)).astype(np.float32)
    b = rng.normal(size=(CLASSES,)).astype(np.float32)
    return w, b


def _write_inputs(directory: Path, arrays: dict[str, np.ndarray]) -> Path:
    path = directory / "inputs.npz"
    np.savez(path, allow_pickle=False, **arrays)
    return path


def make_savedmodel(directory: Path, changed_weight: bool = False) -> tuple[Path, Path]:
    import tensorflow as tf

    class Tiny(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            w, b = _weights()
            self.w, self.b = tf.Variable(w), tf.Variable(b)

        @tf.function(input_signature=[tf.TensorSpec([None, FEATURES], tf.float32),  # type: ignore[untyped-decorator]
                                      tf.TensorSpec([None, 1], tf.float32)])
        def serve(self, features: Any, scale: Any) -> dict[str, Any]:
            logits = tf.matmul(features, self.w) + self.b
            return {"probabilities": tf.nn.softmax(logits), "scaled": logits * scale}

    directory.mkdir(parents=True, exist_ok=True)
    module = Tiny()
    path = directory / "savedmodel"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    x = sample_inputs()
    scale = np.linspace(0.5, 2.0, SAMPLES, dtype=np.float32).reshape(-1, 1)
    inputs = _write_inputs(directory, {"input:features": x, "input:scale": scale})
    golden_path = directory / "golden.npz"
    golden.record(path, "tensorflow-savedmodel", inputs, golden_path)
    if changed_weight:
        module.w[0, 0].assign(module.w[0, 0] + 0.5)
        path = directory / "savedmodel-changed"
        tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path, golden_path


def make_keras(directory: Path, changed_weight: bool = False) -> tuple[Path, Path]:
    with warnings.catch_warnings():
        # Keras 3.15 calls np.array(tensor) on TF tensors whose __array__ lacks `copy`: numpy 2
        # warns (DeprecationWarning), and pytest runs with warnings as errors.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return _make_keras(directory, changed_weight)


def _make_keras(directory: Path, changed_weight: bool) -> tuple[Path, Path]:
    import keras

    directory.mkdir(parents=True, exist_ok=True)
    model = keras.Sequential([keras.Input((FEATURES,)),
                              keras.layers.Dense(CLASSES, activation="softmax")])
    w, b = _weights()
    model.layers[0].set_weights([w, b])
    path = directory / "model.keras"
    model.save(path)
    inputs = _write_inputs(directory, {"inputs": sample_inputs()})
    golden_path = directory / "golden.npz"
    golden.record(path, "keras", inputs, golden_path)
    if changed_weight:
        w[0, 0] += 0.5
        model.layers[0].set_weights([w, b])
        path = directory / "changed.keras"
        model.save(path)
    return path, golden_path


def _fit_logistic() -> Any:
    from sklearn.linear_model import LogisticRegression

    x = sample_inputs(200, seed=2)
    y = np.argmax(x @ _weights()[0], axis=1)
    return LogisticRegression(max_iter=500).fit(x, y)


def make_joblib(directory: Path, changed_weight: bool = False,
                method: str = "predict_proba") -> tuple[Path, Path]:
    import joblib

    directory.mkdir(parents=True, exist_ok=True)
    model = _fit_logistic()
    path = directory / "model.joblib"
    joblib.dump(model, path)
    inputs = _write_inputs(directory, {"inputs": sample_inputs()})
    golden_path = directory / "golden.npz"
    golden.record(path, "joblib", inputs, golden_path, method=method)
    if changed_weight:
        model.coef_[0, 0] += 0.5
        path = directory / "changed.joblib"
        joblib.dump(model, path)
    return path, golden_path


def make_polynomial(directory: Path, changed: bool = False) -> tuple[Path, Path]:
    """A model that needs numpy only: a least-squares cubic (`numpy.polynomial`), called as
    `model(x)` (verify.method `__call__`); cheap to load and call, for fleet-sized tests."""
    import joblib

    directory.mkdir(parents=True, exist_ok=True)
    x = np.linspace(-2.0, 2.0, 200)
    model = np.polynomial.Polynomial.fit(x, np.sin(x), deg=3)
    path = directory / "model.joblib"
    joblib.dump(model, path)
    inputs = _write_inputs(directory, {"inputs": np.linspace(-1.5, 1.5, SAMPLES)})
    golden_path = directory / "golden.npz"
    golden.record(path, "joblib", inputs, golden_path, method="__call__")
    if changed:
        path = directory / "changed.joblib"
        joblib.dump(model + 1e-3, path)
    return path, golden_path


OTHER_SKLEARN_SCRIPT = """
import sys, joblib, numpy as np
from sklearn.linear_model import LogisticRegression
x, y, xs, out = np.load(sys.argv[1]), np.load(sys.argv[2]), np.load(sys.argv[3]), sys.argv[4]
model = LogisticRegression(max_iter=500).fit(x, y)
joblib.dump(model, out + "/model.joblib")
np.savez(out + "/golden.npz", inputs=xs, outputs=model.predict_proba(xs))
"""


def old_sklearn_python(directory: Path, uv: Path, version: str = "1.5.2") -> Path:
    """A venv with scikit-learn `version` (uv caches the wheels: quick after the first time)."""
    venv = directory / f"sklearn-{version}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([str(uv), "venv", "-q", str(venv)], check=True)
        subprocess.run([str(uv), "pip", "install", "-q", "--python", str(python),
                        f"scikit-learn=={version}"], check=True)
    return python


def make_joblib_other_sklearn(directory: Path, python: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    x = sample_inputs(200, seed=2)
    arrays = {"x": x, "y": np.argmax(x @ _weights()[0], axis=1), "xs": sample_inputs()}
    for name, value in arrays.items():
        np.save(directory / f"{name}.npy", value)
    script = directory / "fit.py"
    script.write_text(OTHER_SKLEARN_SCRIPT)
    subprocess.run([str(python), str(script), *(str(directory / f"{n}.npy") for n in arrays),
                    str(directory)], check=True)
    return directory / "model.joblib", directory / "golden.npz"


SLEEPY_MODULE = '''
"""An estimator with a known cost: predict sleeps `ms` milliseconds (a test fixture)."""
import os
import subprocess
import sys
import time

import numpy as np

CHILDREN = []


class SleepyEstimator:
    def __init__(self, ms, spawn_child, noisy, tag):
        self.ms, self.spawn_child, self.noisy, self.tag = ms, spawn_child, noisy, tag

    def predict(self, x):
        if self.spawn_child and not CHILDREN:  # tagged, so a test can look for it
            code = "import time; time.sleep(300)"
            CHILDREN.append(subprocess.Popen([sys.executable, "-c", code, self.tag]))
        if self.noisy:
            print("chatter from predict on stdout")
            os.write(1, b"raw chatter on fd 1\\n")
        time.sleep(self.ms / 1000.0)
        return np.zeros(len(x))
'''


def make_sleepy_model(directory: Path, ms: float, spawn_child: bool = False,
                      noisy: bool = False) -> tuple[Path, Path]:
    """A joblib model *directory* whose predict costs `ms` milliseconds (see module doc)."""
    import importlib.util
    import sys

    import joblib

    model_dir = directory / "sleepy"
    model_dir.mkdir(parents=True, exist_ok=True)
    source = model_dir / "sleepy_model.py"
    source.write_text(textwrap.dedent(SLEEPY_MODULE))
    spec = importlib.util.spec_from_file_location("sleepy_model", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["sleepy_model"] = module  # pickle finds classes by module name, for the dump only
    try:
        estimator = module.SleepyEstimator(ms, spawn_child, noisy, str(model_dir))
        joblib.dump(estimator, model_dir / "model.joblib")
    finally:
        del sys.modules["sleepy_model"]
    golden_path = directory / "sleepy-golden.npz"
    x = sample_inputs(8)
    np.savez(golden_path, inputs=x, outputs=np.zeros(len(x)))  # known: never loaded here
    return model_dir, golden_path


class _RaisesOnLoad:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (int, ("not a number",))


def make_raising_model(directory: Path) -> tuple[Path, Path]:
    """`model.joblib` whose loading raises ValueError: invalid literal for int() ..."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.joblib"
    path.write_bytes(pickle.dumps(_RaisesOnLoad()))
    golden_path = directory / "golden.npz"
    np.savez(golden_path, inputs=sample_inputs(4), outputs=np.zeros(4))
    return path, golden_path
