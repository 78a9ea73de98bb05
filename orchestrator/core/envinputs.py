"""What a spec's environment is made of, read once on the controller: the lock of a venv
(`environment.requirements`) or what the image archive says about itself
(`environment.image`). Both are "lock-like" for the preflight (a `packages` list of name and
version, and a `sha256` that release ids are made of)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.core.hashing import hash_file
from orchestrator.core.lockfile import Lock, load_lock
from orchestrator.core.ociimage import ImageInfo, read_image
from orchestrator.core.spec import Spec


def lock_path(spec: Spec) -> Path:
    """The lock file of a venv spec; an image spec has none (InvalidInput, exit 2, naming the
    field), for the callers that only deploy venvs."""
    if spec.paths.requirements is None:
        raise spec.error(("environment",), "this command needs environment.requirements (a "
                                           "venv); the spec gives environment.image")
    return spec.paths.requirements


def load_environment(spec: Spec) -> Lock | ImageInfo:
    """The spec's lock, or its image's `ImageInfo`."""
    if spec.environment.image is not None:
        return load_image(spec)
    return load_lock(lock_path(spec))


def load_image(spec: Spec) -> ImageInfo:
    """The image archive, checked against `environment.image.sha256` before anything reads
    it: a tampered or swapped archive is a SpecError at that line (exit 2), never loaded."""
    image, path = spec.environment.image, spec.paths.image
    if image is None or path is None:
        raise spec.error(("environment",), "the spec gives no environment.image")
    if path.is_dir():  # packed by the deploy first (orchestrator/deploy/imagebuild.py)
        raise spec.error(("environment", "image", "archive"),
                         f"{image.archive} is an OCI layout directory: it is read once packed "
                         "into an archive (pack_layout), which this command does not do")
    try:
        actual = hash_file(path)
    except OSError as exc:
        raise spec.error(("environment", "image", "archive"),
                         f"cannot read {image.archive}: {exc.strerror or exc}") from exc
    if actual != image.sha256:
        raise spec.error(("environment", "image", "sha256"),
                         f"mismatch: the spec says {image.sha256} but {image.archive} hashes "
                         f"to {actual}: refused before it is read or loaded")
    return read_image(path, actual)


__all__ = ["load_environment", "load_image", "lock_path"]
