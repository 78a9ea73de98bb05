"""The joblib format: an object saved with joblib (a scikit-learn estimator or pipeline, or any
picklable model whose package the lock installs), called through the spec's `verify.method`.

It runs on the CPU (no GPU verdict to check). Unpickling under another scikit-learn than the one
that pickled it can change predictions, so scikit-learn's InconsistentVersionWarnings become
`sklearn-version-mismatch` findings, which fail verify unless the spec allows them. A model given
as a directory may carry the modules its pickle references (a project's own estimator classes):
the directory goes on sys.path before unpickling.

Shipped to hosts (Python 3.9+, stdlib-only top level; joblib and numpy come from the venv).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from .formats_base import ModelFormat, cpu_only, file_problem, framework, model_file
else:  # on a host: shipped flat beside this file
    from formats_base import ModelFormat, cpu_only, file_problem, framework, model_file

NAME = "joblib"
SUFFIXES = (".joblib", ".pkl", ".pickle")


class JoblibModel:
    """The unpickled object and its `method`, called with the one input array."""

    def __init__(self, path: str, method: str) -> None:
        joblib = framework("joblib")
        self.np = framework("numpy")  # once: run() is what the latency benchmark times
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.model = joblib.load(path)
        self.findings, self.warnings = version_findings(caught)
        self.fn: Any = getattr(self.model, method, None)
        if self.fn is None:
            raise AttributeError(f"{type(self.model).__name__} has no method {method}")

    def prepare(self, inputs: dict[str, Any]) -> Any:
        if len(inputs) != 1:
            raise ValueError(f"a joblib model takes one input array, golden has {sorted(inputs)}")
        return next(iter(inputs.values()))

    def run(self, prepared: Any) -> dict[str, Any]:
        return {"": self.np.asarray(self.fn(prepared))}

    def gpu(self, prepared: Any, required: bool) -> dict[str, Any]:
        return cpu_only(NAME, required)


def version_findings(caught: list[warnings.WarningMessage]
                     ) -> tuple[list[dict[str, Any]], list[str]]:
    """scikit-learn's InconsistentVersionWarning (one per pickled estimator) -> one finding;
    the other warnings as text (at most 20)."""
    pairs: dict[tuple[str, str], list[str]] = {}
    others = []
    for w in caught:
        msg = w.message
        if type(msg).__name__ == "InconsistentVersionWarning":
            key = (str(getattr(msg, "original_sklearn_version", "?")),
                   str(getattr(msg, "current_sklearn_version", "?")))
            pairs.setdefault(key, []).append(str(getattr(msg, "estimator_name", "?")))
        else:
            others.append(f"{type(msg).__name__}: {msg}")
    findings: list[dict[str, Any]] = [
        {"kind": "sklearn-version-mismatch", "trained_with": old, "running": new,
         "estimators": sorted(set(names)),
         "message": "model pickled with scikit-learn {}, running {} ({})".format(
             old, new, ", ".join(sorted(set(names))))}
        for (old, new), names in sorted(pairs.items())]
    return findings, others[:20]


def load(path: str, signature: str, method: str) -> JoblibModel:
    if os.path.isdir(path) and path not in sys.path:
        sys.path.insert(0, path)
    return JoblibModel(model_file(path, SUFFIXES), method)


JOBLIB = ModelFormat(
    name=NAME, summary="a joblib (scikit-learn) file",
    frameworks=("scikit-learn", "numpy", "joblib"),
    shape_problem=lambda path: file_problem(path, NAME), load=load, calls_method=True)
