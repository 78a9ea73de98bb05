"""Other daemons' events into this daemon's feeds as soon as they are announced (issue 16).

Each event written to a shared store is announced at its commit (PostgreSQL's NOTIFY,
orchestrator/daemon/pg_store.py); `EventHub.catch_up` reads the announcements and brings the
events into the feeds of the deployments followed here, waking their followers
(orchestrator/daemon/events.py). `Listener` runs that catch-up when the LISTEN connection's
socket becomes readable: the event loop watches the socket (no thread sits waiting on it) and
the catch-up itself runs in the API's thread pool, since it reads the store.

While a catch-up runs, the socket is not watched: the catch-up consumes what made it readable,
and a watched socket would fire on every turn of the loop until then. A poke meanwhile asks for
one more run right after, so a burst of announcements costs at most two catch-ups, not one each.

Why not the server's tick: run every 0.1 s, a catch-up found each event waiting for the next
tick, 50 ms at the median and 95 ms at p95 of the 62 / 107 ms a follower on another daemon saw
(docs/benchmarks.md, "Several daemons"). The tick still pokes (`tick`): while no socket is
watched (before the first catch-up opens the LISTEN connection, after the database dropped it:
the next catch-up reconnects) and every `SAFETY_S` whatever happens, so an announcement missed
for any reason costs a second, never a follower stuck until its deployment ends.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from starlette.concurrency import run_in_threadpool

from orchestrator.daemon.events import EventHub
from orchestrator.errors import StoreUnavailable

log = structlog.get_logger("orchestrator.daemon.listener")
#: A catch-up at least this often (seconds), even while the socket is watched.
SAFETY_S = 1.0


class Listener:
    """Runs `hub.catch_up` when the store's LISTEN socket is readable; one event loop's."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        self._task: asyncio.Future[int | None] | None = None
        self._again = False   # poked while a catch-up ran: one more after it
        self._watched: int | None = None  # the socket the loop watches, if any
        self._started = 0.0   # monotonic time the last catch-up started
        self._stopped = False

    @property
    def watching(self) -> bool:
        return self._watched is not None

    def tick(self, now: float) -> None:
        """The server's tick (monotonic `now`): a catch-up when no socket is watched, or when
        none started for `SAFETY_S`."""
        if self._watched is None or now - self._started >= SAFETY_S:
            self.poke()

    def poke(self) -> None:
        """A catch-up now, or right after the one under way. On the event loop only."""
        if self._stopped:
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._again = False
        self._unwatch()
        self._started = time.monotonic()
        self._task = asyncio.ensure_future(run_in_threadpool(self._catch_up))
        self._task.add_done_callback(self._done)

    def stop(self) -> None:
        """No catch-up from now on (the daemon stops; the store closes after the loop)."""
        self._stopped = True
        self._unwatch()

    def _catch_up(self) -> int | None:
        """In a pool thread: the catch-up, then the socket to watch (the catch-up opened or
        replaced the LISTEN connection when it had to; None when it could not)."""
        self.hub.catch_up()
        return self.hub.store.listen_fd()

    def _done(self, task: asyncio.Future[int | None]) -> None:
        if task.cancelled():
            return
        failed = task.exception()
        if failed is None:
            fd = task.result()
            if fd is not None and not self._stopped:
                asyncio.get_running_loop().add_reader(fd, self.poke)
                self._watched = fd
        elif not isinstance(failed, StoreUnavailable):  # an outage: the heartbeat says it
            log.warning("events of other daemons not read", error=repr(failed))
        if self._again:
            self.poke()

    def _unwatch(self) -> None:
        # Only between catch-ups: the socket is open (only a catch-up or the store's close,
        # after the loop, closes it), so its number is not another connection's yet.
        if self._watched is not None:
            asyncio.get_running_loop().remove_reader(self._watched)
            self._watched = None
