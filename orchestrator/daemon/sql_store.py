"""What both store backends share: every query of the `Store` protocol, written once.

The SQL here is the common ground of SQLite and PostgreSQL (`?` placeholders, which the
PostgreSQL backend turns into `%s`; upserts as `ON CONFLICT ... DO UPDATE`; `RETURNING`). A
backend supplies its connections: `_tx()` (one write transaction, yielding a function that runs
one statement and returns its rows as dicts) and `_rows()` (a read), plus the few words that
differ, as class attributes: `_for_update` (lock the rows read in a write transaction: SQLite's
`BEGIN IMMEDIATE` already serialises writers, PostgreSQL's several daemons need the row lock),
`_skip_locked` (a claim skips a lease row another daemon is claiming right now) and `dialect`
(the migrations' types, orchestrator/daemon/schema.py `for_dialect`).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import IO, Any

from orchestrator.core.states import (
    RERUNNABLE_STEPS,
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
    for_dialect,
)
from orchestrator.daemon.sql_leases import Exec, LeaseRows, Row
from orchestrator.daemon.sql_requests import RequestRows
from orchestrator.errors import NotFound, StoreCorrupt

CHUNK_BYTES = 1 << 20  # a bundle's rows: large enough to stream fast, small enough to buffer
EVENT_CORE = ("ts", "level", "event", "deployment", "host", "step", "status", "duration_ms")


class SqlStore(LeaseRows, RequestRows):
    """The queries; subclasses (SqliteStore, PostgresStore) own the connections."""

    dialect = "sqlite"
    _for_update = ""
    _skip_locked = ""
    #: Whether other daemons may share this store (bundles then live in it, not only on disk).
    shared = False
    location = ""
    _lock: threading.RLock  # the writer's: one write transaction at a time per store

    def _tx(self) -> AbstractContextManager[Exec]:
        raise NotImplementedError

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    def _bulk(self) -> AbstractContextManager[Exec]:
        """A transaction for a bundle's many rows (PostgreSQL: its own connection, so the
        events of running deployments do not wait behind an upload)."""
        return self._tx()

    def close(self) -> None:
        raise NotImplementedError

    # -- schema ------------------------------------------------------------------------------

    def _migrate(self, serialise: str = "") -> None:
        """Each migration in its own transaction; `serialise` (PostgreSQL: an advisory lock)
        keeps two daemons starting at once from running the same one twice."""
        with self._tx() as q:
            if serialise:
                q(serialise, ())
            q("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", ())
            if not q("SELECT version FROM schema_version", ()):
                q("INSERT INTO schema_version VALUES (0)", ())
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise StoreCorrupt(
                f"{self.location}: schema version {version} is newer than this orchestrator "
                f"({SCHEMA_VERSION}); upgrade the orchestrator or restore a backup"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._tx() as q:
                if serialise:
                    q(serialise, ())
                if int(q("SELECT version FROM schema_version", ())[0]["version"]) >= target:
                    continue  # another daemon ran it while this one waited for the lock
                for statement in for_dialect(MIGRATIONS[target - 1], self.dialect):
                    q(statement, ())
                q("UPDATE schema_version SET version = ?", (target,))

    def schema_version(self) -> int:
        return int(self._rows("SELECT version FROM schema_version")[0]["version"])

    # -- deployments -------------------------------------------------------------------------

    def create_deployment(self, deployment: str, app: str, spec: dict[str, Any]) -> None:
        now = time.time()
        with self._tx() as q:
            q("INSERT INTO deployments VALUES (?, ?, ?, ?, ?, ?, NULL)",
              (deployment, app, json.dumps(spec), str(DeploymentState.QUEUED), now, now))

    def get_deployment(self, deployment: str) -> DeploymentRecord:
        rows = self._rows("SELECT * FROM deployments WHERE id = ?", (deployment,))
        if not rows:
            raise NotFound(f"no deployment {deployment!r}")
        return _deployment(rows[0])

    def list_deployments(
        self, *, states: frozenset[DeploymentState] | None = None, app: str | None = None,
        limit: int = 100,
    ) -> list[DeploymentRecord]:
        wanted = sorted(str(s) for s in (states if states is not None else DeploymentState))
        marks = ", ".join("?" * len(wanted))
        by_app = "" if app is None else "app = ? AND "
        rows = self._rows(
            f"SELECT * FROM deployments WHERE {by_app}state IN ({marks}) "
            "ORDER BY created DESC, id LIMIT ?",
            (*([] if app is None else [app]), *wanted, limit),
        )
        return [_deployment(r) for r in rows]

    def transition_deployment(
        self, deployment: str, new: DeploymentState, *, result: dict[str, Any] | None = None
    ) -> DeploymentState:
        with self._tx() as q:
            rows = q(f"SELECT state FROM deployments WHERE id = ?{self._for_update}",
                     (deployment,))
            if not rows:
                raise NotFound(f"no deployment {deployment!r}")
            old = DeploymentState(rows[0]["state"])
            check_deployment_transition(old, new)
            q("UPDATE deployments SET state = ?, updated = ?, result = COALESCE(?, result) "
              "WHERE id = ?",
              (str(new), time.time(), None if result is None else json.dumps(result), deployment))
        return old

    # -- steps -------------------------------------------------------------------------------

    def transition_step(
        self, deployment: str, host: str, step: str, new: HostStepState, *,
        detail: dict[str, Any] | None = None,
    ) -> HostStepState | None:
        """Record the step's new state. RUNNING stamps the intent (before the step acts), a
        terminal state the outcome, so a restarted daemon knows what may have half-happened."""
        now = time.time()
        with self._tx() as q:
            rows = q(f"SELECT state FROM steps WHERE deployment = ? AND host = ? AND step = ?"
                     f"{self._for_update}", (deployment, host, step))
            old = None if not rows else HostStepState(rows[0]["state"])
            check_step_transition(old, new, step)
            running = new is HostStepState.RUNNING
            q("INSERT INTO steps (deployment, host, step, state, intent, outcome, started, "
              "finished, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
              "ON CONFLICT (deployment, host, step) DO UPDATE SET state = excluded.state, "
              "intent = COALESCE(excluded.intent, steps.intent), outcome = excluded.outcome, "
              "started = COALESCE(excluded.started, steps.started), "
              "finished = excluded.finished, detail = COALESCE(excluded.detail, steps.detail)",
              (deployment, host, step, str(new), now if running else None,
               None if running else now, now if running else None, None if running else now,
               None if detail is None else json.dumps(detail)))
        return old

    def restart_steps(self, deployment: str, host: str) -> int:
        """A host a resumed deployment deploys again starts a fresh attempt: the pipeline rows
        of the one a dead daemon left (all terminal by then) go; their events stay. The
        reconcile and undo rows are kept (they may run again anyway). Returns how many went."""
        keep = sorted(RERUNNABLE_STEPS)
        with self._tx() as q:
            gone = q(f"DELETE FROM steps WHERE deployment = ? AND host = ? AND step NOT IN "
                     f"({', '.join('?' * len(keep))}) RETURNING step", (deployment, host, *keep))
        return len(gone)

    def steps(self, deployment: str) -> list[StepRecord]:
        rows = self._rows(
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
        """Insert the event with the next seq of its deployment; returns that seq. The
        deployment's row is locked first, so writers on several daemons take turns: gapless."""
        details = {k: v for k, v in event.items() if k not in EVENT_CORE and k != "seq"}
        with self._tx() as q:
            if self._for_update:
                q(f"SELECT id FROM deployments WHERE id = ?{self._for_update}",
                  (event["deployment"],))
            seq = q("SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM events WHERE deployment = ?",
                    (event["deployment"],))[0]["seq"]
            q("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
              (event["deployment"], seq, event["ts"], event["level"], event["event"],
               event.get("host"), event.get("step"), event.get("status"),
               event.get("duration_ms"), json.dumps(details, default=str)))
            self._notify(q, str(event["deployment"]), int(seq))
        return int(seq)

    def _notify(self, q: Exec, deployment: str, seq: int) -> None:
        """Tell other daemons' followers (PostgreSQL: NOTIFY, sent at commit)."""

    def notifications(self) -> list[tuple[str, int]]:
        """Other daemons' events, and the socket readable at more: a lone store has neither."""
        return []

    def listen_fd(self) -> int | None:
        return None

    def events(
        self, deployment: str, *, after: int = 0, host: str | None = None, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        by_host = "" if host is None else " AND host = ?"
        rows = self._rows(
            f"SELECT * FROM events WHERE deployment = ? AND seq > ?{by_host} ORDER BY seq LIMIT ?",
            (deployment, after, *([] if host is None else [host]), limit),
        )
        return [event_from_row(r) for r in rows]

    def last_event_ts(self, deployment: str) -> float | None:
        rows = self._rows("SELECT MAX(ts) AS ts FROM events WHERE deployment = ?", (deployment,))
        return None if rows[0]["ts"] is None else float(rows[0]["ts"])

    # -- host facts and releases -------------------------------------------------------------

    def record_host(
        self, host: str, status: str, reasons: list[str], facts: dict[str, Any] | None
    ) -> None:
        if status not in HOST_STATUSES:
            raise ValueError(f"unknown host status {status!r}")
        with self._tx() as q:
            q("INSERT INTO host_facts VALUES (?, ?, ?, ?, ?) ON CONFLICT (host, ts) DO UPDATE "
              "SET facts = excluded.facts, status = excluded.status, reasons = excluded.reasons",
              (host, time.time(), None if facts is None else json.dumps(facts), status,
               json.dumps(reasons)))

    def hosts(self, names: Collection[str] | None = None) -> list[dict[str, Any]]:
        """The latest record of every host ever probed (with `names`: of those alone)."""
        where, args = _among(names, "WHERE ", " ")
        rows = self._rows(
            "SELECT h.* FROM host_facts h JOIN (SELECT host, MAX(ts) AS ts FROM host_facts "
            f"{where}GROUP BY host) latest USING (host, ts) ORDER BY host", args
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
        with self._tx() as q:
            q("INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (host, app, release_id) "
              "DO UPDATE SET state = excluded.state, deployment = excluded.deployment, "
              "updated = excluded.updated",
              (host, app, release_id, state, deployment, time.time()))

    def releases(self, app: str) -> list[dict[str, Any]]:
        return [dict(r) for r in
                self._rows("SELECT * FROM releases WHERE app = ? ORDER BY updated", (app,))]

    # -- re-verification results per (host, app) --------------------------------------------

    def record_app_result(self, host: str, app: str, status: str, reasons: list[str]) -> None:
        """The app's latest re-verification result on the host (replaces the previous one)."""
        if status not in HOST_STATUSES:
            raise ValueError(f"unknown app status {status!r}")
        with self._tx() as q:
            q("INSERT INTO app_results VALUES (?, ?, ?, ?, ?) ON CONFLICT (host, app) DO UPDATE "
              "SET status = excluded.status, reasons = excluded.reasons, ts = excluded.ts",
              (host, app, status, json.dumps(reasons), time.time()))

    def app_results(self, host: str) -> dict[str, tuple[str, list[str]]]:
        """{app: (status, reasons)} of the host's latest re-verification result per app."""
        rows = self._rows("SELECT app, status, reasons FROM app_results WHERE host = ? "
                          "ORDER BY app", (host,))
        return {r["app"]: (r["status"], json.loads(r["reasons"])) for r in rows}

    def host_names(self) -> list[str]:
        """Every host ever probed, sorted (its facts not read)."""
        return [r["host"] for r in self._rows("SELECT DISTINCT host FROM host_facts ORDER BY host")]

    def fleet_app_results(self, names: Collection[str] | None = None
                          ) -> dict[str, dict[str, dict[str, Any]]]:
        """{host: {app: {status, reasons, ts}}}: every app's latest re-verification result on
        every host (or on `names`), in one query."""
        where, args = _among(names, " WHERE ", "")
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for r in self._rows(f"SELECT host, app, status, reasons, ts FROM app_results{where} "
                            "ORDER BY host, app", args):
            out.setdefault(r["host"], {})[r["app"]] = {
                "status": r["status"], "reasons": json.loads(r["reasons"]), "ts": r["ts"]}
        return out

    def forget_app_results(self, host: str, keep: Collection[str]) -> list[str]:
        """Drop the host's results of apps not in `keep` (no longer on the host); returns them."""
        with self._tx() as q:
            rows = q(f"SELECT app FROM app_results WHERE host = ?{self._for_update}", (host,))
            gone = sorted(r["app"] for r in rows if r["app"] not in keep)
            for app in gone:
                q("DELETE FROM app_results WHERE host = ? AND app = ?", (host, app))
        return gone

    def watched(self) -> dict[str, str]:
        """path -> digest of every spec file the watcher has handled."""
        return {r["path"]: r["digest"] for r in self._rows("SELECT * FROM watched_specs")}

    def record_watched(self, path: str, digest: str, deployment: str | None,
                       error: str | None) -> None:
        with self._tx() as q:
            q("INSERT INTO watched_specs VALUES (?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE "
              "SET digest = excluded.digest, deployment = excluded.deployment, "
              "error = excluded.error, updated = excluded.updated",
              (path, digest, deployment, error, time.time()))

    # -- bundles -----------------------------------------------------------------------------

    def put_bundle(self, deployment: str, archive: IO[bytes]) -> str:
        """Store the bundle's archive in chunks, read as a stream; returns its sha256. Visible
        to readers only once complete (one transaction)."""
        digest, size, n = hashlib.sha256(), 0, 0
        with self._bulk() as q:
            while chunk := archive.read(CHUNK_BYTES):
                digest.update(chunk)
                q("INSERT INTO bundle_chunks VALUES (?, ?, ?)", (deployment, n, chunk))
                size, n = size + len(chunk), n + 1
            q("INSERT INTO bundles VALUES (?, ?, ?, ?, ?)",
              (deployment, digest.hexdigest(), size, n, time.time()))
        return digest.hexdigest()

    def get_bundle(self, deployment: str, out: IO[bytes]) -> bool:
        """Write the stored archive to `out`, chunk by chunk, checking its sha256; False when
        the store has none. A mismatch is a `StoreCorrupt` (nothing is run from it)."""
        head = self._rows("SELECT * FROM bundles WHERE deployment = ?", (deployment,))
        if not head:
            return False
        digest, size = hashlib.sha256(), 0
        for n in range(int(head[0]["chunks"])):
            rows = self._rows("SELECT data FROM bundle_chunks WHERE deployment = ? AND n = ?",
                              (deployment, n))
            data = bytes(rows[0]["data"]) if rows else b""
            digest.update(data)
            size += len(data)
            out.write(data)
        if digest.hexdigest() != head[0]["sha256"] or size != int(head[0]["size"]):
            raise StoreCorrupt(f"{self.location}: the stored bundle of {deployment} does not "
                               f"match its sha256 ({size} bytes read); resubmit the spec")
        return True

    def drop_bundle(self, deployment: str) -> None:
        with self._bulk() as q:
            q("DELETE FROM bundle_chunks WHERE deployment = ?", (deployment,))
            q("DELETE FROM bundles WHERE deployment = ?", (deployment,))


def event_from_row(row: Row) -> dict[str, Any]:
    """The stored event back as its contract dict: the same keys, in the same order, as emitted."""
    event: dict[str, Any] = {"seq": row["seq"], **{k: row[k] for k in EVENT_CORE}}
    event.update(json.loads(row["details"]))
    return event


def _deployment(row: Row) -> DeploymentRecord:
    return DeploymentRecord(
        id=row["id"], app=row["app"], spec=json.loads(row["spec"]),
        state=DeploymentState(row["state"]), created=row["created"], updated=row["updated"],
        result=None if row["result"] is None else json.loads(row["result"]),
    )


def as_dicts(description: Sequence[Sequence[Any]] | None,
             rows: Iterator[Sequence[Any]] | list[Any]) -> list[Row]:
    """A DB-API cursor's rows as dicts by column name (both backends' one row shape)."""
    if description is None:
        return []
    names = [d[0] for d in description]
    return [dict(zip(names, row, strict=True)) for row in rows]


def _among(names: Collection[str] | None, before: str, after: str) -> tuple[str, tuple[str, ...]]:
    """A `host IN (...)` clause for `names` (None: none), a page (ui/views.py MAX_PAGE)."""
    if names is None:
        return "", ()
    names = tuple(names) or ("",)  # no name: a clause that matches nothing
    return f"{before}host IN ({', '.join('?' * len(names))}){after}", names


__all__ = ["CHUNK_BYTES", "Exec", "Row", "SqlStore", "as_dicts", "event_from_row"]
