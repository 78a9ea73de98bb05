"""Events: the contract of DESIGN.md "Events", the sinks that record them, and live followers.

An event is one JSON object per state change:
    {"seq", "ts", "level", "event", "deployment", "host", "step", "status", "duration_ms",
     ...details}
`seq` numbers the events of one deployment from 1 without gaps; it is how a follower knows it
missed nothing.

`EventHub.sink(deployment)` gives the daemon's `EventSink`. Its `emit` does, under one lock per
hub (so the three copies agree on the order):
  1. the store row (SQLite, synchronous=FULL: durable when `emit` returns);
  2. a line in `<state_dir>/logs/<deployment>.jsonl`, flushed at once (so a killed daemon loses
     nothing: the line is in the kernel), fsynced at every deployment-level event and when the
     file is closed. The store is the record of truth and already fsyncs each event; fsyncing
     the copy too would double the cost of every step event under the hub lock, for a file a
     power cut can only shorten (the store has every event: `orchestrator logs ID --json`
     prints the same lines);
  3. the deployment's feed, when someone follows it: a ring of its last `follower_buffer`
     events shared by its followers, each holding only a cursor (the last seq it delivered).
Followers never block the emitter and cost it nothing while they do not read: the emitter
appends to the ring (O(1)) and wakes only the followers waiting for a new event, outside the
hub lock. Each follower's backlog is bounded by the ring: one whose cursor fell off the ring's
tail is lagged, and goes back to the store after its cursor (the API drops a live follower that
lagged with a `lagged` marker; its client resumes by seq), so a follower sees every event, in
order, exactly once, however slow it is. The hub refuses followers past the daemon's cap.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO, Any

import structlog

from orchestrator.core.sink import EventSink
from orchestrator.daemon.statedir import open_private, private_dir
from orchestrator.daemon.store import Store
from orchestrator.errors import DaemonError

LEVELS = ("debug", "info", "warning", "error")
# Mirrored into the daemon's own log (journald): what an operator scans for, not every step.
LOGGED_EVENTS = frozenset({"deployment", "reconcile", "watchdog", "rollout", "cancel", "rollback"})
log = structlog.get_logger("orchestrator.daemon.events")
__all__ = ["DeploymentSink", "EventHub", "EventSink", "Follower", "make_event"]
FOLLOWER_BUFFER = 1024
MAX_FOLLOWERS = 2048
#: An event and its JSON line (newline-terminated UTF-8), as the feed keeps and the API sends it.
Entry = tuple[dict[str, Any], bytes]


def make_event(
    deployment: str, event: str, *, host: str | None, step: str | None, status: str | None,
    duration_ms: float | None, level: str, details: dict[str, Any],
) -> dict[str, Any]:
    if level not in LEVELS:
        raise ValueError(f"unknown event level {level!r}")
    record: dict[str, Any] = {
        "ts": time.time(), "level": level, "event": event, "deployment": deployment,
        "host": host, "step": step, "status": status,
        "duration_ms": None if duration_ms is None else round(float(duration_ms), 3),
    }
    for key, value in details.items():
        if key not in record and key != "seq":
            record[key] = value
    # Round-trip through JSON now so the live copy equals what the store and file will return.
    result: dict[str, Any] = json.loads(json.dumps(record, default=str))
    return result


class Follower:
    """One live reader of a deployment's events: a cursor into the deployment's feed.

    `cursor` is the last seq the reader delivered (the API moves it as it reads the store);
    `take` gives what the feed holds after it. `wake` is called from the emitting thread, at
    most once per `take` that found nothing new, and must not block."""

    def __init__(self, hub: EventHub, deployment: str, wake: Callable[[], None],
                 cursor: int, counted: bool = True) -> None:
        self.hub = hub
        self.deployment = deployment
        self.wake = wake
        self.cursor = cursor
        self.counted = counted  # against `max_followers`: a reader's, not a writer's (fanout)
        self.dropped = 0  # events this reader missed live and had to read from the store

    def take(self) -> tuple[list[dict[str, Any]], bool]:
        """(the feed's events after the cursor, whether some were dropped before them: the
        reader then reads the store after its cursor). The cursor moves past what is given."""
        entries, lagged = self.hub._take(self)
        return [event for event, _ in entries], lagged

    def take_lines(self, arm: bool = True) -> tuple[list[Entry], bool]:
        """`take`, each event with its JSON line: serialised once for all followers. With
        `arm` false, finding nothing does not register a wake (the deployment's writer,
        orchestrator/daemon/fanout.py, is woken for all its followers at once)."""
        return self.hub._take(self, arm)


class _Feed:
    """The recent events of one followed deployment, shared by its followers: memory per
    deployment, not per follower, and an emit that costs the same for 1 or 1,000 readers."""

    def __init__(self, capacity: int) -> None:
        self.ring: deque[Entry] = deque(maxlen=capacity)
        self.followers: set[Follower] = set()
        self.waiting: set[Follower] = set()


class EventHub:
    """Owns the store writes, the jsonl files and the followers of every deployment."""

    def __init__(self, store: Store, logs_dir: Path, *, follower_buffer: int = FOLLOWER_BUFFER):
        self.store = store
        self.logs_dir = logs_dir
        private_dir(logs_dir)
        self._lock = threading.Lock()  # the store rows and the jsonl files, in seq order
        self._feeds_lock = threading.Lock()  # the feeds and their followers (always after _lock)
        self._feeds: dict[str, _Feed] = {}
        self._files: dict[str, IO[str]] = {}
        self._follower_buffer = follower_buffer

    def sink(self, deployment: str) -> DeploymentSink:
        return DeploymentSink(self, deployment)

    def publish(self, event: dict[str, Any]) -> dict[str, Any]:
        deployment = event["deployment"]
        with self._lock:
            event = {"seq": self.store.append_event(event), **event}
            self._append_line(deployment, event)
            # The feeds' lock is taken before the store's is let go (hand over hand): the ring
            # stays in seq order, and its readers (the event loop) never wait on a store write.
            self._feeds_lock.acquire()
        waiting: set[Follower] = set()
        try:
            feed = self._feeds.get(deployment)
            if feed is not None:
                feed.ring.append((event, _line(event)))
                waiting, feed.waiting = feed.waiting, set()
        finally:
            self._feeds_lock.release()
        for follower in waiting:  # outside the lock; a wake only schedules, never blocks
            # A RuntimeError means the reader's event loop is gone: the follower has vanished.
            with contextlib.suppress(RuntimeError):
                follower.wake()
        if event["event"] in LOGGED_EVENTS or event["level"] == "error":
            getattr(log, event["level"])(
                event["event"], deployment=deployment, seq=event["seq"], host=event["host"],
                step=event["step"], status=event["status"], reason=event.get("reason"))
        return event

    def catch_up(self) -> int:
        """Events other daemons wrote (the store's notifications) into the feeds of the
        deployments followed here, then their waiting followers woken: a follower on any
        daemon sees every event live. Returns how many. The daemon's event loop does the two
        halves apart (orchestrator/daemon/listener.py): `missing` as each announcement
        arrives, `fetch` in a thread only when a feed lacks one."""
        return self.fetch(self.missing(self.store.notifications()))

    def missing(self, notes: list[tuple[str, int]]) -> set[str]:
        """The followed deployments whose feed lacks a notified (deployment, seq). Never
        touches the store or the emitters' lock: it runs at every announcement, most of them
        of deployments no one follows here, or this daemon's own (in its feeds already)."""
        newest: dict[str, int] = {}
        for deployment, seq in notes:
            newest[deployment] = max(seq, newest.get(deployment, 0))
        with self._feeds_lock:
            return {d for d, seq in newest.items()
                    if d in self._feeds and seq > _last(self._feeds[d])}

    def fetch(self, deployments: Collection[str]) -> int:
        """The stored events of `deployments` after each feed's last into the feed, in seq
        order, then their waiting followers woken. Returns how many."""
        added = 0
        for deployment in deployments:
            with self._lock:  # no emit nor other fetch appends to the feed until it is done
                with self._feeds_lock:
                    feed = self._feeds.get(deployment)
                    last = _last(feed) if feed is not None else 0
                if feed is None:
                    continue
                # The store is read without the feeds' lock, which the event loop takes at
                # every announcement and every follower's take.
                fresh = self.store.events(deployment, after=last)
                with self._feeds_lock:
                    if self._feeds.get(deployment) is not feed:
                        continue  # its last follower left meanwhile
                    for event in fresh:  # contiguous after `last`: the store has no gaps
                        feed.ring.append((event, _line(event)))
                    added += len(fresh)
                    waiting, feed.waiting = ((feed.waiting, set()) if fresh
                                             else (set(), feed.waiting))
            for follower in waiting:
                with contextlib.suppress(RuntimeError):
                    follower.wake()
        return added

    def _append_line(self, deployment: str, event: dict[str, Any]) -> None:
        handle = self._files.get(deployment)
        if handle is None:
            handle = open_private(self.logs_dir / f"{deployment}.jsonl", "a")
            self._files[deployment] = handle
        handle.write(json.dumps(event, separators=(",", ":")) + "\n")
        handle.flush()
        if event["event"] == "deployment":
            os.fsync(handle.fileno())

    def close_log(self, deployment: str) -> None:
        """Close a finished deployment's jsonl file (reopened in append mode if it emits again)."""
        with self._lock:
            handle = self._files.pop(deployment, None)
        if handle is not None:
            os.fsync(handle.fileno())
            handle.close()

    def close(self) -> None:
        with self._lock:
            for handle in self._files.values():
                os.fsync(handle.fileno())
                handle.close()
            self._files.clear()

    def follow(self, deployment: str, wake: Callable[[], None], *, after: int = 0,
               limit: int = MAX_FOLLOWERS) -> Follower:
        """A follower of `deployment` whose cursor is `after`; past `limit` followers in all,
        `DaemonError` (HTTP 503): each follower holds a connection and a task."""
        follower = Follower(self, deployment, wake, after)
        with self._feeds_lock:
            count = self._count()
            if count >= limit:
                raise DaemonError(f"too many log followers ({count}, the limit is {limit}: "
                                  "max_followers); retry later")
            feed = self._feeds.get(deployment)
            if feed is None:
                feed = self._feeds[deployment] = _Feed(self._follower_buffer)
            feed.followers.add(follower)
        return follower

    def watch(self, deployment: str, wake: Callable[[], None]) -> Follower:
        """A follower that only wakes (a deployment's writer): not counted against the cap,
        its cursor at the feed's newest event; `rearm` it after each wake."""
        follower = Follower(self, deployment, wake, 0, counted=False)
        with self._feeds_lock:
            feed = self._feeds.get(deployment)
            if feed is None:
                feed = self._feeds[deployment] = _Feed(self._follower_buffer)
            feed.followers.add(follower)
            follower.cursor = int(feed.ring[-1][0]["seq"]) if feed.ring else 0
        return follower

    def rearm(self, follower: Follower) -> bool:
        """True when the feed has events past the follower's cursor (the cursor then moves to
        the newest); else False, and the next event wakes it."""
        with self._feeds_lock:
            feed = self._feeds.get(follower.deployment)
            if feed is None or follower not in feed.followers:
                return False
            newest = int(feed.ring[-1][0]["seq"]) if feed.ring else follower.cursor
            if newest > follower.cursor:
                follower.cursor = newest
                return True
            feed.waiting.add(follower)
            return False

    def recent(self, deployment: str) -> list[Entry]:
        """A copy of the deployment's feed (its last `follower_buffer` events, in seq order):
        the writer of fanout.py reads it once per pass for all its followers."""
        with self._feeds_lock:
            feed = self._feeds.get(deployment)
            return list(feed.ring) if feed is not None else []

    def unfollow(self, follower: Follower) -> None:
        """Idempotent. The feed goes with its last follower (the store keeps every event)."""
        with self._feeds_lock:
            feed = self._feeds.get(follower.deployment)
            if feed is not None and follower in feed.followers:
                feed.followers.discard(follower)
                feed.waiting.discard(follower)
                if not feed.followers:
                    del self._feeds[follower.deployment]

    def follower_count(self) -> int:
        with self._feeds_lock:
            return self._count()

    def _count(self) -> int:
        return sum(f.counted for feed in self._feeds.values() for f in feed.followers)

    def _take(self, follower: Follower, arm: bool = True) -> tuple[list[Entry], bool]:
        with self._feeds_lock:
            feed = self._feeds.get(follower.deployment)
            if feed is None or follower not in feed.followers:
                return [], True  # unfollowed: only the store can answer
            ring = feed.ring
            first = int(ring[0][0]["seq"]) if ring else follower.cursor + 1
            if follower.cursor + 1 < first:
                # Events between the cursor and the ring's tail are gone from memory.
                follower.dropped += first - follower.cursor - 1
                return [], True
            skip = follower.cursor + 1 - first
            events = list(itertools.islice(ring, skip, None)) if skip < len(ring) else []
            if events:
                follower.cursor = int(events[-1][0]["seq"])
            elif arm:
                # Checked and registered under the one lock: no emit can slip in between.
                feed.waiting.add(follower)
        return events, False


class DeploymentSink:
    """The daemon's `EventSink` for one deployment."""

    def __init__(self, hub: EventHub, deployment: str) -> None:
        self.hub = hub
        self.deployment = deployment

    def emit(
        self, event: str, *, host: str | None = None, step: str | None = None,
        status: str | None = None, duration_ms: float | None = None, level: str = "info",
        **details: Any,
    ) -> dict[str, Any]:
        record = make_event(
            self.deployment, event, host=host, step=step, status=status,
            duration_ms=duration_ms, level=level, details=details,
        )
        return self.hub.publish(record)


def _last(feed: _Feed) -> int:
    """The seq a feed's next event follows: its newest, or (empty) its furthest-behind reader's."""
    return int(feed.ring[-1][0]["seq"]) if feed.ring else min(
        (f.cursor for f in feed.followers), default=0)


def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, separators=(",", ":")) + "\n").encode()
