"""The lock's bytecode, compiled once on the controller per (lock's wheels, Python major.minor).

uv installs without compiling, so a new venv's first import (the verify step's warmup) compiles
every module it imports: 4.5-5.9 s of `import tensorflow` against 1.9-2.2 s with .pyc files, on
every host. `ensure_bundle` unpacks the `.py` files of each wheel as they land in site-packages
(the wheel's root and its `*.data/purelib|platlib`), compiles them with an interpreter of the
hosts' Python major.minor (`compileall --invalidation-mode checked-hash`: valid whatever the
files' mtimes on the host, and a source that differs is recompiled, never trusted) and packs
only the `__pycache__/*.pyc` into one tar.gz, content-addressed and cached beside the wheel
cache: `<cache>/<key>.tar.gz` and `<key>.json` (written last: what makes an entry complete),
built once per key under a file lock, so concurrent deploys and a fleet's hosts share it.

The install step ships it only to a host that really builds the venv (venv-ensure's
BYTECODE_MISSING, as with uv); the host unpacks it before the venv's completion marker
(remote/hostops_bytecode.py). So that a new lock's first deploy does not wait for the whole
build there, the stage step of a host that lacks wheels calls `prefetch`: the build starts in a
child process (`python -m orchestrator.deploy.bytecode`, no thread of ours) while the wheels
travel, and the install step's `ensure_bundle` waits on its file lock and reads its result.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.hashing import hash_file
from orchestrator.deploy.wheelcache import Wheel

#: Part of every key: a change to what goes into an archive makes new ones.
FORMAT = "orchestrator-bytecode-1"
#: compileall's workers: the controller shares its cores with the deploy it serves.
JOBS = 2
#: Directories whose modules a served model never imports: their .pyc would be a fifth of
#: tensorflow-cpu's archive (643 of 4,415 files) written on every host for nothing. An import
#: of one still works: it compiles, as without the archive.
SKIPPED_DIRS = frozenset({"tests", "test"})


@dataclass(frozen=True)
class Bundle:
    """One lock's .pyc archive for one Python major.minor."""

    path: Path
    sha256: str
    size: int
    files: int
    build_s: float   # what building it cost, once per key (as recorded when built)
    cached: bool     # found built, not built by this call


def cache_dir_beside(wheel_cache: Path) -> Path:
    """$ORCHESTRATOR_BYTECODE_CACHE, else `bytecode` beside the wheel cache."""
    explicit = os.environ.get("ORCHESTRATOR_BYTECODE_CACHE")
    return Path(explicit).expanduser() if explicit else wheel_cache.parent / "bytecode"


def interpreter_for(python_minor: str) -> str | None:
    """An interpreter of that major.minor on the controller: its own when it matches, else
    `pythonX.Y` on PATH; None when there is none (the host then compiles on first import)."""
    if python_minor == f"{sys.version_info[0]}.{sys.version_info[1]}":
        return sys.executable
    return shutil.which(f"python{python_minor}")


def bundle_key(wheels: Mapping[str, Wheel], python_minor: str) -> str:
    """The archive's key: the wheels' hashes (what the lock resolved to) and the Python."""
    text = "\n".join([FORMAT, python_minor, *sorted(wheels)])
    return hashlib.sha256(text.encode()).hexdigest()


def ensure_bundle(wheels: Mapping[str, Wheel], python_minor: str, interpreter: str,
                  cache_dir: Path) -> Bundle | None:
    """The cached archive for these wheels, built now if it is not (once per key, whatever
    the concurrency: the first builder holds `<key>.lock`, the others wait and read its
    result). None when the wheels hold no Python source to compile."""
    key = bundle_key(wheels, python_minor)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released on close
        found = _cached(cache_dir, key)
        if found is not None:
            return found if found.files else None
        return _build(wheels, interpreter, cache_dir, key)


#: Builds started by `prefetch` in this process, by key: reaped once they end.
_children: dict[str, subprocess.Popen[bytes]] = {}
_children_guard = threading.Lock()


def prefetch(wheels: Mapping[str, Wheel], python_minor: str, interpreter: str,
             cache_dir: Path) -> bool:
    """Start building the archive in a child process, unless it is cached or a child of ours
    already builds it; True when one was started. Whatever happens to the child, nothing
    depends on it: `ensure_bundle` finds its archive, or waits for its lock, or builds."""
    key = bundle_key(wheels, python_minor)
    with _children_guard:
        for done in [k for k, child in _children.items() if child.poll() is not None]:
            del _children[done]
        if key in _children or _cached(cache_dir, key) is not None:
            return False
        cache_dir.mkdir(parents=True, exist_ok=True)
        order = {"python_minor": python_minor, "interpreter": interpreter,
                 "cache_dir": str(cache_dir),
                 "wheels": {sha: [w.filename, str(w.path)] for sha, w in wheels.items()}}
        child = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert child.stdin is not None
        with child.stdin:
            child.stdin.write(json.dumps(order).encode())
        _children[key] = child
        return True


