"""The daemon's durable state, as an interface: what every part of the daemon may ask of it.

`Store` is the protocol the daemon's modules are typed against; `open_store` picks the backend. The
one backend today is SQLite in the state dir (orchestrator/daemon/sqlite_store.py, the embedded
default); a second one (PostgreSQL, for several daemons) is a new module implementing `Store`, and a
branch in `open_store`. The schema both share is orchestrator/daemon/schema.py's migrations.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any, Protocol

from orchestrator.core.states import DeploymentState, HostStepState
from orchestrator.daemon.schema import (
    HOST_STATUSES,
    MIGRATIONS,
    SCHEMA_VERSION,
    DeploymentRecord,
    StepRecord,
)
from orchestrator.errors import StateDirLocked

__all__ = ["HOST_STATUSES", "MIGRATIONS", "SCHEMA_VERSION", "DeploymentRecord", "StepRecord",
           "Store", "lock_state_dir", "open_private", "open_store", "private_dir", "tighten"]


class Store(Protocol):
    """Deployments, their steps and events, hosts, re-verification results, watched specs.
    Thread-safe; state changes are re-checked against core/states.py inside the write."""

    path: Path

    def close(self) -> None:
        ...

    def schema_version(self) -> int:
        ...

    def create_deployment(self, deployment: str, app: str, spec: dict[str, Any]) -> None:
        ...

    def get_deployment(self, deployment: str) -> DeploymentRecord:
        ...

    def list_deployments(
        self, *, states: frozenset[DeploymentState] | None = None, app: str | None = None,
        limit: int = 100,
    ) -> list[DeploymentRecord]:
        ...

    def transition_deployment(
        self, deployment: str, new: DeploymentState, *, result: dict[str, Any] | None = None
    ) -> DeploymentState:
        ...

    def transition_step(
        self, deployment: str, host: str, step: str, new: HostStepState, *,
        detail: dict[str, Any] | None = None,
    ) -> HostStepState | None:
        ...

    def steps(self, deployment: str) -> list[StepRecord]:
        ...

    def append_event(self, event: dict[str, Any]) -> int:
        """Insert the event with the next seq of its deployment; returns that seq."""
        ...

    def events(
        self, deployment: str, *, after: int = 0, host: str | None = None, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        ...

    def last_event_ts(self, deployment: str) -> float | None:
        ...

    def record_host(
        self, host: str, status: str, reasons: list[str], facts: dict[str, Any] | None
    ) -> None:
        ...

    def hosts(self) -> list[dict[str, Any]]:
        """The latest record of every host ever probed."""
        ...

    def record_release(
        self, host: str, app: str, release_id: str, state: str, deployment: str | None = None
    ) -> None:
        ...

    def record_app_result(self, host: str, app: str, status: str, reasons: list[str]) -> None:
        """The app's latest re-verification result on the host (replaces the previous one)."""
        ...

    def app_results(self, host: str) -> dict[str, tuple[str, list[str]]]:
        """{app: (status, reasons)} of the host's latest re-verification result per app."""
        ...

    def forget_app_results(self, host: str, keep: Collection[str]) -> list[str]:
        """Drop the host's results of apps not in `keep` (no longer on the host); returns them."""
        ...

    def watched(self) -> dict[str, str]:
        """path -> digest of every spec file the watcher has handled."""
        ...

    def record_watched(self, path: str, digest: str, deployment: str | None,
                       error: str | None) -> None:
        ...

    def releases(self, app: str) -> list[dict[str, Any]]:
        ...


def open_store(path: Path) -> Store:
    """The daemon's store at `path` (created, migrated and integrity-checked at open)."""
    from orchestrator.daemon.sqlite_store import SqliteStore

    return SqliteStore.open(path)


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
