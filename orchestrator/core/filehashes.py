"""Remembered sha256 of the controller's large input files (a spec's wheelhouse, model files,
image archives), so that a file nobody changed is not read again by the next deploy.

Why: `orchestrator deploy` is one process per deploy, and a warm redeploy read the whole
wheelhouse again only to learn what the previous one already knew: 0.41 s of a 4.6 s warm
redeploy for tensorflow-cpu's 335 MB, about 4 s for a CUDA build's 3 GB (docs/benchmarks.md).

A remembered hash is used only while the file's (device, inode, size, mtime_ns, ctime_ns) are
what they were both before and after it was read: every write to a file moves its ctime, which
no unprivileged call can set back (the rule git's index and build caches rely on). What the memo
could still get wrong, the hosts catch: each hashes every byte it receives against the lock's
or the spec's sha256, so the memo spares the controller a read, never a host a check.

One small JSON file under the controller's cache (`$ORCHESTRATOR_HASH_MEMO`, else
`$XDG_CACHE_HOME/orchestrator/file-hashes.json`; `ORCHESTRATOR_HASH_MEMO=off`: no memo), at most
`MAX_ENTRIES` files (the oldest go first), replaced atomically; a file under `MIN_BYTES` is
simply hashed, and a memo that cannot be read or written is no memo, never an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path

from orchestrator.hosts.remote import contenthash
from orchestrator.xdg import user_dir

MIN_BYTES = 1 << 20
MAX_ENTRIES = 4096
_OVERRIDE = "ORCHESTRATOR_HASH_MEMO"

Key = tuple[int, int, int, int, int]
_guard = threading.Lock()
_loaded: dict[Path, dict[str, list[object]]] = {}  # memo file -> {path: [*key, sha]}


def sha256_file(path: str) -> str:
    """sha256 (lowercase hex) of the file's bytes, from the memo when the file is unchanged;
    OSError as reading it raises."""
    before = _key(os.stat(path))
    memo_file = _memo_file()
    if memo_file is None or before[2] < MIN_BYTES:
        return contenthash.sha256_file(path)
    name = os.path.abspath(path)
    with _guard:
        entry = _memo(memo_file).get(name)
    if entry is not None and tuple(entry[:5]) == before and isinstance(entry[5], str):
        return entry[5]
    digest = contenthash.sha256_file(path)
    if _key(os.stat(path)) == before:  # not written to while it was read
        with _guard:
            memo = _memo(memo_file)
            memo.pop(name, None)  # re-inserted last: the newest
            memo[name] = [*before, digest]
            while len(memo) > MAX_ENTRIES:
                memo.pop(next(iter(memo)))
            _save(memo_file, memo)
    return digest


def _key(st: os.stat_result) -> Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _memo_file() -> Path | None:
    if os.environ.get(_OVERRIDE, "").lower() == "off":
        return None
    return user_dir("CACHE", "file-hashes.json", override=_OVERRIDE)


def _memo(memo_file: Path) -> dict[str, list[object]]:
    """The memo as last read (once per process and file) or written by this process."""
    if memo_file not in _loaded:
        try:
            raw = json.loads(memo_file.read_text("utf-8"))
        except (OSError, ValueError):
            raw = {}
        _loaded[memo_file] = {k: v for k, v in raw.items() if isinstance(v, list)
                              and len(v) == 6} if isinstance(raw, dict) else {}
    return _loaded[memo_file]


def _save(memo_file: Path, memo: dict[str, list[object]]) -> None:
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".file-hashes-", dir=memo_file.parent)
    except OSError:
        return  # a read-only cache: the next deploy hashes again
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(memo, fh, separators=(",", ":"))
        os.replace(tmp, memo_file)  # concurrent deploys: the last one's memo stands
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
