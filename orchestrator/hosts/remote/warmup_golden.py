"""Warmup runner, golden files: the .npz layout, and a model's outputs against the golden ones.

Part of the warmup runner (warmup.py, whose docstring has the golden layout and the result's
`golden` entry); shipped beside it and imported by it. Top level is stdlib-only and Python 3.9+;
numpy is imported lazily, from the release's venv.
"""

from __future__ import annotations

import math
from typing import Any

WORST = 5


def golden_key(kind, name):
    """npz key for an input/output name; "" is the single unnamed one."""
    return kind + "s" if name == "" else f"{kind}:{name}"


def split_golden(arrays):
    """{npz key: array} -> (inputs, outputs), each {name: array} ("" for unnamed)."""
    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    for key, value in arrays.items():
        if key in ("inputs", "outputs"):
            (inputs if key == "inputs" else outputs)[""] = value
        elif key.startswith("input:"):
            inputs[key[len("input:"):]] = value
        elif key.startswith("output:"):
            outputs[key[len("output:"):]] = value
    return inputs, outputs


def read_golden(path):
    import numpy as np

    with np.load(path, allow_pickle=False) as npz:
        inputs, outputs = split_golden({k: npz[k] for k in npz.files})
    if not inputs:
        raise ValueError(f"golden file {path} has no inputs (keys inputs or input:<name>)")
    counts = {len(v) if v.ndim else 1 for v in inputs.values()}
    if len(counts) != 1:
        raise ValueError(f"golden inputs differ in their number of samples: {sorted(counts)}")
    return inputs, outputs


def method_cause(path, method, calls_method):
    """Why a failed comparison failed, when the golden file says so: a golden file of a format
    that `calls_method` (joblib), recorded calling another method than the one the spec calls
    (predict vs predict_proba give other shapes and values). None when its metadata is absent
    or agrees."""
    import json

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            if "__golden__" not in npz.files:
                return None
            meta = json.loads(str(npz["__golden__"][()]))
    except (OSError, ValueError, KeyError):
        return None
    recorded = meta.get("method") if isinstance(meta, dict) else None
    if not calls_method or not isinstance(recorded, str) or recorded == method:
        return None
    return (f"the golden file was recorded with method {recorded!r} but verify.method is "
            f"{method!r} (record it again with --method {method}, or set verify.method)")


def _match_outputs(expected, got):
    """Pairs (name, expected, got|None); an unnamed golden output matches a single model output."""
    if set(expected) == {""} and len(got) == 1:
        return [("", expected[""], next(iter(got.values())))]
    if set(got) == {""} and len(expected) == 1:
        name = next(iter(expected))
        return [(name, expected[name], got[""])]
    return [(name, exp, got.get(name)) for name, exp in sorted(expected.items())]


def compare_output(expected, got, rtol, atol):
    """One output against its golden values, np.allclose semantics, per sample."""
    import numpy as np

    exp, act = np.asarray(expected), np.asarray(got)
    if exp.shape != act.shape:
        return {"ok": False, "samples": len(exp) if exp.ndim else 1, "mismatched": None,
                "message": f"shape {list(act.shape)}, golden has {list(exp.shape)}"}
    n = len(exp) if exp.ndim else 1
    numeric = exp.dtype.kind not in "USOb" and act.dtype.kind not in "USOb"
    if not numeric:  # class labels: equal or not, no distance
        close = exp == act
        diff = (~close).astype(np.float64)
    else:
        close = np.isclose(act, exp, rtol=rtol, atol=atol)
        diff = np.abs(act.astype(np.float64) - exp.astype(np.float64))
    close2, diff2 = close.reshape(n, -1), diff.reshape(n, -1)
    bad = np.flatnonzero(~close2.all(axis=1))
    worst = []
    per_sample = np.where(np.isnan(diff2), np.inf, diff2).max(axis=1) if diff2.size else diff2
    for i in sorted(bad.tolist(), key=lambda i: -float(per_sample[i]))[:WORST]:
        j = int(np.argmax(np.where(close2[i], -1.0, np.nan_to_num(diff2[i], nan=np.inf))))
        worst.append({"index": int(i), "element": j,
                      "expected": _scalar(exp.reshape(n, -1)[i, j]),
                      "got": _scalar(act.reshape(n, -1)[i, j]),
                      "abs_diff": _scalar(diff2[i, j]) if numeric else None})
    max_diff = _scalar(diff.max()) if diff.size and numeric else None
    return {"ok": not len(bad), "samples": n, "mismatched": len(bad),
            "max_abs_diff": max_diff, "worst": worst}


def compare_golden(expected, got, rtol, atol):
    outputs: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for name, exp, act in _match_outputs(expected, got):
        label = name or "outputs"
        if act is None:
            has = ", ".join(sorted(k or "outputs" for k in got))
            outputs[label] = {"ok": False,
                              "message": f"missing from the model's outputs (has: {has})"}
        else:
            outputs[label] = compare_output(exp, act, rtol, atol)
        entry = outputs[label]
        if not entry["ok"]:
            problems.append(_describe_mismatch(label, entry))
    samples = max([o.get("samples") or 0 for o in outputs.values()] or [0])
    mismatched = sum(o.get("mismatched") or 0 for o in outputs.values())
    return {"ok": not problems and bool(outputs), "samples": samples, "mismatched": mismatched,
            "rtol": rtol, "atol": atol, "outputs": outputs,
            "message": "; ".join(problems) if problems else
            ("no golden outputs to compare" if not outputs else f"all {samples} samples match")}


def _describe_mismatch(label, entry):
    if "worst" not in entry:
        return "{}: {}".format(label, entry["message"])
    worst = ", ".join(f"#{w['index']} expected {_fmt(w['expected'])} got {_fmt(w['got'])}"
                      + ("" if w["abs_diff"] is None else f" (|diff| {_fmt(w['abs_diff'])})")
                      for w in entry["worst"][:3])
    return (f"{label}: {entry['mismatched']} of {entry['samples']} samples differ;"
            f" worst: {worst}")


def _scalar(value):
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no inf/nan
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def _fmt(value):
    """A golden value in a message: floats short, "nan"/"inf" (strings after _scalar) bare."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if value in ("nan", "inf", "-inf") else repr(value)
