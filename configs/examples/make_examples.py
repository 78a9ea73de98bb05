"""Regenerate the example deployments in configs/examples/ (models, golden files, specs, locks).

    .venv/bin/python configs/examples/make_examples.py            # models, goldens, specs
    .venv/bin/python configs/examples/make_examples.py --relock   # also the locks (needs PyPI)

Every model is tiny (a 4-feature, 3-class classifier with fixed weights) so the committed files
stay small. Golden files are written by `orchestrator golden record`, the command a user runs
where the model was trained; specs get the model's hash from `orchestrator hash`. A SavedModel's
bytes are not reproducible across TensorFlow runs, so its tree hash changes each time this runs:
the spec is rewritten with it, which is why the two must be committed together.

Locks come from `uv pip compile --generate-hashes` for the hosts' Python and platform
(3.11, x86_64 manylinux_2_28), from the `requirements.in` next to each spec.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
FEATURES, CLASSES, SAMPLES = 4, 3, 16

SPECS = {
    "tensorflow-savedmodel": """\
# A TensorFlow SavedModel on GPUs: the full GPU build of TensorFlow (tensorflow[and-cuda]),
# so the preflight checks the driver, CUDA and compute capability of every target.
apiVersion: orchestrator/v1
kind: Deployment
name: iris-savedmodel
model: {{path: model, format: tensorflow-savedmodel, sha256: {sha}}}
environment:
  python: "3.11"
  requirements: requirements.lock
gpu: {{required: true, count: 1, min_memory_gib: 8, min_compute_capability: "7.0"}}
targets: [inference]
rollout: {{canary: 1, batch_size: 2, max_failed_hosts: 0, on_failure: rollback}}
verify:
  golden: golden.npz
  rtol: 1.0e-5
  atol: 1.0e-6
  warmup_iterations: 10
  iterations: 100
  latency_ms: {{p50: 20, p95: 50, p99: 100}}
  timeout_s: 600
release: {{keep: 5}}
reverify: {{every: 6h}}
""",
    "keras": """\
# A Keras 3 model (.keras file) on CPU hosts: tensorflow-cpu, no GPU checks.
apiVersion: orchestrator/v1
kind: Deployment
name: iris-keras
model: {{path: model.keras, format: keras, sha256: {sha}}}
environment:
  python: "3.11"
  requirements: requirements.lock
gpu: {{required: false}}
targets: [zone-b]
verify:
  golden: golden.npz
  rtol: 1.0e-5
  atol: 1.0e-6
  warmup_iterations: 5
  iterations: 50
  latency_ms: {{p99: 200}}
""",
    "sklearn-joblib": """\
# A scikit-learn estimator pickled with joblib, on CPU hosts. The lock pins scikit-learn
# exactly: another release may unpickle the estimator differently (the golden file catches it).
apiVersion: orchestrator/v1
kind: Deployment
name: iris-sklearn
model: {{path: model.joblib, format: joblib, sha256: {sha}}}
environment:
  python: "3.11"
  requirements: requirements.lock
gpu: {{required: false}}
targets: [gpu-03]
verify:
  golden: golden.npz
  method: predict_proba
  warmup_iterations: 5
  iterations: 100
  latency_ms: {{p99: 50}}
""",
}

REQUIREMENTS = {
    "tensorflow-savedmodel": "tensorflow[and-cuda]==2.21.0\n",
    "keras": "tensorflow-cpu==2.21.0\n",
    "sklearn-joblib": "scikit-learn==1.9.1\njoblib==1.6.0\nnumpy==2.4.6\n",
}


def weights(seed: int = 1, changed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(FEATURES, CLASSES)).astype(np.float32)
    b = rng.normal(size=(CLASSES,)).astype(np.float32)
    if changed:  # the demo's "version 2": one weight off, so its predictions are wrong
        w[0, 0] += 0.5
    return w, b


def inputs(samples: int = SAMPLES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(samples, FEATURES)).astype(np.float32)


def save_savedmodel(path: Path, changed: bool = False, input_name: str | None = None) -> None:
    import tensorflow as tf

    class Tiny(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            w, b = weights(changed=changed)
            self.w, self.b = tf.Variable(w), tf.Variable(b)

        @tf.function(input_signature=[tf.TensorSpec([None, FEATURES], tf.float32,
                                                    name=input_name)])
        def serve(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"probabilities": tf.nn.softmax(tf.matmul(features, self.w) + self.b)}

    shutil.rmtree(path, ignore_errors=True)
    module = Tiny()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def save_keras(path: Path) -> None:
    import keras

    model = keras.Sequential([keras.Input((FEATURES,)),
                              keras.layers.Dense(CLASSES, activation="softmax")])
    model.layers[0].set_weights(list(weights()))
    model.save(path)


def save_joblib(path: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    x = inputs(200, seed=2)
    y = np.argmax(x @ weights()[0], axis=1)
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), path)


def orchestrator(*args: str) -> str:
    done = subprocess.run([str(BIN / "orchestrator"), *args], check=True, text=True,
                          capture_output=True)
    return done.stdout


def record_golden(directory: Path, model: str, fmt: str, method: str | None = None) -> None:
    extra = ["--method", method] if method else []
    orchestrator("golden", "record", "--model", str(directory / model), "--format", fmt,
                 "--inputs", str(directory / "inputs.npz"), *extra,
                 "-o", str(directory / "golden.npz"))


def write_spec(name: str, model: str) -> None:
    directory = HERE / name
    sha = orchestrator("hash", str(directory / model)).split()[0]
    (directory / "spec.yaml").write_text(SPECS[name].format(sha=sha))


def relock(name: str) -> None:
    directory = HERE / name
    (directory / "requirements.in").write_text(REQUIREMENTS[name])
    subprocess.run([str(BIN / "uv"), "pip", "compile", "-q", "--generate-hashes",
                    "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28",
                    "--no-header", "requirements.in", "-o", "requirements.lock"],
                   cwd=directory, check=True)


def make(name: str, model: str, fmt: str, save: object, method: str | None = None) -> None:
    directory = HERE / name
    directory.mkdir(exist_ok=True)
    np.savez(directory / "inputs.npz", inputs=inputs())
    save(directory / model)  # type: ignore[operator]
    record_golden(directory, model, fmt, method)
    write_spec(name, model)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relock", action="store_true", help="recompile the locks (PyPI)")
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make("tensorflow-savedmodel", "model", "tensorflow-savedmodel", save_savedmodel)
        # The demo's version 2: same graph, one weight changed; deployed with version 1's golden.
        save_savedmodel(HERE / "tensorflow-savedmodel" / "model-v2", changed=True)
        # Its version 3: version 1's weights with the input renamed `x`: it passes version 1's
        # golden file (one unnamed input) but breaks a client that sends `features`.
        save_savedmodel(HERE / "tensorflow-savedmodel" / "model-v3", input_name="x")
        make("keras", "model.keras", "keras", save_keras)
        make("sklearn-joblib", "model.joblib", "joblib", save_joblib, method="predict_proba")
    if args.relock:
        for name in SPECS:
            relock(name)
    for name in SPECS:
        orchestrator("validate", str(HERE / name / "spec.yaml"))
        print(f"{name}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
