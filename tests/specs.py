"""Deployment spec folders for tests: a spec.yaml with the files it names copied beside it (a
spec's paths must stay inside its folder).

- `joblib_spec`: a real scikit-learn model (the `models_dir` fixture's) with its golden file
  and the small real lock: what the deploy pipeline installs and verifies on testbed hosts.
- `image_base_spec`: the same, as an image built at deploy time onto the testbed's base image.
- `stub_spec`: placeholder model and golden bytes, for runners that never load them (the echo
  and probe runners): tests of the daemon, the CLI and the API.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from orchestrator.core.hashing import hash_file, hash_path
from orchestrator.testbed import baseimage

FIXTURES = Path(__file__).parent / "fixtures"
LOCK = FIXTURES / "deploy" / "sklearn.lock"  # numpy + scikit-learn + scipy, real wheels
LOCKS = FIXTURES / "locks"
# Wheels downloaded from PyPI once per machine, kept between runs.
WHEEL_CACHE = Path.home() / ".cache" / "orchestrator" / "test-wheelcache"
# The images the tests build at deploy time (`environment.image_base`), kept between runs.
IMAGE_CACHE = Path.home() / ".cache" / "orchestrator" / "test-images"
# Quick enough for tests: 2 warmup and 20 timed predictions.
VERIFY = ("verify: {golden: golden.npz, method: predict_proba, warmup_iterations: 2, "
          "iterations: 20, timeout_s: 120}\n")


def joblib_spec(folder: Path, name: str, model: Path, golden: Path, targets: Sequence[str], *,
                lock: Path = LOCK, model_name: str = "model.joblib", extra: str = "",
                wheelhouse: Path | None = None) -> Path:
    """folder/spec.yaml deploying `model` (copied as `model_name`) checked against `golden`;
    `extra` is appended as is (top-level YAML keys); `wheelhouse` is copied in as wheels/."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, folder / model_name)
    shutil.copy(golden, folder / "golden.npz")
    shutil.copy(lock, folder / "requirements.lock")
    wheels = ""
    if wheelhouse is not None:
        shutil.copytree(wheelhouse, folder / "wheels")
        wheels = ", wheelhouse: wheels"
    spec = folder / "spec.yaml"
    spec.write_text(
        f"apiVersion: orchestrator/v1\nkind: Deployment\nname: {name}\n"
        f"model: {{path: {model_name}, format: joblib, sha256: {hash_path(folder / model_name)}}}\n"
        f'environment: {{python: "3.11", requirements: requirements.lock{wheels}}}\n'
        f"targets: [{', '.join(targets)}]\n" + VERIFY + extra)
    return spec


def image_base_spec(folder: Path, name: str, model: Path, golden: Path,
                    targets: Sequence[str]) -> Path:
    """A `joblib_spec` that asks for an image built at deploy time from its lock onto the
    testbed's Debian base image (`environment.image_base`, linked in as base.tar). Callers skip
    first when `baseimage.why_not()` says the base image cannot be made here."""
    path = joblib_spec(folder, name, model, golden, targets)
    base = baseimage.base_archive()
    os.link(base, folder / "base.tar")
    sha = hash_file(base)
    path.write_text(path.read_text().replace(
        "requirements: requirements.lock}",
        f"requirements: requirements.lock, image_base: {{archive: base.tar, sha256: {sha}}}}}"))
    return path


def stub_spec(folder: Path, targets: Sequence[str], *, name: str = "fraud-detector",
              lock: Path = LOCKS / "tensorflow-2.21-gpu.lock", gpu: bool | None = True,
              model: bytes = b"a model the probe runner never loads\n", extra: str = "") -> Path:
    """folder/spec.yaml whose model (`model`, any bytes) and golden file are placeholders;
    `gpu=None` leaves the `gpu:` section out; `extra` is appended as is."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.joblib").write_bytes(model)
    (folder / "golden.npz").write_bytes(b"golden\n")
    shutil.copy(lock, folder / "requirements.lock")
    sha = hashlib.sha256((folder / "model.joblib").read_bytes()).hexdigest()
    section = ("" if gpu is None else
               f"gpu: {{required: {str(gpu).lower()}, count: 1, min_compute_capability: '7.0'}}\n")
    spec = folder / "spec.yaml"
    spec.write_text(
        f"apiVersion: orchestrator/v1\nkind: Deployment\nname: {name}\n"
        f"model: {{path: model.joblib, format: joblib, sha256: {sha}}}\n"
        'environment: {python: "3.11", requirements: requirements.lock}\n'
        f"{section}targets: [{', '.join(targets)}]\nverify: {{golden: golden.npz}}\n{extra}")
    return spec
