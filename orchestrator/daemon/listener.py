"""Other daemons' events into this daemon's feeds as soon as they are announced (issue 16).

Each event written to a shared store is announced at its commit (PostgreSQL's NOTIFY,
orchestrator/daemon/pg_store.py). `Listener` has the event loop watch the LISTEN connection's
socket (`Store.listen_fd`); when it is readable, the announcements are read there and then
(non-blocking: they are in the socket) and matched against the feeds (`EventHub.missing`).
Only a followed deployment whose feed lacks an announced event costs a thread: the store read
that brings its events into the feed and wakes its followers (`EventHub.fetch`), one at a
time, the deployments announced meanwhile read by the next.

Why not the server's tick: run every 0.1 s, a catch-up found each event waiting for the next
tick, 50 ms at the median and 95 ms at p95 of the 62 / 107 ms a follower on another daemon saw
(docs/benchmarks.md, "Several daemons"). Why not a catch-up in a thread per readable socket:
every daemon is told of every event, and a thread's round trip per event doubled the CPU each
daemon spent per host. The tick still serves: it opens the LISTEN connection (in a thread: it
connects) while no socket is watched (at start, after the database dropped it), and every
`SAFETY_S` reads the socket and retries a failed fetch.

Reading the socket costs the loop about 30 us of CPU however many announcements it holds (3 us
each more): at one read per event, the three daemons of bench daemons each spent about 1 ms
more per host. A read less than `READ_GAP_S` after the last one therefore waits out the rest of
the gap with the socket unwatched, and takes what arrived meanwhile at once: at most 200 reads a
second whatever the fleet's event rate, and no delay at all for an event after a quiet spell.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from starlette.concurrency import run_in_threadpool

from orchestrator.daemon.events import EventHub
from orchestrator.errors import StoreUnavailable

log = structlog.get_logger("orchestrator.daemon.listener")
#: How often the tick reads the socket and retries a fetch that failed (seconds).
SAFETY_S = 1.0
#: The least time between two reads of the socket (seconds): a burst is read together.
READ_GAP_S = 0.005


class Listener:
    """One event loop's reader of a shared store's announcements."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        self._task: asyncio.Future[int | None] | None = None  # the one thread job at a time
        self._pending: set[str] = set()  # deployments to fetch once the thread job is done
        self._watched: int | None = None  # the socket the loop watches, if any
        self._read_at = 0.0  # monotonic time of the last read
        self._resume: asyncio.TimerHandle | None = None  # the end of a gap between reads
        self._stopped = False

    @property
    def watching(self) -> bool:
        return self._watched is not None

    def tick(self, now: float) -> None:
        """The server's tick (monotonic `now`). On the event loop, as everything here."""
        if self._stopped:
            return
        if not self.watching:
            if not self._busy():
                self._run(None)  # (re)connect and LISTEN
        elif now - self._read_at >= SAFETY_S:
            self._readable()  # a missed wake costs a second, never a stuck follower
            if self._pending and not self._busy():
                self._run(set())  # a fetch that failed

    def stop(self) -> None:
        """Nothing more from now on (the daemon stops; the store closes after the loop)."""
        self._stopped = True
        self._unwatch()

    def _busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def _on_readable(self) -> None:
        """The socket's reader: a read now, or at the end of the gap since the last one."""
        wait = self._read_at + READ_GAP_S - time.monotonic()
        if wait > 0 and self._watched is not None and self._resume is None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._watched)
            self._resume = loop.call_later(wait, self._resumed)
            return
        self._readable()

    def _resumed(self) -> None:
        self._resume = None
        if self._watched is not None and not self._stopped:
            asyncio.get_running_loop().add_reader(self._watched, self._on_readable)
            self._readable()

    def _readable(self) -> None:
        """The announcements in the socket, matched against the feeds on the loop."""
        self._read_at = time.monotonic()
        if self._stopped or self._watched is None:
            return
        if self.hub.store.listen_fd() != self._watched:  # closed: never connect on the loop
            self._unwatch()
            return
        try:
            notes = self.hub.store.notifications()
        except StoreUnavailable:  # the connection dropped (and is closed): the tick reopens it
            self._unwatch()
            return
        wanted = self.hub.missing(notes)
        if wanted:
            self._pending |= wanted
            if not self._busy():
                self._run(set())

    def _run(self, deployments: set[str] | None) -> None:
        """One thread job: fetch the pending deployments (`deployments` is a set), or connect
        and LISTEN, catching up with whatever was announced (None)."""
        fetch, self._pending = self._pending, set()
        if deployments is None:
            self._unwatch()

            def job() -> int | None:
                self.hub.catch_up()  # opens the LISTEN connection when it must
                self.hub.fetch(fetch)
                return self.hub.store.listen_fd()
        else:
            def job() -> int | None:
                self.hub.fetch(fetch)
                return None

        self._task = asyncio.ensure_future(run_in_threadpool(job))
        self._task.add_done_callback(lambda task: self._done(task, fetch))

    def _done(self, task: asyncio.Future[int | None], fetched: set[str]) -> None:
        if task.cancelled() or self._stopped:
            return
        failed = task.exception()
        if failed is not None:
            self._pending |= fetched  # again at the next tick's check, not in a loop
            if not isinstance(failed, StoreUnavailable):  # an outage: the heartbeat says it
                log.warning("events of other daemons not read", error=repr(failed))
            return
        fd = task.result()
        if fd is not None:
            asyncio.get_running_loop().add_reader(fd, self._on_readable)
            self._watched = fd
            self._readable()  # what arrived while the job ran
        elif self._pending:
            self._run(set())

    def _unwatch(self) -> None:
        # The socket is still open here (only a connection job, run while it is not watched,
        # or the store's close, after the loop, closes it): its number is no other's yet.
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._watched is not None:
            asyncio.get_running_loop().remove_reader(self._watched)
            self._watched = None
