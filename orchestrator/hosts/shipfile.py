"""One large file shipped whole to a host, content-addressed: the controller's uv binary (38 MB,
to every host that builds a venv) and a lock's .pyc archive (deploy/bytecode.py, ~23 MB).

Both go by `file-receive` (remote/hostops_receive.py) on one exec channel: the host hashes what
it writes under a temporary name and renames it into place only when the sha256 is the one
announced (`hash-mismatch`, `missing-file`, `too-large` otherwise, nothing kept). They went by
SFTP before, about 2 s of controller CPU per GB (each 32 KiB write answered by a status packet
paramiko's reader thread must process); a stream costs about 0.9 s/GB (ssh/stream.py).

A transport that cannot stream (a test's fake) gets the SFTP put, to where the host looks:
uv at its final path, the archive as `<path>.part` (venv-ensure hashes and renames it,
hostops_bytecode.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol, TypeVar

from orchestrator.core.filehashes import sha256_file
from orchestrator.hosts import layout, ops
from orchestrator.hosts.ops import OpCall
from orchestrator.hosts.transport import FileStreamer, Transport

T = TypeVar("T")
#: A put callback (sent, size), as the transport's put takes it (deploy/progress.py `upload`).
PutProgress = Callable[[int, int], None]


class HostOps(Protocol):
    """What shipping a file needs of `orchestrator.hosts.hostops.HostOps` (which calls this
    module: a protocol here, not an import back)."""

    @property
    def root(self) -> str: ...

    @property
    def transport(self) -> Transport: ...

    def stream(self, call: OpCall[T], files: Sequence[tuple[Path, int]], timeout: float,
               progress: Callable[[int], PutProgress] | None = None) -> T: ...


def uv_path(deploy_root: str, uv_binary: Path) -> str:
    """Where this uv binary lives on the host (content-addressed; maybe not there yet)."""
    return layout.uv_binary(deploy_root, file_sha256(uv_binary))


def ship_uv(host_ops: HostOps, uv_binary: Path, *, timeout: float,
            progress: PutProgress | None = None) -> str:
    """Send the controller's uv binary to the host (executable, hashed there); its path."""
    sha = file_sha256(uv_binary)
    remote = layout.uv_binary(host_ops.root, sha)
    _ship(host_ops, "uv", uv_binary, sha, remote, 0o755, timeout, progress)
    return remote


def ship_bytecode(host_ops: HostOps, archive: Path, sha256: str, *, timeout: float,
                  progress: PutProgress | None = None) -> None:
    """Send a .pyc archive (its sha256 known from its build) to where venv-ensure finds it."""
    remote = layout.bytecode_archive(host_ops.root, sha256) + ".part"
    _ship(host_ops, "bytecode", archive, sha256, remote, 0o644, timeout, progress)


def _ship(host_ops: HostOps, what: str, local: Path, sha256: str, put_to: str, mode: int,
          timeout: float, progress: PutProgress | None) -> None:
    size = local.stat().st_size
    if isinstance(host_ops.transport, FileStreamer):
        host_ops.stream(ops.file_receive(what, sha256, size), [(local, size)], timeout,
                        None if progress is None else lambda _base: progress)
    else:
        host_ops.transport.put(local, put_to, mode, progress)


def file_sha256(path: Path) -> str:
    st = path.stat()
    return _remembered(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=8)
def _remembered(path: str, size: int, mtime_ns: int) -> str:
    """Within a process, once per (file, size, mtime) even with the on-disk memo off: every
    host's install asks for uv's path (core/filehashes.py remembers it across deploys)."""
    return sha256_file(path)
