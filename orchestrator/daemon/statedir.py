"""The daemon's state dir on disk: the lock that keeps a second daemon out of it, and the files
and folders in it, created private (0600 / 0700) whatever the umask. Used by the store's SQLite
backend, the event logs, the bundles and the daemon process alike."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import IO, Any

from orchestrator.errors import StateDirLocked


def lock_state_dir(state_dir: Path) -> IO[str]:
    """Hold `<state_dir>/daemon.lock` for the life of the process; a second daemon is refused.

    The returned file must stay open: closing it (or the process dying) releases the lock, so
    a crashed daemon never leaves a stale lock behind."""
    private_dir(state_dir)
    handle = open_private(state_dir / "daemon.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise StateDirLocked(
            f"another orchestrator daemon (pid {owner}) already uses the state dir {state_dir}"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


# ---- the state dir's files are the daemon's alone -------------------------------------------
# They hold what was deployed where, host facts, error output from hosts, uploaded models and
# golden files: created 0600 (dirs 0700) whatever the umask the daemon was started with, since
# a umask of 022 (the usual login default) would leave every one of them world-readable.


def private_dir(path: Path) -> None:
    """Create `path` 0700 (missing parents as `mkdir -p` would). An existing directory keeps its
    mode: the operator chose it (systemd's StateDirectoryMode, for one)."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return  # created meanwhile by another thread or process: theirs to set
    os.chmod(path, 0o700)  # mkdir's mode is masked by the umask; a umask may remove too much


def open_private(path: Path, mode: str, encoding: str | None = "utf-8") -> IO[Any]:
    """`open(path, mode)`, the file created 0600, or tightened to 0600 if an older daemon left
    it wider."""
    def opener(name: str, flags: int) -> int:
        fd = os.open(name, flags | os.O_CLOEXEC, 0o600)
        try:
            _tighten_fd(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    return open(path, mode, encoding=None if "b" in mode else encoding,
                opener=opener)


def tighten(path: Path) -> None:
    """Make an existing file of ours 0600 (a missing one is not an error)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        _tighten_fd(fd)
    finally:
        os.close(fd)


def _tighten_fd(fd: int) -> None:
    info = os.fstat(fd)
    # Another user's file (a state dir shared by hand) is theirs to protect, and chmod would fail.
    if stat.S_IMODE(info.st_mode) != 0o600 and info.st_uid == os.geteuid():
        os.fchmod(fd, 0o600)
