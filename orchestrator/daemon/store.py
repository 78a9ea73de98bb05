"""The daemon's durable state, as an interface: what every part of the daemon may ask of it.

`Store` is the protocol the daemon's modules are typed against; `open_store` picks the backend:
SQLite in the state dir (orchestrator/daemon/sqlite_store.py, the embedded default) or, for a
`postgresql://` URL, PostgreSQL shared by several daemons (orchestrator/daemon/pg_store.py). Both
run the queries of orchestrator/daemon/sql_store.py on the migrations of
orchestrator/daemon/schema.py.
"""

from __future__ import annotations

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
from orchestrator.daemon.sql_requests import Answer, Request
from orchestrator.daemon.sqlite_store import SqliteStore

__all__ = ["HOST_STATUSES", "MIGRATIONS", "SCHEMA_VERSION", "DeploymentRecord", "StepRecord",
           "Store", "is_postgres", "open_store"]


class Store(Protocol):
    """Deployments, their steps and events, hosts, re-verification results, watched specs.
    Thread-safe; state changes are re-checked against core/states.py inside the write."""

    location: str  # the file, or the database without its password: for messages
    shared: bool   # other daemons may use it too: bundles live in it, leases are contended

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

    def restart_steps(self, deployment: str, host: str) -> int:
        """Clear a host's pipeline rows before a resumed deployment deploys it again."""
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

    def notifications(self) -> list[tuple[str, int]]:
        """(deployment, seq) of the events committed since the last call, by any daemon."""
        ...

    def listen_fd(self) -> int | None:
        """A socket readable when `notifications` has news (PostgreSQL's LISTEN connection),
        or None; never connects or blocks."""
        ...

    def record_host(
        self, host: str, status: str, reasons: list[str], facts: dict[str, Any] | None
    ) -> None:
        ...

    def hosts(self, names: Collection[str] | None = None) -> list[dict[str, Any]]:
        """The latest record of every host ever probed (or of those in `names`)."""
        ...

    def host_names(self) -> list[str]:
        """Every host ever probed, sorted."""
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

    def fleet_app_results(self, names: Collection[str] | None = None
                          ) -> dict[str, dict[str, dict[str, Any]]]:
        """{host: {app: {status, reasons, ts}}} of every host (or of `names`): one query."""
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

    def put_bundle(self, deployment: str, archive: IO[bytes]) -> str:
        """Store a submitted bundle's archive, streamed in chunks; returns its sha256."""
        ...

    def get_bundle(self, deployment: str, out: IO[bytes]) -> bool:
        """Stream the stored archive to `out`, hash-checked; False when there is none."""
        ...

    def drop_bundle(self, deployment: str) -> None:
        ...

    def claim(self, kind: str, key: str, owner: str, ttl_s: float,
              now: float | None = None) -> int | None:
        """The lease on (kind, key) for `owner`: its fencing token, or None if held."""
        ...

    def renew(self, kind: str, key: str, owner: str, token: int, ttl_s: float) -> bool:
        ...

    def release(self, kind: str, key: str, owner: str, token: int) -> None:
        ...

    def lease(self, kind: str, key: str) -> dict[str, Any] | None:
        ...

    def expire_leases(self) -> int:
        """Every lease expired now: for a store no other daemon can use (SQLite, under the
        state dir's lock), whatever holds it is a dead process of this daemon."""
        ...

    def ask(self, deployment: str, action: str, arg: str | None = None) -> str:
        """An action for the daemon that holds `deployment` (daemon/sql_requests.py)."""
        ...

    def open_requests(self) -> list[Request]:
        ...

    def answer(self, request: str, status: int, error: str | None = None) -> bool:
        ...

    def answer_of(self, request: str) -> Answer | None:
        ...


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def open_store(target: Path | str) -> Store:
    """The daemon's store: a `postgresql://` URL (migrated at open; psycopg imported only
    then), else the SQLite file at that path (created, migrated and integrity-checked)."""
    if is_postgres(target):
        from orchestrator.daemon.pg_store import PostgresStore

        return PostgresStore.open(str(target))
    return SqliteStore.open(Path(target))


def describe(store: Store, deployment: str) -> dict[str, Any]:
    """A deployment with its per-host steps, as the API returns it."""
    record = store.get_deployment(deployment)
    hosts: dict[str, dict[str, Any]] = {}
    for step in store.steps(deployment):
        entry = hosts.setdefault(step.host, {"state": str(HostStepState.PENDING), "steps": []})
        entry["steps"].append(step.as_json())
        entry["state"] = str(step.state)
    return {**record.as_json(), "hosts": hosts}
