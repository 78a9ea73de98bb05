"""What a model format is: the `ModelFormat` record each formats_* module defines, the
`LoadedModel` its loader returns, and the helpers several formats share.

A format is everything the rest of the program needs to know about one way of saving a model:
- `name`: the spec's `model.format` value, the warmup request's `format`, `golden record --format`;
- `summary`: a few words for the spec's schema and docs ("a .keras file");
- `frameworks`: the distributions whose versions decide what the model predicts (recorded in the
  environment fingerprint and diffed against the golden file's);
- `shape_problem(path)`: what `orchestrator validate` says about a model path that cannot be
  this format (None: it can), checked on the controller without the framework;
- `load(path, signature, method)`: the loaded model (`LoadedModel`), in the release's venv on the
  host or where `golden record` runs. Each loader takes the options it needs (`signature` for
  a SavedModel, `method` for a joblib object) and ignores the others;
- `calls_method`: whether the model is called through `verify.method` (its golden file records
  the method, and `validate` and the warmup name a mismatch).

This module and the formats_* modules are shipped flat to hosts (Python 3.9+) and imported by
the controller too (orchestrator.hosts.remote.formats): the top level is stdlib-only and typed
(annotations stay strings, so `X | None` is fine on 3.9); a framework is imported inside the
loader, from the venv, with `framework()`.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Protocol


class LoadedModel(Protocol):
    """A model loaded by its format, as the warmup runner and `golden record` call it.

    `findings` are load-time facts that fail verify unless allowed (a scikit-learn version
    mismatch), `warnings` other warnings raised while loading (reported, never failing)."""

    findings: list[dict[str, Any]]
    warnings: list[str]

    def prepare(self, inputs: dict[str, Any]) -> Any:
        """The golden file's inputs ({"" or input name: array}) as the model takes them."""

    def run(self, prepared: Any) -> dict[str, Any]:
        """One call: {"" or output name: numpy array}."""

    def gpu(self, prepared: Any, required: bool) -> dict[str, Any]:
        """The `gpu` verdict: does one call on `prepared` really run on a GPU? `ok` is None
        for a format that never runs on one (the spec's gpu.required is then not checked)."""


@dataclass(frozen=True)
class ModelFormat:
    """One way of saving a model (see the module docstring for each field)."""

    name: str
    summary: str
    frameworks: tuple[str, ...]
    shape_problem: Callable[[str], str | None]
    load: Callable[[str, str, str], LoadedModel]
    calls_method: bool = False


def framework(name: str) -> Any:
    """Import a framework from the venv the model runs in (never at a shipped module's top
    level: the host's system python3 that runs the other scripts has none)."""
    return importlib.import_module(name)


def cpu_only(name: str, required: bool) -> dict[str, Any]:
    """The GPU verdict of a format whose framework only computes on the CPU."""
    return {"required": required, "checked": True, "ok": None,
            "message": f"not applicable: {name} runs on the CPU"}


def file_problem(path: str, name: str) -> str | None:
    """The shape check shared by single-file formats."""
    return None if os.path.isfile(path) else f"a {name} model must be a file"


def model_file(path: str, suffixes: tuple[str, ...]) -> str:
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
