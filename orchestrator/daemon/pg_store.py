"""The daemon's durable state in PostgreSQL: `store = "postgresql://..."` in the daemon config.

Several daemons share one database (issue 16): the queries are SqlStore's (the same as SQLite's),
the migrations the same list (orchestrator/daemon/schema.py, run under an advisory lock so two
daemons starting at once do not both run one). What differs is said here: rows read inside a
write are locked (`FOR UPDATE`: two daemons appending to one deployment's events take turns, so
`seq` stays gapless), a lease claim skips a row another daemon is claiming (`SKIP LOCKED`),
each event is announced with NOTIFY at commit (followers on other daemons, daemon/events.py),
and a bundle's chunks are written on their own connection so an upload never holds up events.

One writer connection under a lock, and one read connection per thread, as in SQLite. A
connection the server dropped (a restart, a partition) is replaced at its next use; until the
database answers, every call raises `StoreUnavailable`, which the daemon treats as "stop acting
on hosts" (its leases cannot be renewed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from orchestrator.daemon.sql_store import Exec, Row, SqlStore, as_dicts
from orchestrator.errors import StoreCorrupt, StoreUnavailable

NOTIFY_CHANNEL = "orchestrator_events"
_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(7161616161)"
CONNECT_TIMEOUT_S = 5
IDLE_CHECK_S = 1.0  # a writer idle this long is checked before a transaction (a restart)


def describe(url: str) -> str:
    """The database named for messages and logs, without its password."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://<unparsable url>"
    host = parts.get("host") or "localhost"
    return f"postgresql://{parts.get('user', '')}@{host}:{parts.get('port', 5432)}/" \
           f"{parts.get('dbname', '')}"


def _dropped(exc: psycopg.OperationalError) -> bool:
    """The server closed this connection (a restart, an admin): a new one may well work."""
    text = str(exc)
    return any(m in text for m in ("terminating connection", "server closed the connection",
                                   "consuming input failed", "connection is closed"))


def _sql(text: str) -> str:
    # The shared SQL's `?` placeholders are psycopg's `%s`; no statement has a literal % or ?.
    return text.replace("?", "%s")


class PostgresStore(SqlStore):
    dialect = "postgresql"
    _for_update = " FOR UPDATE"
    _skip_locked = " SKIP LOCKED"
    shared = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.location = describe(url)
        self._lock = threading.RLock()
        self._writer: psycopg.Connection[Any] | None = None
        self._written = 0.0  # monotonic time the writer was last used
        self._local = threading.local()
        self._readers: list[psycopg.Connection[Any]] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._listener: psycopg.Connection[Any] | None = None
        self._listen_lock = threading.Lock()

    @classmethod
    def open(cls, url: str) -> PostgresStore:
        store = cls(url)
        try:
            store._migrate(_MIGRATION_LOCK)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise StoreCorrupt(f"{store.location}: cannot create the orchestrator's tables: "
                               f"{exc}") from None
        return store

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                   application_name="orchestrator")
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"{self.location}: cannot connect: "
                                   f"{str(exc).strip().splitlines()[0]}") from None

    def close(self) -> None:
        with self._lock, self._readers_lock:
            self._closed = True
            for conn in [*self._readers, *([self._writer] if self._writer else []),
                         *([self._listener] if self._listener else [])]:
                conn.close()
            self._readers.clear()
            self._writer = None

    def _reader(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = self._connect()
            with self._readers_lock:
                if self._closed:
                    conn.close()
                    raise StoreUnavailable(f"{self.location}: the store is closed")
                self._readers = [c for c in self._readers if not c.closed]
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        for attempt in (1, 2):
            conn = self._reader()
            try:
                cur = conn.execute(_sql(sql), tuple(args))
                return as_dicts(cur.description, cur.fetchall() if cur.description else [])
            except psycopg.OperationalError as exc:
                conn.close()  # replaced at the next read
                # A thread's idle connection that the server dropped (it restarted) fails at
                # its first use: a read is safe to run again once, on a new connection.
                if attempt == 2 or not _dropped(exc):
                    raise StoreUnavailable(f"{self.location}: {str(exc).strip()}") from None
        raise AssertionError("unreachable")

    @contextmanager
    def _tx(self) -> Iterator[Exec]:
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"{self.location}: the store is closed")
            if (self._writer is not None and not self._writer.closed
                    and time.monotonic() - self._written > IDLE_CHECK_S):
                try:  # dropped by a server restart while idle? Nothing is written yet.
                    self._writer.execute("SELECT 1")
                except psycopg.OperationalError:
                    self._writer.close()
            if self._writer is None or self._writer.closed or self._writer.broken:
                self._writer = self._connect()
            try:
                with self._transaction(self._writer) as run:
                    yield run
            finally:
                self._written = time.monotonic()

    @contextmanager
    def _bulk(self) -> Iterator[Exec]:
        conn = self._connect()
        try:
            with self._transaction(conn) as run:
                yield run
        finally:
            conn.close()

    @contextmanager
    def _transaction(self, conn: psycopg.Connection[Any]) -> Iterator[Exec]:
        def run(sql: str, args: Sequence[Any] = ()) -> list[Row]:
            cur = conn.execute(_sql(sql), tuple(args))
            return as_dicts(cur.description, cur.fetchall() if cur.description else [])

        try:
            with conn.transaction():
                yield run
        except psycopg.OperationalError as exc:
            conn.close()
            raise StoreUnavailable(f"{self.location}: {str(exc).strip()}") from None

    def _notify(self, q: Exec, deployment: str, seq: int) -> None:
        q(f"SELECT pg_notify('{NOTIFY_CHANNEL}', ?)", (f"{deployment} {seq}",))

    def listen_fd(self) -> int | None:
        """The LISTEN connection's socket (open once `notifications` has been called and while
        it works), for an event loop to watch: readable when a notification arrives. Never
        connects, never blocks."""
        listener = self._listener
        if listener is None or listener.closed or listener.broken:
            return None
        return listener.fileno()

    def notifications(self) -> list[tuple[str, int]]:
        """(deployment, seq) of every event committed since the last call, by any daemon
        (LISTEN on a connection of its own, opened at the first call; never blocks). Every
        notification the socket held is returned: none is left buffered in libpq, so the
        socket's readiness (`listen_fd`) is the one sign of the next."""
        with self._listen_lock:
            try:
                if self._listener is None or self._listener.closed or self._listener.broken:
                    self._listener = self._connect()
                    self._listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
                found = []
                for note in self._listener.notifies(timeout=0.0):
                    deployment, _, seq = note.payload.partition(" ")
                    if seq.isdigit():
                        found.append((deployment, int(seq)))
                return found
            except psycopg.OperationalError as exc:
                if self._listener is not None:
                    self._listener.close()
                raise StoreUnavailable(f"{self.location}: {str(exc).strip()}") from None


__all__ = ["NOTIFY_CHANNEL", "PostgresStore", "describe"]
