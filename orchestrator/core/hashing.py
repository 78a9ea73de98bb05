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
  A spec that says `model.follow_symlinks: true` (and `orchestrator hash --follow-symlinks`)
  counts each link as the file or directory it resolves to, at the link's path: the hash is of
  the targets' content, which is what is shipped (a host receives plain files, and its hash of
  them is the same). A dangling link or a directory link to its own ancestor is still refused.
- Other special files (FIFOs, sockets, devices), names that are not UTF-8 and names containing a
  newline or a backslash (which `sha256sum` escapes) are refused.
- File modes, timestamps and owners are not part of the hash.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from orchestrator.core import filehashes
from orchestrator.errors import SpecError
from orchestrator.hosts.remote import contenthash
from orchestrator.hosts.remote.contenthash import NAME_PATTERN, NAME_RE, tree_hash_of_lines

__all__ = ["CHUNK", "NAME_PATTERN", "NAME_RE", "hash_file", "hash_path", "tree_files",
           "tree_hash", "tree_hash_of_lines", "tree_lines"]

CHUNK = contenthash.CHUNK


def hash_file(path: str | os.PathLike[str]) -> str:
    """sha256 (lowercase hex) of a file's bytes (the one implementation: remote/contenthash),
    remembered for an unchanged large file (core/filehashes.py)."""
    try:
        return filehashes.sha256_file(os.fspath(path))
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", file=str(path)) from exc


def hash_path(path: str | os.PathLike[str], follow: bool = False) -> str:
    """`hash_file` for a file, the tree hash (module docstring) for a directory; `follow`:
    symlinks inside count as what they point to (`model.follow_symlinks`)."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except OSError as exc:
        raise SpecError(f"cannot hash: {exc.strerror}", file=str(p)) from exc
    if stat.S_ISREG(mode):
        return hash_file(p)
    if stat.S_ISDIR(mode):
        return tree_hash(p, follow)
    raise SpecError("cannot hash: not a regular file or directory", file=str(p))


def tree_hash(root: str | os.PathLike[str], follow: bool = False) -> str:
    """The tree hash of a directory (see the module docstring)."""
    return tree_hash_of_lines(tree_lines(Path(root), follow))


def tree_lines(root: Path, follow: bool = False) -> list[str]:
    """One `"<sha256>  <relative path>\\n"` line per regular file under `root`; what has no
    defined hash is a SpecError naming the entry."""
    return [contenthash.tree_line(hash_file(root / rel), rel)
            for rel in tree_files(root, follow)]


def tree_files(root: str | os.PathLike[str], follow: bool = False) -> list[str]:
    """The '/'-separated relative paths of the regular files under `root`, exactly those the
    tree hash covers: a symlink, FIFO, device or socket inside is a SpecError naming it. The
    model upload lists a directory with this, so it can never ship a file the hash did not
    cover (a `notes.txt -> ~/secret` link) nor block reading a FIFO."""
    try:
        return contenthash.tree_files(os.fspath(root), follow)
    except contenthash.HashError as exc:
        raise SpecError(exc.message, file=exc.file) from exc
