"""hostops' arrivals by stream: `wheels-receive` reads every wheel the controller sends on
one exec channel, hashing each as it writes it, and renames into the wheel cache only the files
whose sha256 is the one announced; `model-receive` does the same for a large model's files into
the release being staged (whose tree hash stage-verify-model then checks). Shipped beside
hostops.py (stdlib only, 3.9+).

Its stdin: one JSON line (the arguments: root, files [{sha, size}, ...]), then each file's
`size` bytes back to back, in that order. A file whose bytes hash otherwise is deleted and
reported (`wheel-hash-mismatch`, as `wheels-verify` reports it); the stream is read on to the
next frame, so the other files still land. A stream that ends early leaves no partial file:
`missing-wheel` names what never arrived whole.

`file-receive` takes one file the controller ships whole, content-addressed: the uv binary
(`what` "uv", at bin/uv-<sha prefix>, executable) or a lock's .pyc archive ("bytecode", at
bytecode/<sha>.tar.gz). It lands under a temporary name and is renamed into place only when it
hashes right; a short stream (`missing-file`), more bytes than announced or allowed
(`too-large`) or another hash (`hash-mismatch`) leaves nothing behind. The tools bundle itself
cannot come this way (this script is in it): toolsreceive.py is its receiver.
"""

from __future__ import annotations

import hashlib
import os
import sys

import hostlayout
from hostops_fs import (
    HASH_RE,
    RELEASE_RE,
    OpError,
    app_dir_arg,
    checked_arg,
    fsync_dir,
    orch_path,
    root_arg,
)
from hostops_releases import STAGING, releases_dir
from hostops_stage import safe_relpath

#: Wheels larger than this are refused before a byte is written (a wheel of cuDNN is ~700 MB).
MAX_WHEEL_BYTES = 8 << 30
MAX_FILES = 10000
_CHUNK = 1 << 20


def _files(args):
    files = checked_arg(args, "files")
    if not isinstance(files, list) or len(files) > MAX_FILES:
        raise OpError("bad-args", f"files must be a list of at most {MAX_FILES} entries")
    out = []
    for entry in files:
        if not (isinstance(entry, dict) and isinstance(entry.get("sha"), str)
                and HASH_RE.match(entry["sha"]) and isinstance(entry.get("size"), int)
                and not isinstance(entry["size"], bool) and 0 <= entry["size"] <= MAX_WHEEL_BYTES):
            raise OpError("bad-args", f"bad file entry {entry!r}: want {{sha, size}}")
        out.append((entry["sha"], entry["size"]))
    return out


def _receive_one(stream, part, size):
    """Copy exactly `size` bytes of the stream into `part`; their sha256, or None when the
    stream ended first (the partial file is removed)."""
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        sha, left = _copy_hashed(stream, fd, size)
    finally:
        os.close(fd)
    if left:
        os.unlink(part)
        return None
    return sha


def _copy_hashed(stream, fd, size):
    """Copy up to `size` bytes of the stream to fd: (their sha256, the bytes still missing
    when the stream ended first)."""
    digest, left = hashlib.sha256(), size
    while left:
        chunk = stream.read(min(left, _CHUNK))
        if not chunk:
            break
        left -= len(chunk)
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
    return digest.hexdigest(), left


def op_wheels_receive(args, stream=None):
    """See the module docstring. Returns verified (the shas now in the cache)."""
    files = _files(args)
    wheels = orch_path(root_arg(args), "wheels")
    os.makedirs(wheels, exist_ok=True)
    stream = sys.stdin.buffer if stream is None else stream
    verified: list[str] = []
    bad: list[dict[str, str]] = []
    missing: list[str] = []
    for sha, size in files:
        final = os.path.join(wheels, sha + ".whl")
        part = f"{final}.part-{os.getpid()}"
        if missing:  # the stream already ended: nothing more will come
            missing.append(sha)
            continue
        actual = _receive_one(stream, part, size)
        if actual is None:
            missing.append(sha)
        elif actual == sha:
            os.replace(part, final)
            verified.append(sha)
        else:
            os.unlink(part)
            bad.append({"expected": sha, "actual": actual})
    fsync_dir(wheels)
    if bad or missing:
        what = [f"{b['expected']} arrived as {b['actual']}" for b in bad]
        what += [f"{m} never arrived whole" for m in missing]
        raise OpError("wheel-hash-mismatch" if bad else "missing-wheel",
                      "wheel upload failed verification: " + "; ".join(what),
                      verified=verified, bad=bad, missing=missing)
    return {"verified": verified}


