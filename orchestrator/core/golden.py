"""Golden files: record a model's predictions where it was trained, to check them on each host.

`record` runs the model through the *same code* the warmup runner uses on the host (it imports
the runner's modules: the format registry orchestrator/hosts/remote/formats.py for loading,
input preparation and the call, warmup_golden.py for the .npz keys, warmup_env.py for the
environment), so a golden file can only disagree with a host because the environment differs,
never because the two sides call the model differently. It writes the .npz layout the runner
reads (see the docstring of orchestrator/hosts/remote/warmup.py): inputs/outputs or
input:<name>/output:<name>, plus `__fingerprint__` (this environment, see fingerprint.py) and
`__golden__` (format, signature, method).

Needs numpy and the model's framework locally (the `ml` extra); imported lazily.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.fingerprint import FINGERPRINT_KEY, GOLDEN_META_KEY
from orchestrator.errors import InvalidInput
from orchestrator.hosts.remote import formats

GOLDEN_SCHEMA = 1


def runner(part: str) -> Any:
    """One untyped module of the warmup runner (py3.9-compatible, shipped to hosts):
    "warmup_golden" or "warmup_env"."""
    return importlib.import_module(f"orchestrator.hosts.remote.{part}")


@dataclass(frozen=True)
class GoldenSummary:
    path: Path
    samples: int
    inputs: dict[str, tuple[int, ...]]  # npz key -> shape
    outputs: dict[str, tuple[int, ...]]


def read_inputs(path: Path) -> dict[str, Any]:
    """Inputs from an .npz (inputs / input:<name> keys; a lone array of any name counts as
    `inputs`) or an .npy file. Keys of the result: "" for unnamed, else the input's name."""
    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path}: cannot read inputs: {exc}") from exc
    if isinstance(loaded, np.ndarray):
        return {"": loaded}
    with loaded:
        arrays = {k: loaded[k] for k in loaded.files if not k.startswith("__")}
    inputs: dict[str, Any] = runner("warmup_golden").split_golden(arrays)[0]
    if not inputs and len(arrays) == 1:
        inputs = {"": next(iter(arrays.values()))}
    if not inputs:
        raise InvalidInput(f"{path}: no inputs: use the key `inputs` or `input:<name>` "
                           f"(found {', '.join(sorted(arrays)) or 'nothing'})")
    return inputs


def predict(model_path: Path, fmt: str, inputs: dict[str, Any], signature: str,
            method: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The model's outputs for `inputs` and its load findings, exactly as the runner computes."""
    try:
        model = formats.get(fmt).load(str(model_path), signature, method)
        outputs = model.run(model.prepare(inputs))
    except Exception as exc:  # the model's own failure, reported the way the runner reports it
        raise InvalidInput(f"{model_path}: cannot run the model: "
                           f"{type(exc).__name__}: {exc}") from exc
    return outputs, list(model.findings)


def fingerprint() -> dict[str, Any]:
    result: dict[str, Any] = runner("warmup_env").environment()
    return result


def record(model_path: Path, fmt: str, inputs_path: Path, out_path: Path,
           signature: str = "serving_default", method: str = "predict") -> GoldenSummary:
    import numpy as np

    if not model_path.exists():
        raise InvalidInput(f"{model_path}: no such model file or directory")
    inputs = read_inputs(inputs_path)
    outputs, findings = predict(model_path, fmt, inputs, signature, method)
    if findings:
        raise InvalidInput(f"{model_path}: {findings[0]['message']}: record the golden file "
                           "with the scikit-learn the model was trained with")
    mod = runner("warmup_golden")
    arrays: dict[str, Any] = {mod.golden_key("input", k): np.asarray(v) for k, v in inputs.items()}
    arrays.update({mod.golden_key("output", k): np.asarray(v) for k, v in outputs.items()})
    meta = {"schema": GOLDEN_SCHEMA, "format": fmt, "signature": signature, "method": method}
    arrays[FINGERPRINT_KEY] = np.array(json.dumps(fingerprint(), sort_keys=True))
    arrays[GOLDEN_META_KEY] = np.array(json.dumps(meta, sort_keys=True))
    _write_npz(out_path, arrays)
    first = next(iter(inputs.values()))
    return GoldenSummary(
        path=out_path, samples=len(first) if first.ndim else 1,
        inputs={k: tuple(v.shape) for k, v in arrays.items() if k.startswith("input")},
        outputs={k: tuple(v.shape) for k, v in arrays.items() if k.startswith("output")},
    )


def _write_npz(path: Path, arrays: dict[str, Any]) -> None:
    """Atomic: a reader never sees half a golden file."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
