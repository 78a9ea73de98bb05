"""Warmup runner, the model loaders: a SavedModel signature, a .keras file, a joblib object.

Each loader offers prepare(inputs) -> what the model takes, run(prepared) -> {output name: array},
devices(prepared) (where the outputs were computed) and `findings` (scikit-learn version
mismatches from unpickling). Part of the warmup runner (warmup.py); `golden record` on the
controller calls the model through the same loaders. Top level is stdlib-only and Python 3.9+;
the frameworks are imported lazily, from the release's venv.
"""

from __future__ import annotations

import os
import sys
import warnings

FORMATS = ("tensorflow-savedmodel", "keras", "joblib")


class SavedModel:
    """A TensorFlow SavedModel called through one named signature."""

    def __init__(self, path, signature):
        import tensorflow as tf

        self.tf = tf
        self.obj = tf.saved_model.load(path)
        if signature not in self.obj.signatures:
            has = ", ".join(sorted(self.obj.signatures)) or "none"
            raise LookupError(f"signature {signature!r} not in the SavedModel (has: {has})")
        self.fn = self.obj.signatures[signature]
        self.specs = dict(self.fn.structured_input_signature[1])
        self.findings = []

    def prepare(self, inputs):
        if set(inputs) == {""}:
            if len(self.specs) != 1:
                raise ValueError("golden has unnamed inputs but the signature takes {}: use "
                                 "input:<name> keys".format(", ".join(sorted(self.specs))))
            inputs = {next(iter(self.specs)): inputs[""]}
        if set(inputs) != set(self.specs):
            raise ValueError(f"golden inputs {sorted(inputs)}, "
                             f"signature inputs {sorted(self.specs)}")
        return {k: self.tf.constant(v, dtype=self.specs[k].dtype) for k, v in inputs.items()}

    def call(self, prepared):
        return self.fn(**prepared)

    def run(self, prepared):
        return {k: v.numpy() for k, v in self.call(prepared).items()}

    def devices(self, prepared):
        return sorted({v.device for v in self.call(prepared).values()})


class KerasModel:
    """A .keras file, called directly (model(x, training=False)), as a server would."""

    def __init__(self, path):
        import tensorflow as tf

        try:
            import keras
            load = keras.models.load_model
        except ImportError:
            load = tf.keras.models.load_model
        self.tf = tf
        self.model = load(path, compile=False)
        self.findings = []

    def _input_dtypes(self):
        out = {}
        for t in getattr(self.model, "inputs", None) or []:
            dtype = str(getattr(t, "dtype", "float32"))
            out[getattr(t, "name", "")] = dtype.replace("<dtype: '", "").rstrip("'>")
        return out

    def prepare(self, inputs):
        dtypes = self._input_dtypes()
        if set(inputs) == {""}:
            dtype = next(iter(dtypes.values()), "float32")
            return self.tf.convert_to_tensor(inputs[""].astype(dtype))
        return {k: self.tf.convert_to_tensor(v.astype(dtypes.get(k, "float32")))
                for k, v in inputs.items()}

    def call(self, prepared):
        out = self.model(prepared, training=False)
        if isinstance(out, dict):
            return dict(out)
        if isinstance(out, (list, tuple)):
            names = list(getattr(self.model, "output_names", None) or [])
            if len(names) != len(out):
                names = [str(i) for i in range(len(out))]
            return dict(zip(names, out))
        return {"": out}

    def run(self, prepared):
        return {k: v.numpy() for k, v in self.call(prepared).items()}

    def devices(self, prepared):
        return sorted({getattr(v, "device", "") for v in self.call(prepared).values()})


class JoblibModel:
    """An object saved with joblib (a scikit-learn estimator or pipeline, or any picklable
    model whose package the lock installs), called through `method`."""

    def __init__(self, path, method):
        import joblib

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.model = joblib.load(path)
        self.findings, self.warnings = version_findings(caught)
        self.fn = getattr(self.model, method, None)
        if self.fn is None:
            raise AttributeError(f"{type(self.model).__name__} has no method {method}")

    def prepare(self, inputs):
        if len(inputs) != 1:
            raise ValueError(f"a joblib model takes one input array, golden has {sorted(inputs)}")
        return next(iter(inputs.values()))

    def run(self, prepared):
        import numpy as np

        return {"": np.asarray(self.fn(prepared))}

    def devices(self, prepared):
        return []


def version_findings(caught):
    """scikit-learn's InconsistentVersionWarning (one per pickled estimator) -> one finding."""
    pairs, others = {}, []
    for w in caught:
        msg = w.message
        if type(msg).__name__ == "InconsistentVersionWarning":
            key = (str(getattr(msg, "original_sklearn_version", "?")),
                   str(getattr(msg, "current_sklearn_version", "?")))
            pairs.setdefault(key, []).append(str(getattr(msg, "estimator_name", "?")))
        else:
            others.append(f"{type(msg).__name__}: {msg}")
    findings = [{"kind": "sklearn-version-mismatch", "trained_with": old, "running": new,
                 "estimators": sorted(set(names)),
                 "message": "model pickled with scikit-learn {}, running {} ({})".format(
                     old, new, ", ".join(sorted(set(names))))}
                for (old, new), names in sorted(pairs.items())]
    return findings, others[:20]


def model_file(path, suffixes):
    """A model given as a directory: its one file with one of `suffixes` (model.* first)."""
    if not os.path.isdir(path):
        return path
    names = sorted(n for n in os.listdir(path) if n.endswith(suffixes))
    preferred = [n for n in names if n.startswith("model.")]
    if len(preferred) == 1 or len(names) == 1:
        return os.path.join(path, (preferred or names)[0])
    kinds = "/".join(suffixes)
    raise FileNotFoundError(f"{path}: expected one {kinds} file in the model directory, "
                            f"found {names or 'none'}")


def load_model(fmt, path, signature="serving_default", method="predict"):
    """A directory model for joblib may carry the modules its pickle references (a project's
    own estimator classes): the directory goes on sys.path before unpickling."""
    if fmt == "tensorflow-savedmodel":
        return SavedModel(path, signature)
    if fmt == "keras":
        return KerasModel(model_file(path, (".keras", ".h5")))
    if fmt == "joblib":
        if os.path.isdir(path) and path not in sys.path:
            sys.path.insert(0, path)
        return JoblibModel(model_file(path, (".joblib", ".pkl", ".pickle")), method)
    raise ValueError("unknown model format {!r} (one of {})".format(fmt, ", ".join(FORMATS)))
