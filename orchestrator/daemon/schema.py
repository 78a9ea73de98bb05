"""What the daemon's store holds: the schema, as migrations, and the records it gives back.

`MIGRATIONS[i]` moves a store from version i to i+1; a new table or column is a new entry at the
end, never an edit of an old one (an existing state dir is upgraded in place at open).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from orchestrator.core.states import DeploymentState, HostStepState

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the first schema.
    """
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY, app TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
        created REAL NOT NULL, updated REAL NOT NULL, result TEXT
    );
    CREATE INDEX deployments_app ON deployments(app, state);
    CREATE TABLE steps (
        deployment TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
        host TEXT NOT NULL, step TEXT NOT NULL, state TEXT NOT NULL,
        intent REAL, outcome REAL, started REAL, finished REAL, detail TEXT,
        PRIMARY KEY (deployment, host, step)
    );
    CREATE TABLE events (
        deployment TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL, ts REAL NOT NULL, level TEXT NOT NULL, event TEXT NOT NULL,
        host TEXT, step TEXT, status TEXT, duration_ms REAL, details TEXT NOT NULL,
        PRIMARY KEY (deployment, seq)
    );
    CREATE TABLE host_facts (
        host TEXT NOT NULL, ts REAL NOT NULL, facts TEXT, status TEXT NOT NULL,
        reasons TEXT NOT NULL,
        PRIMARY KEY (host, ts)
    );
    CREATE TABLE releases (
        host TEXT NOT NULL, app TEXT NOT NULL, release_id TEXT NOT NULL, state TEXT NOT NULL,
        deployment TEXT, updated REAL NOT NULL,
        PRIMARY KEY (host, app, release_id)
    );
    """,
    # 1 -> 2: specs_dir watching remembers what it already rolled out, across restarts; listing
    # by state (in-flight deployments, at every start and watchdog round) uses an index.
    """
    CREATE INDEX deployments_state ON deployments(state, created);
    CREATE TABLE watched_specs (
        path TEXT PRIMARY KEY, digest TEXT NOT NULL, deployment TEXT, error TEXT,
        updated REAL NOT NULL
    );
    """,
    # 2 -> 3: the last re-verification result of each app on each host. A host's status is the
    # worst over its apps', so after a restart a run of one app must still see the others'.
    """
    CREATE TABLE app_results (
        host TEXT NOT NULL, app TEXT NOT NULL, status TEXT NOT NULL, reasons TEXT NOT NULL,
        ts REAL NOT NULL,
        PRIMARY KEY (host, app)
    );
    """,
    # 3 -> 4: several daemons on one store (issue 16). A submitted bundle in the store (a tar in
    # chunked rows, its sha256 checked on the way out), so any daemon can run what another
    # received; written before its deployment row, hence no foreign key. Leases: which daemon
    # holds a deployment or a scheduled re-verification, until when, under which fencing token
    # (it only grows, per work item, so a host can tell a stale holder from the current one).
    """
    CREATE TABLE bundles (
        deployment TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size BIGINT NOT NULL,
        chunks INTEGER NOT NULL, created REAL NOT NULL
    );
    CREATE TABLE bundle_chunks (
        deployment TEXT NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL,
        PRIMARY KEY (deployment, n)
    );
    CREATE TABLE leases (
        kind TEXT NOT NULL, key TEXT NOT NULL, owner TEXT NOT NULL, token BIGINT NOT NULL,
        expiry REAL NOT NULL,
        PRIMARY KEY (kind, key)
    );
    """,
    # 4 -> 5: actions asked of another daemon (issue 16). Pause, resume, abort, cancel or
    # rollback of a deployment that another daemon works on is written here by the daemon the
    # client asked; the holder of the deployment's lease acts on it and writes the answer
    # (daemon/routing.py). An id made by the asker (no sequence: the two dialects differ there).
    """
    CREATE TABLE requests (
        id TEXT PRIMARY KEY, deployment TEXT NOT NULL, action TEXT NOT NULL, arg TEXT,
        created REAL NOT NULL, answered REAL, status INTEGER, error TEXT
    );
    CREATE INDEX requests_open ON requests(answered, deployment);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
# The migrations are written in SQLite's words; PostgreSQL's differ only in these types (REAL
# is 4 bytes there: a timestamp would lose its seconds). Applied by `for_dialect`.
POSTGRES_TYPES = {"REAL": "DOUBLE PRECISION", "BLOB": "BYTEA"}
HOST_STATUSES = ("healthy", "degraded", "failed", "unreachable")


def for_dialect(migration: str, dialect: str) -> list[str]:
    """The statements of one migration for `dialect` ("sqlite" or "postgresql")."""
    if dialect == "postgresql":
        migration = re.sub(r"\b(REAL|BLOB)\b", lambda m: POSTGRES_TYPES[m.group(1)], migration)
    return [s for s in migration.split(";") if s.strip()]


@dataclass(frozen=True)
class DeploymentRecord:
    id: str
    app: str
    spec: dict[str, Any]
    state: DeploymentState
    created: float
    updated: float
    result: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "app": self.app, "state": str(self.state), "created": self.created,
            "updated": self.updated, "result": self.result,
            "targets": self.spec.get("targets", []),
        }


@dataclass(frozen=True)
class StepRecord:
    host: str
    step: str
    state: HostStepState
    started: float | None
    finished: float | None
    detail: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        return {
            "host": self.host, "step": self.step, "state": str(self.state),
            "started": self.started, "finished": self.finished, "detail": self.detail,
        }
