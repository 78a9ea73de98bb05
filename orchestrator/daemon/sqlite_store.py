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

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.daemon.sql_store import Exec, Row, SqlStore, as_dicts, event_from_row
from orchestrator.daemon.statedir import open_private, private_dir, tighten
from orchestrator.errors import StoreCorrupt

__all__ = ["SqliteStore", "event_from_row"]


class SqliteStore(SqlStore):
    """Thread-safe access to the SQLite file. Open with `SqliteStore.open(path)`; the rest of the
    daemon sees it as a `Store` (orchestrator/daemon/store.py); the queries are SqlStore's."""

    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.location = str(path)
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
    def _tx(self) -> Iterator[Exec]:
        def run(sql: str, args: Sequence[Any] = ()) -> list[Row]:
            cur = self._conn.execute(sql, tuple(args))
            return as_dicts(cur.description, cur.fetchall())

        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield run
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        cur = self._reader().execute(sql, tuple(args))
        return as_dicts(cur.description, cur.fetchall())


def _check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    rows = conn.execute("PRAGMA quick_check").fetchall()
    if [tuple(r) for r in rows] != [("ok",)]:
        problems = "; ".join(str(r[0]) for r in rows[:3])
        raise StoreCorrupt(
            f"{path}: integrity check failed ({problems}); restore the state dir from a backup"
        )
