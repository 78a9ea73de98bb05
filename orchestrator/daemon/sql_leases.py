"""Leases: which daemon holds a piece of work (a deployment, a scheduled re-verification) and
until when, as rows of the store (the `leases` table of orchestrator/daemon/schema.py).

A lease is (owner, token, expiry). `claim` takes a free, expired or own lease and returns a
fencing token one greater than the last holder's, so a host (and the store) can tell a stale
holder from the current one; `renew` extends it only while it is still held with that token;
`release` gives it up early. On PostgreSQL the claim locks the row `FOR UPDATE SKIP LOCKED`
(two daemons claiming at once: one gets it, the other moves on without waiting); on SQLite one
daemon holds the file anyway, and the same rows keep one code path. Expiry is judged on the
store's side of the clock (`time.time()` of the writer): daemons sharing a database keep their
clocks in sync (NTP), and the margin a holder keeps (it stops acting well before expiry)
absorbs the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

Row = Mapping[str, Any]
#: Runs one statement in the open transaction and returns its rows.
Exec = Callable[[str, Sequence[Any]], list[Row]]


class LeaseRows:
    """The lease queries, mixed into SqlStore (which supplies the connections)."""

    _for_update = ""
    _skip_locked = ""

    def _tx(self) -> AbstractContextManager[Exec]:
        raise NotImplementedError

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    # -- leases ------------------------------------------------------------------------------

    def claim(self, kind: str, key: str, owner: str, ttl_s: float,
              now: float | None = None) -> int | None:
        """Take the lease on (kind, key) if it is free, expired or already `owner`'s; returns
        its fencing token (one more than the last holder's), or None when another daemon holds
        it or is claiming it right now. `now`: the caller's wall clock (a schedule's tick)."""
        now = time.time() if now is None else now
        with self._tx() as q:
            rows = q("SELECT owner, token, expiry FROM leases WHERE kind = ? AND key = ?"
                     f"{self._for_update}{self._skip_locked}", (kind, key))
            if not rows:
                if q("SELECT 1 AS held FROM leases WHERE kind = ? AND key = ?", (kind, key)):
                    return None  # locked by a claim in flight (skipped), not absent
                # Two daemons may both find no row: the second insert does nothing.
                made = q("INSERT INTO leases VALUES (?, ?, ?, 1, ?) ON CONFLICT (kind, key) "
                         "DO NOTHING RETURNING token", (kind, key, owner, now + ttl_s))
                return 1 if made else None
            row = rows[0]
            if row["owner"] != owner and float(row["expiry"]) > now:
                return None
            token = int(row["token"]) + 1
            q("UPDATE leases SET owner = ?, token = ?, expiry = ? WHERE kind = ? AND key = ?",
              (owner, token, now + ttl_s, kind, key))
            return token

    def renew(self, kind: str, key: str, owner: str, token: int, ttl_s: float) -> bool:
        """Extend a held lease; False when it was lost (expired and taken, or released)."""
        now = time.time()
        with self._tx() as q:
            return bool(q("UPDATE leases SET expiry = ? WHERE kind = ? AND key = ? AND owner = ? "
                          "AND token = ? AND expiry > ? RETURNING token",
                          (now + ttl_s, kind, key, owner, token, now)))

    def release(self, kind: str, key: str, owner: str, token: int) -> None:
        with self._tx() as q:
            q("UPDATE leases SET expiry = 0 WHERE kind = ? AND key = ? AND owner = ? AND "
              "token = ?", (kind, key, owner, token))

    def lease(self, kind: str, key: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM leases WHERE kind = ? AND key = ?", (kind, key))
        return dict(rows[0]) if rows else None

    def expire_leases(self) -> int:
        """Expire every lease (a store only this daemon can use: whatever holds one is dead)."""
        with self._tx() as q:
            return len(q("UPDATE leases SET expiry = 0 WHERE expiry > 0 RETURNING token", ()))


__all__ = ["Exec", "LeaseRows", "Row"]