def _build_from_order(order: Mapping[str, Any]) -> None:
    """The child's side of `prefetch`."""
    wheels = {sha: Wheel(sha, name, Path(path)) for sha, (name, path) in order["wheels"].items()}
    ensure_bundle(wheels, order["python_minor"], order["interpreter"], Path(order["cache_dir"]))


def _cached(cache_dir: Path, key: str) -> Bundle | None:
    try:
        meta = json.loads((cache_dir / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    path = cache_dir / f"{key}.tar.gz"
    if meta.get("files") and (not path.is_file() or path.stat().st_size != meta.get("size")):
        return None  # the archive went (a cache clean-up): build it again
    return Bundle(path, str(meta.get("sha256", "")), int(meta.get("size", 0)),
                  int(meta.get("files", 0)), float(meta.get("build_s", 0.0)), cached=True)


def _build(wheels: Mapping[str, Wheel], interpreter: str, cache_dir: Path,
           key: str) -> Bundle | None:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"{key[:12]}-", dir=cache_dir) as tmp:
        site = Path(tmp) / "site"
        sources = sum(_unpack_sources(w.path, site) for w in wheels.values())
        if sources:
            _compile(interpreter, site)
        archive = Path(tmp) / "bytecode.tar.gz"
        files = _pack(site, archive) if sources else 0
        size = archive.stat().st_size if files else 0
        sha256 = hash_file(str(archive)) if files else ""
        path = cache_dir / f"{key}.tar.gz"
        if files:
            os.replace(archive, path)
        build_s = round(time.monotonic() - start, 3)
        meta = {"sha256": sha256, "size": size, "files": files, "sources": sources,
                "build_s": build_s, "python": interpreter, "wheels": sorted(wheels)}
        part = cache_dir / f"{key}.json.part"
        part.write_text(json.dumps(meta, indent=1))
        os.replace(part, cache_dir / f"{key}.json")  # last: the entry is complete
    return Bundle(path, sha256, size, files, build_s, cached=False) if files else None


def _site_name(name: str) -> str | None:
    """Where a wheel member lands in site-packages, for the `.py` files that matter."""
    parts = name.split("/")
    if not name.endswith(".py") or name.startswith("/") or ".." in parts:
        return None
    if SKIPPED_DIRS.intersection(parts[:-1]):
        return None
    top, _, rest = name.partition("/")
    if top.endswith(".data"):
        scheme, _, inner = rest.partition("/")
        return inner if scheme in ("purelib", "platlib") and inner else None
    return None if top.endswith(".dist-info") else name


def _unpack_sources(wheel: Path, site: Path) -> int:
    count = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            target = _site_name(info.filename)
            if target is None or info.is_dir():
                continue
            dest = site / target
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            count += 1
    return count


def _compile(interpreter: str, site: Path) -> None:
    # -I: nothing of the controller's environment changes what is compiled. Exit 1 is a
    # source that does not compile (a template, Python 2 leftovers): it simply has no .pyc,
    # as on a host; anything else is a broken interpreter. `-s`: the code objects name their
    # file relative to site-packages, not this temp dir (an import fixes the name anyway, and
    # the archive is then the same bytes from the same wheels).
    proc = subprocess.run([interpreter, "-I", "-m", "compileall", "-q", "-j", str(JOBS),
                           "--invalidation-mode", "checked-hash", "-s", str(site), str(site)],
                          capture_output=True, text=True, check=False, timeout=1800)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{interpreter} -m compileall exited {proc.returncode}: "
                           f"{proc.stderr.strip()[-500:]}")


def _pack(site: Path, archive: Path) -> int:
    """Only `__pycache__/*.pyc`, sorted, with neutral owners and times (the gzip header's
    too): regular files the host's unpacker accepts as they are, and the same bytes from the
    same wheels on any controller."""
    pycs = sorted(p for p in site.rglob("__pycache__/*.pyc") if p.is_file())
    with open(archive, "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in pycs:
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(site).as_posix())
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return len(pycs)


if __name__ == "__main__":  # prefetch's child: the order as JSON on stdin
    _build_from_order(json.loads(sys.stdin.buffer.read()))
