"""Content hashes of models: sha256 of a file, and a documented tree hash of a directory.

The tree hash is the value `model.sha256` holds for a directory model (a SavedModel), and what
the host recomputes after transfer. It is defined so that anyone can recompute it with standard
tools, and so that it depends on exactly the file contents and their relative paths:

    lines = ["<sha256 hex of file>  <path relative to the directory, '/'-separated>\\n"
             for every regular file under the directory, at any depth]
    tree_hash = sha256("".join(sorted(lines)).encode("utf-8")).hexdigest()

`sorted` is plain code-point order of the whole line (hash first, so equal to `sort` under
`LC_ALL=C`); in shell, from inside the directory:

    find . -type f -printf '%P\\0' | xargs -0 sha256sum | LC_ALL=C sort | sha256sum

- Empty directories are ignored (they carry no content and are not recreated by every copy tool);
  a directory with no regular file at all is refused.
- Symlinks inside the directory are refused: a link's target could change the model without
  changing the hash, or point outside it. The path given itself may be a symlink; it is followed.
- Other special files (FIFOs, sockets, devices), names that are not UTF-8 and names containing a
  newline or a backslash (which `sha256sum` escapes) are refused.
- File modes, timestamps and owners are not part of the hash.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from orchestrator.errors import SpecError

CHUNK = 1 << 20


def hash_file(path: str | os.PathLike[str]) -> str:
    """sha256 (lowercase hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", file=str(path)) from exc
    return digest.hexdigest()


def hash_path(path: str | os.PathLike[str]) -> str:
    """`hash_file` for a file, the tree hash (module docstring) for a directory."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except OSError as exc:
        raise SpecError(f"cannot hash: {exc.strerror}", file=str(p)) from exc
    if stat.S_ISREG(mode):
        return hash_file(p)
    if stat.S_ISDIR(mode):
        return tree_hash(p)
    raise SpecError("cannot hash: not a regular file or directory", file=str(p))


def tree_hash(root: str | os.PathLike[str]) -> str:
    """The tree hash of a directory (see the module docstring)."""
    return tree_hash_of_lines(tree_lines(Path(root)))


def tree_hash_of_lines(lines: list[str]) -> str:
    return hashlib.sha256("".join(sorted(lines)).encode("utf-8")).hexdigest()


def tree_lines(root: Path) -> list[str]:
    """One `"<sha256>  <relative path>\\n"` line per regular file under `root`."""
    files = list(_walk(root, ""))
    if not files:
        raise SpecError("cannot hash: the directory holds no regular file", file=str(root))
    return [f"{hash_file(root / rel)}  {rel}\n" for rel in files]


def _walk(root: Path, prefix: str) -> list[str]:
    out: list[str] = []
    try:
        entries = sorted(os.scandir(root / prefix if prefix else root), key=lambda e: e.name)
    except OSError as exc:
        raise SpecError(f"cannot list: {exc.strerror}", file=str(root / prefix)) from exc
    for entry in entries:
        rel = f"{prefix}/{entry.name}" if prefix else entry.name
        _check_name(root, rel)
        if entry.is_symlink():
            raise SpecError("cannot hash: symlinks are refused inside a model directory",
                            file=str(root / rel))
        if entry.is_dir(follow_symlinks=False):
            out.extend(_walk(root, rel))
        elif entry.is_file(follow_symlinks=False):
            out.append(rel)
        else:
            raise SpecError("cannot hash: not a regular file or directory", file=str(root / rel))
    return out


def _check_name(root: Path, rel: str) -> None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError as exc:  # undecodable bytes arrive as lone surrogates
        raise SpecError("cannot hash: file name is not UTF-8", file=repr(str(root / rel))) from exc
    if "\n" in rel or "\\" in rel:
        raise SpecError("cannot hash: file name contains a newline or backslash",
                        file=repr(str(root / rel)))
