"""Progress events of one host's long steps, through the pipeline's sink.

    meter = ctx.progress.meter("stage", BYTES, "wheels", total)   # one transfer or phase
    transport.put(path, remote, progress=meter.file(base))          # paramiko's callbacks ...
    meter.update(done)                                              # ... become throttled events

Each meter emits `{"event": "progress", "host", "step", "status": "running", "unit", "item",
"done", "total", "elapsed_ms"}` through the same sink as the step events (stored, gapless `seq`:
orchestrator/core/progress.py says why), at most what `Throttle` lets through, and always a
final one when `done` reaches `total`. A meter is used by one thread: its host's worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.core.progress import BYTES, PROGRESS, Throttle
from orchestrator.core.sink import EventSink


class Meter:
    """The progress of one transfer (bytes of several files) or one warmup phase."""

    def __init__(self, sink: EventSink | None, host: str, step: str, unit: str, item: str,
                 total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.sink, self.host, self.step = sink, host, step
        self.unit, self.item, self.total = unit, item, total
        self.clock = clock
        self.started = clock()
        self.done = 0
        self._throttle = Throttle(total)

    def update(self, done: int) -> None:
        """`done` of `total` so far (never past it); an event when the throttle allows."""
        self.done = min(max(done, self.done), self.total)
        now = self.clock()
        if self.sink is None or not self._throttle.ready(self.done, now):
            return
        self.sink.emit(PROGRESS, host=self.host, step=self.step, status="running",
                       unit=self.unit, item=self.item, done=self.done, total=self.total,
                       elapsed_ms=round((now - self.started) * 1000.0, 1))

    def file(self, base: int) -> Callable[[int, int], None]:
        """paramiko's put callback `(sent, size)` for one file starting at byte `base` of the
        transfer."""
        return lambda sent, _size: self.update(base + sent)


class HostProgress:
    """Makes the meters of one host's steps; without a sink (a rollback's context, a test),
    meters count but emit nothing."""

    def __init__(self, sink: EventSink | None, host: str) -> None:
        self.sink, self.host = sink, host

    def meter(self, step: str, unit: str, item: str, total: int) -> Meter:
        return Meter(self.sink, self.host, step, unit, item, total)

    def upload(self, step: str, item: str, local: Path) -> Callable[[int, int], None]:
        """The put callback of one file sent alone (the uv binary, an image archive)."""
        return self.meter(step, BYTES, item, local.stat().st_size).file(0)
