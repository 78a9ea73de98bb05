"""The daemon's durable state: one SQLite file under the state dir.

WAL journal with synchronous=FULL (a commit survives power loss, and readers never block the
writer), foreign keys on, a busy timeout. The schema is versioned: `MIGRATIONS[i]` moves the file
from version i to i+1, each in its own transaction, so an old file is upgraded in place at open.
`PRAGMA quick_check` runs at open and a damaged file is refused with a clear message instead of
being written to further.

One writer connection, guarded by one lock, serves every thread (paramiko workers and the API's
thread pool): the daemon's write rate is a few events per step, far below what one connection
does. Reads go through one read connection per thread instead: in WAL mode they see the last
commit without waiting for the writer's fsync, so fifty followers catching up from the store
never queue behind (or slow) the events being written.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.core.states import (
    DeploymentState,
    HostStepState,
    check_deployment_transition,
    check_step_transition,
)
from orchestrator.daemon.schema import (
    HOST_STATUSES,
    MIGRATIONS,
    SCHEMA_VERSION,
    DeploymentRecord,
    StepRecord,
)
from orchestrator.daemon.statedir import open_private, private_dir, tighten
from orchestrator.errors import NotFound, StoreCorrupt

__all__ = ["SqliteStore", "event_from_row"]


class SqliteStore:
    """Thread-safe access to the SQLite file. Open with `SqliteStore.open(path)`; the rest of the
    daemon sees it as a `Store` (orchestrator/daemon/store.py)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path
        self._local = threading.local()
        self._readers: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._readers_lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, path: Path) -> SqliteStore:
        private_dir(path.parent)
        # Created 0600 before SQLite opens it (an empty file is an empty database): SQLite gives
        # the -wal and -shm files it creates the database file's mode, whatever the umask.
        open_private(path, "ab").close()
        for companion in ("-wal", "-shm"):  # left wider by an older daemon: tightened
            tighten(path.with_name(path.name + companion))
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
            _check_integrity(conn, path)
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON",
                           "busy_timeout=10000"):
                conn.execute(f"PRAGMA {pragma}")
            store = cls(conn, path)
            store._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(f"{path}: not a usable orchestrator store: {exc}") from exc
        return store

    def close(self) -> None:
        with self._lock, self._readers_lock:
            self._closed = True
            for _, reader in self._readers:
                reader.close()
            self._readers.clear()
            self._conn.close()

    def _reader(self) -> sqlite3.Connection:
        reader: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if reader is None:
            reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                     timeout=10)
            reader.execute("PRAGMA busy_timeout=10000")
            reader.execute("PRAGMA query_only=ON")
            reader.row_factory = sqlite3.Row
            with self._readers_lock:
                if self._closed:
                    reader.close()
                    raise sqlite3.ProgrammingError("the store is closed")
                # Threads come and go (per-rollout host pools): close their readers with them.
                for thread, old in [r for r in self._readers if not r[0].is_alive()]:
                    old.close()
                    self._readers.remove((thread, old))
                self._readers.append((threading.current_thread(), reader))
            self._local.conn = reader
        return reader

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        rows: list[sqlite3.Row] = self._reader().execute(sql, args).fetchall()
        return rows

    def _migrate(self) -> None:
        with self._tx() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (0)")
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise StoreCorrupt(
                f"{self.path}: schema version {version} is newer than this orchestrator "
                f"({SCHEMA_VERSION}); upgrade the orchestrator or restore a backup"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._tx() as conn:
                for statement in MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("UPDATE schema_version SET version = ?", (target,))

    def schema_version(self) -> int:
        return int(self._query("SELECT version FROM schema_version")[0][0])

    # -- deployments -------------------------------------------------------------------------

    def create_deployment(self, deployment: str, app: str, spec: dict[str, Any]) -> None:
        now = time.time()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO deployments VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (deployment, app, json.dumps(spec), str(DeploymentState.QUEUED), now, now),
            )

    def get_deployment(self, deployment: str) -> DeploymentRecord:
        rows = self._query("SELECT * FROM deployments WHERE id = ?", (deployment,))
        if not rows:
            raise NotFound(f"no deployment {deployment!r}")
        return _deployment(rows[0])

    def list_deployments(
        self, *, states: frozenset[DeploymentState] | None = None, app: str | None = None,
        limit: int = 100,
    ) -> list[DeploymentRecord]:
        wanted = sorted(str(s) for s in (states if states is not None else DeploymentState))
        marks = ", ".join("?" * len(wanted))
        rows = self._query(
            f"SELECT * FROM deployments WHERE (? IS NULL OR app = ?) AND state IN ({marks}) "
            "ORDER BY created DESC, id LIMIT ?",
            (app, app, *wanted, limit),
        )
        return [_deployment(r) for r in rows]

    def transition_deployment(
        self, deployment: str, new: DeploymentState, *, result: dict[str, Any] | None = None
    ) -> DeploymentState:
        with self._tx() as conn:
            row = conn.execute("SELECT state FROM deployments WHERE id = ?",
                               (deployment,)).fetchone()
            if row is None:
                raise NotFound(f"no deployment {deployment!r}")
            old = DeploymentState(row[0])
            check_deployment_transition(old, new)
            conn.execute(
                "UPDATE deployments SET state = ?, updated = ?, result = COALESCE(?, result) "
                "WHERE id = ?",
                (str(new), time.time(), None if result is None else json.dumps(result), deployment),
            )
        return old

    # -- steps -------------------------------------------------------------------------------

    def transition_step(
        self, deployment: str, host: str, step: str, new: HostStepState, *,
        detail: dict[str, Any] | None = None,
    ) -> HostStepState | None:
        """Record the step's new state. RUNNING stamps the intent (before the step acts), a
        terminal state the outcome, so a restarted daemon knows what may have half-happened."""
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT state FROM steps WHERE deployment = ? AND host = ? AND step = ?",
                (deployment, host, step),
            ).fetchone()
            old = None if row is None else HostStepState(row[0])
            check_step_transition(old, new, step)
            running = new is HostStepState.RUNNING
            conn.execute(
                "INSERT INTO steps (deployment, host, step, state, intent, outcome, started, "
                "finished, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (deployment, host, step) DO UPDATE SET state = excluded.state, "
                "intent = COALESCE(excluded.intent, intent), outcome = excluded.outcome, "
                "started = COALESCE(excluded.started, started), finished = excluded.finished, "
                "detail = COALESCE(excluded.detail, detail)",
                (deployment, host, step, str(new), now if running else None,
                 None if running else now, now if running else None, None if running else now,
                 None if detail is None else json.dumps(detail)),
            )
        return old

    def steps(self, deployment: str) -> list[StepRecord]:
        rows = self._query(
            "SELECT * FROM steps WHERE deployment = ? ORDER BY host, COALESCE(started, finished)",
            (deployment,),
        )
        return [
            StepRecord(r["host"], r["step"], HostStepState(r["state"]), r["started"],
                       r["finished"], None if r["detail"] is None else json.loads(r["detail"]))
            for r in rows
        ]

    # -- events ------------------------------------------------------------------------------

    def append_event(self, event: dict[str, Any]) -> int:
        """Insert the event with the next seq of its deployment; returns that seq."""
        core = {"ts", "level", "event", "deployment", "host", "step", "status", "duration_ms"}
        details = {k: v for k, v in event.items() if k not in core and k != "seq"}
        with self._tx() as conn:
            (seq,) = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE deployment = ?",
                (event["deployment"],),
            ).fetchone()
            conn.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (event["deployment"], seq, event["ts"], event["level"], event["event"],
                 event.get("host"), event.get("step"), event.get("status"),
                 event.get("duration_ms"), json.dumps(details, default=str)),
            )
        return int(seq)

    def events(
        self, deployment: str, *, after: int = 0, host: str | None = None, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT * FROM events WHERE deployment = ? AND seq > ? AND (? IS NULL OR host = ?) "
            "ORDER BY seq LIMIT ?",
            (deployment, after, host, host, limit),
        )
        return [event_from_row(r) for r in rows]

    def last_event_ts(self, deployment: str) -> float | None:
        rows = self._query("SELECT MAX(ts) FROM events WHERE deployment = ?", (deployment,))
        return None if rows[0][0] is None else float(rows[0][0])

    # -- host facts and releases -------------------------------------------------------------

    def record_host(
        self, host: str, status: str, reasons: list[str], facts: dict[str, Any] | None
    ) -> None:
        if status not in HOST_STATUSES:
            raise ValueError(f"unknown host status {status!r}")
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO host_facts VALUES (?, ?, ?, ?, ?)",
                (host, time.time(), None if facts is None else json.dumps(facts), status,
                 json.dumps(reasons)),
            )

    def hosts(self) -> list[dict[str, Any]]:
        """The latest record of every host ever probed."""
        rows = self._query(
            "SELECT h.* FROM host_facts h JOIN (SELECT host, MAX(ts) AS ts FROM host_facts "
            "GROUP BY host) latest USING (host, ts) ORDER BY host"
        )
        return [
            {"host": r["host"], "ts": r["ts"], "status": r["status"],
             "reasons": json.loads(r["reasons"]),
             "facts": None if r["facts"] is None else json.loads(r["facts"])}
            for r in rows
        ]

    def record_release(
        self, host: str, app: str, release_id: str, state: str, deployment: str | None = None
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO releases VALUES (?, ?, ?, ?, ?, ?)",
                (host, app, release_id, state, deployment, time.time()),
            )

    # -- re-verification results per (host, app) --------------------------------------------

    def record_app_result(self, host: str, app: str, status: str, reasons: list[str]) -> None:
        """The app's latest re-verification result on the host (replaces the previous one)."""
        if status not in HOST_STATUSES:
            raise ValueError(f"unknown app status {status!r}")
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO app_results VALUES (?, ?, ?, ?, ?)",
                         (host, app, status, json.dumps(reasons), time.time()))

    def app_results(self, host: str) -> dict[str, tuple[str, list[str]]]:
        """{app: (status, reasons)} of the host's latest re-verification result per app."""
        rows = self._query("SELECT app, status, reasons FROM app_results WHERE host = ? "
                           "ORDER BY app", (host,))
        return {r["app"]: (r["status"], json.loads(r["reasons"])) for r in rows}

    def forget_app_results(self, host: str, keep: Collection[str]) -> list[str]:
        """Drop the host's results of apps not in `keep` (no longer on the host); returns them."""
        with self._tx() as conn:
            rows = conn.execute("SELECT app FROM app_results WHERE host = ?", (host,)).fetchall()
            gone = sorted(r[0] for r in rows if r[0] not in keep)
            conn.executemany("DELETE FROM app_results WHERE host = ? AND app = ?",
                             [(host, app) for app in gone])
        return gone

    def watched(self) -> dict[str, str]:
        """path -> digest of every spec file the watcher has handled."""
        return {r["path"]: r["digest"] for r in self._query("SELECT * FROM watched_specs")}

    def record_watched(self, path: str, digest: str, deployment: str | None,
                       error: str | None) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO watched_specs VALUES (?, ?, ?, ?, ?)",
                         (path, digest, deployment, error, time.time()))

    def releases(self, app: str) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM releases WHERE app = ? ORDER BY updated", (app,))
        return [dict(r) for r in rows]


def event_from_row(row: sqlite3.Row) -> dict[str, Any]:
    """The stored event back as its contract dict: the same keys, in the same order, as emitted."""
    event: dict[str, Any] = {
        "seq": row["seq"], "ts": row["ts"], "level": row["level"], "event": row["event"],
        "deployment": row["deployment"], "host": row["host"], "step": row["step"],
        "status": row["status"], "duration_ms": row["duration_ms"],
    }
    event.update(json.loads(row["details"]))
    return event


def _deployment(row: sqlite3.Row) -> DeploymentRecord:
    return DeploymentRecord(
        id=row["id"], app=row["app"], spec=json.loads(row["spec"]),
        state=DeploymentState(row["state"]), created=row["created"], updated=row["updated"],
        result=None if row["result"] is None else json.loads(row["result"]),
    )


def _check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    rows = conn.execute("PRAGMA quick_check").fetchall()
    if [tuple(r) for r in rows] != [("ok",)]:
        problems = "; ".join(str(r[0]) for r in rows[:3])
        raise StoreCorrupt(
            f"{path}: integrity check failed ({problems}); restore the state dir from a backup"
        )
