"""Content hashes and the name pattern, once for both sides: sha256 of a file, the model tree hash,
and the pattern of app (and host/group) names.

The controller imports this module as `orchestrator.hosts.remote.contenthash` (through
`orchestrator.core.hashing`, which turns `HashError` into its SpecError); on a host it is shipped
in the flat tools bundle and imported as `contenthash` by hostops and audit. It is therefore
stdlib only and Python 3.9+ (the hosts' own python3), and imports nothing else of the bundle.

The tree hash (documented for users in orchestrator/core/hashing.py):

    lines = ["<sha256 hex of file>  <path relative to the directory, '/'-separated>\\n"
             for every regular file under the directory, at any depth]
    tree_hash = sha256("".join(sorted(lines)).encode("utf-8")).hexdigest()

Empty directories are ignored; a directory with no regular file, a symlink or special file inside
it, and a name that is not UTF-8 or holds a newline or backslash are refused (`HashError`).
"""

from __future__ import annotations

import os
import re

# hashlib is imported where it is used: hostops imports this module for NAME_RE on every call, and
# the interpreter's start is most of what a small op costs on a busy host.

#: App names (and inventory host and group names): they are used in host paths.
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
NAME_RE = re.compile(NAME_PATTERN)

CHUNK = 1 << 20


class HashError(ValueError):
    """A tree that has no defined hash: `message` says why, `file` names the entry (already
    repr()'d when the name itself is the problem), `rel` is its path inside the tree."""

    def __init__(self, message: str, file: str, rel: str = "") -> None:
        super().__init__(message)
        self.message, self.file, self.rel = message, file, rel


def sha256_file(path: str) -> str:
    """sha256 (lowercase hex) of a file's bytes, read in chunks; OSError as it comes."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_line(sha: str, rel: str) -> str:
    """One file's line of the tree hash."""
    return f"{sha}  {rel}\n"


def tree_hash_of_lines(lines: list[str]) -> str:
    """The tree hash over already computed lines (any order)."""
    import hashlib

    return hashlib.sha256("".join(sorted(lines)).encode("utf-8")).hexdigest()


def tree_files(root: str, follow: bool = False) -> list[str]:
    """The relative '/'-separated paths of every regular file under `root`, refusing what has
    no defined hash (HashError). `root` itself may be a symlink: it is followed. With `follow`
    (a spec's `model.follow_symlinks`), a symlink inside counts as the regular file or
    directory it resolves to, at the link's path (so the hash, and a copy of the files, are of
    the targets' content); a dangling link, a link to anything else, or a directory link back
    to one of its own ancestors is refused."""
    files = _walk(root, "", (os.path.realpath(root),) if follow else None)
    if not files:
        raise HashError("cannot hash: the directory holds no regular file", root)
    return files


def tree_lines(root: str) -> list[str]:
    """One tree line per regular file under `root`."""
    return [tree_line(sha256_file(os.path.join(root, rel)), rel) for rel in tree_files(root)]


def tree_hash(root: str) -> str:
    """The tree hash of a directory (module docstring)."""
    return tree_hash_of_lines(tree_lines(root))


def _walk(root: str, prefix: str, ancestors: tuple[str, ...] | None) -> list[str]:
    """`ancestors`: None when symlinks are refused, else the resolved directories above."""
    here = os.path.join(root, prefix) if prefix else root
    try:
        entries = sorted(os.scandir(here), key=lambda e: e.name)
    except OSError as exc:
        raise HashError(f"cannot list: {exc.strerror}", here, prefix) from exc
    out: list[str] = []
    for entry in entries:
        rel = f"{prefix}/{entry.name}" if prefix else entry.name
        full = os.path.join(root, rel)
        _check_name(full, rel)
        if entry.is_symlink():
            if ancestors is None:
                raise HashError("cannot hash: symlinks are refused inside a model directory "
                                "(unless the spec says model.follow_symlinks: true)", full, rel)
            target = os.path.realpath(full)
            if os.path.isdir(target):
                if target in ancestors:
                    raise HashError(f"cannot hash: symlink loop (to {target})", full, rel)
                out.extend(_walk(root, rel, (*ancestors, target)))
            elif os.path.isfile(target):
                out.append(rel)
            else:
                raise HashError("cannot hash: symlink to nothing, or to something that is not "
                                "a regular file or directory", full, rel)
            continue
        if entry.is_dir(follow_symlinks=False):
            inner = None if ancestors is None else (*ancestors, os.path.realpath(full))
            out.extend(_walk(root, rel, inner))
        elif entry.is_file(follow_symlinks=False):
            out.append(rel)
        else:
            raise HashError("cannot hash: not a regular file or directory", full, rel)
    return out


def _check_name(full: str, rel: str) -> None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError as exc:  # undecodable bytes arrive as lone surrogates
        raise HashError("cannot hash: file name is not UTF-8", repr(full),
                        rel.encode("utf-8", "replace").decode()) from exc
    if "\n" in rel or "\\" in rel:
        raise HashError("cannot hash: file name contains a newline or backslash", repr(full),
                        rel)