def op_model_receive(args, stream=None):
    """app, release_id, files [{path, size}] (relative to the release being staged), then their
    bytes: what the model's SFTP puts did, on one channel. Each file lands under a temporary
    name and is renamed whole; the model's hash is checked next by stage-verify-model, over
    the whole tree, as after SFTP."""
    app_dir, rid = app_dir_arg(args), checked_arg(args, "release_id", RELEASE_RE)
    entries = checked_arg(args, "files")
    if not isinstance(entries, list) or len(entries) > MAX_FILES:
        raise OpError("bad-args", f"files must be a list of at most {MAX_FILES} entries")
    files = []
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("size"), int)
                and not isinstance(entry["size"], bool) and entry["size"] >= 0):
            raise OpError("bad-args", f"bad file entry {entry!r}: want {{path, size}}")
        files.append((safe_relpath(entry.get("path"), "path"), entry["size"]))
    staging = os.path.join(releases_dir(app_dir), rid) + STAGING
    if not os.path.isdir(staging):
        raise OpError("not-found", f"release {rid} is not being staged", release_id=rid)
    stream = sys.stdin.buffer if stream is None else stream
    written = 0
    for rel, size in files:
        target = os.path.join(staging, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        part = f"{target}.part-{os.getpid()}"
        if _receive_one(stream, part, size) is None:
            raise OpError("missing-file", f"{rel} never arrived whole ({size} bytes announced)",
                          path=rel)
        os.replace(part, target)
        written += size
    return {"files": len(files), "bytes": written}


#: What `file-receive` may write: its path by sha256, its mode, its bound once unpacked.
TARGETS = {
    "uv": (hostlayout.uv_binary, 0o755, 1 << 30),  # uv 0.9: ~40 MB
    "bytecode": (hostlayout.bytecode_archive, 0o644, 4 << 30),  # unpacking bounds it again
}


def _size_arg(args, key, bound):
    value = args.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise OpError("bad-args", f"{key} must be a byte count: {value!r}")
    if value > bound:
        raise OpError("too-large", f"{key} {value} is over the {bound} bytes allowed",
                      size=value, bound=bound)
    return value


def op_file_receive(args, stream=None):
    """what, sha, size: see the module docstring. Returns path and bytes."""
    root, what = root_arg(args), args.get("what")
    if what not in TARGETS:
        raise OpError("bad-args", f"what must be one of {sorted(TARGETS)}: {what!r}")
    path_of, mode, bound = TARGETS[what]
    sha = checked_arg(args, "sha", HASH_RE)
    size = _size_arg(args, "size", bound)
    final = path_of(root, sha)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    part = f"{final}.part-{os.getpid()}"
    stream = sys.stdin.buffer if stream is None else stream
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        actual = _copy(stream, fd, size, f"{what} {final}")
        if actual != sha:
            raise OpError("hash-mismatch", f"{what} {final} arrived as sha256 {actual}, "
                          f"expected {sha}; nothing kept", expected=sha, actual=actual,
                          path=final)
        os.fchmod(fd, mode)
        os.fsync(fd)  # renamed only once whole on disk: a crash never leaves a torn uv
    except BaseException:
        os.close(fd)
        os.unlink(part)
        raise
    os.close(fd)
    os.replace(part, final)
    fsync_dir(os.path.dirname(final))
    return {"path": final, "bytes": size}


def _copy(stream, fd, size, name):
    """Copy exactly `size` bytes of the stream to fd, and no more may follow; their sha256."""
    sha, left = _copy_hashed(stream, fd, size)
    if left:
        raise OpError("missing-file", f"{name} never arrived whole: {size - left} of "
                      f"{size} bytes", path=name)
    if stream.read(1):
        raise OpError("too-large", f"{name}: the stream goes on past the {size} bytes "
                      "announced; nothing kept", path=name)
    return sha


OPS = {"wheels-receive": op_wheels_receive, "model-receive": op_model_receive,
       "file-receive": op_file_receive}
#: Ops whose stdin is their arguments' JSON line followed by data (hostops.py reads one line).
STREAMING = frozenset(OPS)
