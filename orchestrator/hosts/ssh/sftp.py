"""Files over SFTP: atomic uploads, and bounded reads of what a host sends back.

A host is untrusted input. A file the controller reads back (a `.complete` marker, a release's
manifest) may have been replaced by a symlink to /dev/zero, a FIFO that never opens, or a file of
gigabytes; read naively, one such host grows the daemon until it dies of MemoryError with every
deployment in flight. So a read here is refused unless the path is a regular file, stops at a
byte cap, and has a deadline enforced on every SFTP request (a host that stops answering cannot
hold a worker). Each refusal is a `HostError` naming the host and the path.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paramiko

from orchestrator.errors import BadHostOutput, CommandTimeout, OutputTooLarge

_REQUEST = 1 << 15  # paramiko's largest SFTP read request (SFTPFile.MAX_REQUEST_SIZE)
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"))


def put_file(sftp: paramiko.SFTPClient, data_or_local_path: bytes | Path, remote_path: str,
             mode: int, progress: Callable[[int, int], None] | None = None) -> None:
    """Upload to a temporary name, chmod, then rename: readers never see a partial file.
    Missing parent directories are created (over SFTP: no shell, no extra command).
    `progress(sent, size)` is paramiko's own callback, per 32 KiB written.
    Raises OSError (the server refused) or paramiko's errors; the caller maps them."""
    tmp = f"{remote_path}.part-{uuid.uuid4().hex[:8]}"
    try:
        try:
            _write(sftp, data_or_local_path, tmp, progress)
        except FileNotFoundError:
            _makedirs(sftp, posixpath.dirname(remote_path))
            _write(sftp, data_or_local_path, tmp, progress)
        sftp.chmod(tmp, mode)
        sftp.posix_rename(tmp, remote_path)
    except OSError:
        _discard(sftp, tmp)
        raise


def _write(sftp: paramiko.SFTPClient, data_or_local_path: bytes | Path, path: str,
           progress: Callable[[int, int], None] | None) -> None:
    if isinstance(data_or_local_path, bytes):
        sftp.putfo(io.BytesIO(data_or_local_path), path, file_size=len(data_or_local_path),
                   callback=progress, confirm=True)
    else:
        sftp.put(os.fspath(data_or_local_path), path, callback=progress, confirm=True)


def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    missing: list[str] = []
    while path not in ("", "/"):
        try:
            sftp.stat(path)
            break
        except FileNotFoundError:
            missing.append(path)
            path = posixpath.dirname(path)
    for directory in reversed(missing):
        try:
            sftp.mkdir(directory)
        except OSError:
            # Created meanwhile by a concurrent upload is fine; anything else is not.
            if not stat.S_ISDIR(sftp.stat(directory).st_mode or 0):
                raise


def _discard(sftp: paramiko.SFTPClient, path: str) -> None:
    # nothing was written, or the connection is gone: either way nothing to clean
    with contextlib.suppress(OSError, paramiko.SSHException):
        sftp.remove(path)


def get_file(sftp: paramiko.SFTPClient, host: str, remote_path: str, *, max_bytes: int,
             timeout: float) -> bytes:
    """The content of a regular file of at most `max_bytes`, read within `timeout` seconds.

    Raises `BadHostOutput` (not a regular file: checked before opening, so a FIFO is never
    opened, and again on the open handle), `OutputTooLarge` (over the cap, by its size or by
    what was read: a file may grow, and procfs files report size 0), `CommandTimeout` (the
    deadline passed, whichever request was waiting). After any of these the SFTP session may
    hold unanswered requests: the caller must not reuse it. OSError and paramiko's errors
    propagate for the caller to map, as for `put_file`.
    """
    channel = sftp.get_channel()
    assert channel is not None  # an open SFTPClient always has its channel
    deadline = time.monotonic() + timeout

    def arm() -> None:
        """Bound the next request by what is left of the deadline (paramiko raises
        socket.timeout, a TimeoutError, from the channel's recv when it passes)."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        channel.settimeout(left)

    previous = channel.gettimeout()
    try:
        arm()
        _check_attributes(host, remote_path, sftp.stat(remote_path), max_bytes)
        arm()
        handle = sftp.open(remote_path, "rb")
        try:
            arm()
            _check_attributes(host, remote_path, handle.stat(), max_bytes)
            return _read_capped(handle, host, remote_path, max_bytes, arm)
        finally:
            # Within what is left of the deadline, and never blocking long: after a timeout
            # the caller drops the session anyway (paramiko's close swallows its OSError).
            channel.settimeout(max(deadline - time.monotonic(), 0.01))
            handle.close()
    except TimeoutError:
        raise CommandTimeout(
            host, f"reading {remote_path} did not finish within {timeout:g} s; stopped"
        ) from None
    finally:
        channel.settimeout(previous)


def _read_capped(handle: paramiko.SFTPFile, host: str, path: str, max_bytes: int,
                 arm: Callable[[], None]) -> bytes:
    """Request by request (no prefetch: nothing is asked for past the cap, nothing is left
    in flight but the one request a timeout interrupts)."""
    chunks: list[bytes] = []
    size = 0
    while size <= max_bytes:
        arm()
        chunk = handle.read(_REQUEST)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    raise _too_large(host, path, max_bytes, f"more than {max_bytes} bytes")


def _check_attributes(host: str, path: str, attrs: paramiko.SFTPAttributes,
                      max_bytes: int) -> None:
    mode = attrs.st_mode or 0
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), f"mode {mode:o}")
        raise BadHostOutput(host, f"{path} is {kind}, not a regular file; refusing to read it")
    if attrs.st_size is not None and attrs.st_size > max_bytes:
        raise _too_large(host, path, max_bytes, f"{attrs.st_size} bytes")


def _too_large(host: str, path: str, max_bytes: int, size: str) -> OutputTooLarge:
    return OutputTooLarge(host, f"{path} is {size}, over the cap of {max_bytes} bytes for this"
                                " file; not read")
