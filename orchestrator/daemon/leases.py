"""This daemon's leases: the work it holds in a shared store, kept alive by a heartbeat.

Each deployment a daemon works on (runs, resumes, rolls back, reconciles) is claimed first
(`claim`: the store's lease row, orchestrator/daemon/sql_leases.py), renewed every third of
`lease_ttl_s` (`heartbeat`, on the daemon's periodic tick) and released when the work ends. A
daemon that cannot renew a lease (the database is down, or another daemon took it after it
expired) loses it: `heartbeat` returns it, and the service tells that deployment's worker to
stop after its current step and leaves the deployment in flight for whoever holds it next.
`valid` says whether a lease is still safe to act under: renewed less than `ttl - margin` ago
by this process's own monotonic clock (the store's clock is never trusted for that), so a daemon
cut off from the database stops starting host steps before anyone else may take the work.

On SQLite one daemon holds the state dir anyway; the same rows keep the code path one.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from orchestrator.daemon.store import Store
from orchestrator.errors import DaemonError

log = structlog.get_logger("orchestrator.daemon.leases")
DEPLOYMENT = "deployment"
REVERIFY = "reverify"


def new_owner() -> str:
    """This process's name in lease rows: host, pid and a random part (a pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class Held:
    token: int
    renewed: float  # monotonic time of the last successful claim or renewal


class Leases:
    def __init__(self, store: Store, ttl_s: float, owner: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.ttl_s = store, ttl_s
        self.owner = owner or new_owner()
        self._clock = clock
        self._held: dict[tuple[str, str], Held] = {}
        self._lock = threading.Lock()
        if not store.shared:  # the state dir's lock is ours: no live daemon holds anything
            store.expire_leases()

    @property
    def margin_s(self) -> float:
        """How long before expiry this daemon stops acting: a third of the ttl."""
        return self.ttl_s / 3

    def claim(self, kind: str, key: str) -> int | None:
        """The fencing token if this daemon now holds (kind, key), else None. Already held
        here: its current token (a second claim does not bump it)."""
        with self._lock:
            held = self._held.get((kind, key))
            if held is not None:
                return held.token
        try:
            token = self.store.claim(kind, key, self.owner, self.ttl_s)
        except DaemonError as exc:  # the store is unreachable: nothing is claimed
            log.warning("lease not claimed", kind=kind, key=key, error=str(exc))
            return None
        if token is not None:
            with self._lock:
                self._held[(kind, key)] = Held(token, self._clock())
        return token

    def token(self, kind: str, key: str) -> int | None:
        with self._lock:
            held = self._held.get((kind, key))
        return None if held is None else held.token

    def valid(self, kind: str, key: str) -> bool:
        with self._lock:
            held = self._held.get((kind, key))
        return held is not None and self._clock() - held.renewed < self.ttl_s - self.margin_s

    def release(self, kind: str, key: str) -> None:
        with self._lock:
            held = self._held.pop((kind, key), None)
        if held is not None:
            try:
                self.store.release(kind, key, self.owner, held.token)
            except DaemonError as exc:  # it expires by itself
                log.warning("lease not released", kind=kind, key=key, error=str(exc))

    def heartbeat(self) -> list[tuple[str, str]]:
        """Renew every held lease; returns those lost (not renewed by the store, or not
        renewed for longer than `ttl - margin`): no longer this daemon's to act on."""
        with self._lock:
            held = dict(self._held)
        lost = []
        for (kind, key), h in held.items():
            try:
                ok = self.store.renew(kind, key, self.owner, h.token, self.ttl_s)
            except DaemonError as exc:
                log.warning("lease not renewed", kind=kind, key=key, error=str(exc))
                ok = None
            now = self._clock()
            if ok:
                h.renewed = now
            elif ok is False or now - h.renewed >= self.ttl_s - self.margin_s:
                lost.append((kind, key))
        with self._lock:
            for item in lost:
                self._held.pop(item, None)
        return lost


__all__ = ["DEPLOYMENT", "REVERIFY", "Held", "Leases", "new_owner"]
