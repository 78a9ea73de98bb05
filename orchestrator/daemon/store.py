"""The daemon's durable state, as an interface: what every part of the daemon may ask of it.

`Store` is the protocol the daemon's modules are typed against; `open_store` picks the backend. The
one backend today is SQLite in the state dir (orchestrator/daemon/sqlite_store.py, the embedded
default); a second one (PostgreSQL, for several daemons) is a new module implementing `Store`, and a
branch in `open_store`. The schema both share is orchestrator/daemon/schema.py's migrations.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol

from orchestrator.core.states import DeploymentState, HostStepState
from orchestrator.daemon.schema import (
    HOST_STATUSES,
    MIGRATIONS,
    SCHEMA_VERSION,
    DeploymentRecord,
    StepRecord,
)
from orchestrator.daemon.sqlite_store import SqliteStore

__all__ = ["HOST_STATUSES", "MIGRATIONS", "SCHEMA_VERSION", "DeploymentRecord", "StepRecord",
           "Store", "open_store"]


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
    return SqliteStore.open(path)
