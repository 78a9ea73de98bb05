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
  3. an offer to every follower of that deployment.
Followers have bounded buffers and never block the emitter: a full buffer is dropped and the
follower marked lagged; it then re-reads from the store after the last seq it delivered, so a
follower sees every event, in order, without gaps, however slow it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import structlog

from orchestrator.core.sink import EventSink
from orchestrator.daemon.store import Store, open_private, private_dir

LEVELS = ("debug", "info", "warning", "error")
# Mirrored into the daemon's own log (journald): what an operator scans for, not every step.
LOGGED_EVENTS = frozenset({"deployment", "reconcile", "watchdog", "rollout", "cancel", "rollback"})
log = structlog.get_logger("orchestrator.daemon.events")
__all__ = ["DeploymentSink", "EventHub", "EventSink", "make_event", "merge_in_order"]
FOLLOWER_BUFFER = 256


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
    """One live reader of a deployment's events. `offer` is called by the emitting thread and
    never blocks; `wake` (thread-safe) tells the reader to look at its buffer."""

    def __init__(self, deployment: str, wake: Callable[[], None], capacity: int) -> None:
        self.deployment = deployment
        self._wake = wake
        self._capacity = capacity
        self._buf: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self.lagged = False
        self.dropped = 0

    def offer(self, event: dict[str, Any]) -> None:
        with self._lock:
            # Wake the reader only when it has nothing pending: one wake-up per batch, not per
            # event, so a burst of events costs the reader's event loop one callback.
            wake = not self._buf and not self.lagged
            if self.lagged or len(self._buf) >= self._capacity:
                # Drop rather than wait: the reader will catch up from the store by seq.
                self.lagged = True
                self.dropped += len(self._buf) + 1
                self._buf.clear()
            else:
                self._buf.append(event)
        if wake:
            # A RuntimeError means the reader's event loop is gone: the follower has vanished.
            with contextlib.suppress(RuntimeError):
                self._wake()

    def take(self) -> tuple[list[dict[str, Any]], bool]:
        """(buffered events, whether some were dropped since the last take)."""
        with self._lock:
            events, lagged = list(self._buf), self.lagged
            self._buf.clear()
            self.lagged = False
        return events, lagged


class EventHub:
    """Owns the store writes, the jsonl files and the followers of every deployment."""

    def __init__(self, store: Store, logs_dir: Path, *, follower_buffer: int = FOLLOWER_BUFFER):
        self.store = store
        self.logs_dir = logs_dir
        private_dir(logs_dir)
        self._lock = threading.Lock()
        self._followers: dict[str, set[Follower]] = {}
        self._files: dict[str, IO[str]] = {}
        self._follower_buffer = follower_buffer

    def sink(self, deployment: str) -> DeploymentSink:
        return DeploymentSink(self, deployment)

    def publish(self, event: dict[str, Any]) -> dict[str, Any]:
        deployment = event["deployment"]
        with self._lock:
            event = {"seq": self.store.append_event(event), **event}
            self._append_line(deployment, event)
            # Offered under the lock so followers see seq order; `offer` never blocks.
            for follower in self._followers.get(deployment, ()):
                follower.offer(event)
        if event["event"] in LOGGED_EVENTS or event["level"] == "error":
            getattr(log, event["level"])(
                event["event"], deployment=deployment, seq=event["seq"], host=event["host"],
                step=event["step"], status=event["status"], reason=event.get("reason"))
        return event

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

    def follow(self, deployment: str, wake: Callable[[], None]) -> Follower:
        follower = Follower(deployment, wake, self._follower_buffer)
        with self._lock:
            self._followers.setdefault(deployment, set()).add(follower)
        return follower

    def unfollow(self, follower: Follower) -> None:
        with self._lock:
            group = self._followers.get(follower.deployment)
            if group is not None:
                group.discard(follower)
                if not group:
                    del self._followers[follower.deployment]

    def follower_count(self) -> int:
        with self._lock:
            return sum(len(g) for g in self._followers.values())


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


def merge_in_order(
    last_seq: int, buffered: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], bool]:
    """Pure: the buffered events that continue exactly after `last_seq`, and whether a gap was
    found (the caller then re-reads from the store)."""
    out: list[dict[str, Any]] = []
    expected = last_seq + 1
    for event in buffered:
        seq = int(event["seq"])
        if seq < expected:
            continue  # already delivered from the store
        if seq > expected:
            return out, True
        out.append(event)
        expected += 1
    return out, False
