"""Which files of a model go to a host, where they land in the release, and whether the model is
small enough to travel inside the stage step's one batch call (base64 in its JSON arguments)
instead of on a stream of its own. `HostOps.upload_model` ships `model_files`; the stage step
asks `small_model` first."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core.hashing import tree_files
from orchestrator.hosts import layout, ops
from orchestrator.hosts.ops import OpCall

#: A model this small (in this few files) travels inside the stage step's one batch call.
INLINE_MAX_BYTES = 4 << 20
INLINE_MAX_FILES = 16


@dataclass(frozen=True)
class SmallModel:
    verify_path: str                       # what verify_model takes ("model" or model/<file>)
    files: tuple[tuple[str, bytes], ...]   # (path relative to the release dir, content)

    def write_calls(self, app: str, release_id: str) -> list[OpCall[str]]:
        """The `write-file` calls that put it into the staged release."""
        return [ops.write_file(app, release_id, path, data) for path, data in self.files]


def model_files(local: Path, *, follow: bool = False) -> dict[str, Path]:
    """{path relative to the release dir: local file}: a file as model/<name>, a directory's
    files (exactly those its tree hash covers: a symlink or special file inside is a SpecError
    naming it; with `follow`, `model.follow_symlinks`, a symlink counts as its target) under
    model/."""
    if local.is_file():
        return {layout.model_rel(local.name, is_dir=False): local}
    return {posixpath.join(layout.MODEL, rel): local / rel for rel in tree_files(local, follow)}


def model_bytes(local: Path, *, follow: bool = False) -> int:
    """What `HostOps.upload_model` ships of this model, in bytes."""
    return sum(path.stat().st_size for path in model_files(local, follow=follow).values())


def small_model(local: Path, *, max_bytes: int = INLINE_MAX_BYTES,
                max_files: int = INLINE_MAX_FILES, follow: bool = False) -> SmallModel | None:
    """A small model's files, placed as `upload_model` places them, for `write-file` calls in a
    batch; None when it is too big for that and goes on its own stream."""
    files = model_files(local, follow=follow)
    if not files or len(files) > max_files or sum(
            path.stat().st_size for path in files.values()) > max_bytes:
        return None
    return SmallModel(layout.model_rel(local.name, is_dir=local.is_dir()),
                      tuple((rel, path.read_bytes()) for rel, path in files.items()))
