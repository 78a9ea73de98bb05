"""What a person watches: `submit --follow` and `logs --follow` on a terminal.

Piped or with --json, a followed deployment prints every event as before (one line or one JSON
object each: scripts read those). On a terminal it prints instead:
- one line per host step when the step ends (`12:00:03 tb-01 install ok 41.2 s`), and a line
  for each event about the whole deployment (its state, batches, pause, abort);
- under them a live block, redrawn in place: each host's running step with the time it has run
  so far and, while the step reports `progress` events (stage's bytes, verify's iterations:
  orchestrator/deploy/progress.py), a bar with done/total and the rate (bytes) or n/N
  (iterations), or its outcome once it has one;
- at the end, a summary per host (outcome, release, p50/p95/p99 of its warmup, duration, and
  why for a host that did not succeed), then the deployment's state and the exit code.

`FollowView` is pure (events in, lines out; `now` given); `LiveFollow` writes it to the terminal
and redraws the block twice a second from one ticker thread, so a long install still shows its
clock moving. Every piece of host or daemon text goes through `core.terminal.safe`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from orchestrator.cli.render import paint, progress_text, table
from orchestrator.core.progress import PROGRESS
from orchestrator.core.states import HOST_FINISHED, HOST_STARTED
from orchestrator.core.terminal import safe

#: Events about the whole deployment not worth a line on a terminal: per-batch bookkeeping.
QUIET = frozenset({"deployment.finished", "host.lock", "deployment.started"})
RUNNING = frozenset({"started", "running"})
_CORE = frozenset({"seq", "ts", "level", "event", "deployment", "host", "step", "status",
                   "duration_ms"})
TICK_S = 0.5


@dataclass
class HostView:
    step: str | None = None
    status: str | None = None
    step_since: float | None = None  # when the running step started (event time)
    first: float | None = None
    last: float | None = None
    outcome: str | None = None
    release: str | None = None
    latency: dict[str, float] = field(default_factory=dict)
    why: str | None = None
    progress: dict[str, Any] | None = None  # the running step's last `progress` event


def _seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


class FollowView:
    """The state of a followed deployment, from its events. Pure."""

    def __init__(self, *, colour: bool = False, max_rows: int = 20) -> None:
        self.colour, self.max_rows = colour, max_rows
        self.hosts: dict[str, HostView] = {}
        self.release: str | None = None
        self.state: str | None = None
        self.reason: str | None = None

    def apply(self, event: dict[str, Any]) -> list[str]:
        """Take one event; return the lines to print for good above the live block."""
        ts = float(event.get("ts") or 0)
        if event.get("release_id") and not event.get("host"):
            self.release = str(event["release_id"])
        host = event.get("host")
        if not host:
            if event.get("event") == "deployment" and event.get("status"):
                self.state = str(event["status"])
                self.reason = event.get("reason") or self.reason
            if event.get("event") in QUIET:
                return []
            return [self._deployment_line(event)]
        view = self.hosts.setdefault(str(host), HostView())
        view.first = ts if view.first is None else min(view.first, ts)
        view.last = ts if view.last is None else max(view.last, ts)
        if event.get("release_id"):
            view.release = str(event["release_id"])
        for key in ("p50_ms", "p95_ms", "p99_ms"):
            if isinstance(event.get(key), (int, float)):
                view.latency[key] = float(event[key])
        status = str(event.get("status") or "")
        if event.get("event") == HOST_FINISHED:
            view.outcome, view.step, view.status = status, None, None
            view.why = _why(event) or view.why
            return []
        if event.get("event") == HOST_STARTED or not event.get("step"):
            return []
        if event.get("event") == PROGRESS:  # drawn in the block, never a line of its own
            if event["step"] == view.step and view.status in RUNNING:
                view.progress = event
            return []
        view.step, view.status, view.progress = str(event["step"]), status, None
        if status in RUNNING:
            view.step_since = ts
            return []
        if status == "failed":
            view.why = _why(event) or view.why
        return [self._step_line(event)]

    def _deployment_line(self, event: dict[str, Any]) -> str:
        """`12:00:01 deployment running from=queued`: the details as JSON values, not Python's
        reprs, each cut at 200 characters."""
        when = time.strftime("%H:%M:%S", time.localtime(float(event.get("ts") or 0)))
        status = str(event.get("status") or "")
        parts = [when, safe(event.get("event") or "?", line=True),
                 paint(safe(status, line=True), status, self.colour)]
        for key, value in event.items():
            if key in _CORE or value in (None, "", [], {}):
                continue
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            parts.append(safe(f"{key}={text if len(text) <= 200 else text[:197] + '...'}",
                              line=True))
        return " ".join(parts)

    def _step_line(self, event: dict[str, Any]) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(float(event.get("ts") or 0)))
        status = str(event.get("status") or "")
        parts = [when, safe(event["host"], line=True), safe(event["step"], line=True),
                 paint(safe(status, line=True), status, self.colour)]
        if event.get("duration_ms") is not None:
            parts.append(_seconds(float(event["duration_ms"]) / 1000))
        why = _why(event)
        if why and status != "ok":
            parts.append(safe(why, line=True))
        return " ".join(parts)

    def block(self, now: float) -> list[str]:
        """The live lines: one per host (or counts past `max_rows` hosts)."""
        if not self.hosts:
            return []
        if len(self.hosts) > self.max_rows:
            return self._counts(now)
        width = max(len(safe(h, line=True)) for h in self.hosts)
        return [f"  {safe(name, line=True).ljust(width)}  {self._row(view, now)}"
                for name, view in sorted(self.hosts.items())]

    def _row(self, view: HostView, now: float) -> str:
        if view.outcome:
            return paint(safe(view.outcome, line=True), view.outcome, self.colour)
        if view.step is None:
            return "waiting"
        step = safe(view.step, line=True).ljust(12)
        if view.status in RUNNING and view.step_since is not None:
            row = f"{step} {paint('running', 'running', self.colour)} "
            elapsed = _seconds(max(0.0, now - view.step_since))
            if view.progress is None:
                return row + elapsed
            return f"{row}{elapsed.ljust(7)}  {progress_text(view.progress, colour=self.colour)}"
        status = view.status or ""
        return f"{step} {paint(safe(status, line=True), status, self.colour)}"

    def _counts(self, now: float) -> list[str]:
        counts: dict[str, int] = {}
        for view in self.hosts.values():
            word = view.outcome or ("running" if view.step else "waiting")
            counts[word] = counts.get(word, 0) + 1
        shown = ", ".join(paint(f"{n} {safe(w, line=True)}", w, self.colour)
                          for w, n in sorted(counts.items()))
        lines = [f"  {len(self.hosts)} hosts: {shown}"]
        running = sorted(((now - v.step_since, h, v) for h, v in self.hosts.items()
                          if not v.outcome and v.step_since is not None), reverse=True)
        for _, name, view in running[:3]:  # the slowest, which a person waits for
            lines.append(f"  {safe(name, line=True)}  {self._row(view, now)}")
        return lines

    def summary(self) -> list[str]:
        """The closing table: per host its outcome, release, warmup latency, duration."""
        rows = []
        for name, view in sorted(self.hosts.items()):
            duration = (view.last - view.first) if view.first is not None \
                and view.last is not None else None
            rows.append([name, view.outcome or view.status or "-",
                         view.release or self.release or "-",
                         *(f"{view.latency[k]:.2f}" if k in view.latency else "-"
                           for k in ("p50_ms", "p95_ms", "p99_ms")),
                         "-" if duration is None else _seconds(duration)])
        lines = [table(["host", "outcome", "release", "p50 ms", "p95 ms", "p99 ms", "duration"],
                       rows, colour=self.colour, state_column=1)] if rows else []
        for name, view in sorted(self.hosts.items()):
            if view.why and view.outcome != "succeeded":
                lines.append(f"  {safe(name, line=True)}: {safe(view.why, line=True)}")
        return lines


def _why(event: dict[str, Any]) -> str | None:
    for key in ("reason", "error"):
        value = event.get(key)
        if value:
            return str(value)
    return None


def ending(view: FollowView, deployment: str, state: str, reason: str | None,
           code: int) -> str:
    """The summary per host, then `<id>: <state>[: reason] (exit N)`, the last line a person
    reads."""
    last = f"{safe(deployment, line=True)}: {paint(safe(state, line=True), state, view.colour)}"
    if reason and state != "succeeded":
        last += f": {safe(reason, line=True)}"
    return "\n".join(["", *view.summary(), "", f"{last} (exit {code})"])


class LiveFollow:
    """FollowView on a terminal: lines scroll, the block stays under them, redrawn in place
    on each event and every `tick` seconds by one daemon thread (stopped by `close`)."""

    def __init__(self, out: IO[str], colour: bool, *, tick: float = TICK_S) -> None:
        self.out = out
        self.view = FollowView(colour=colour)
        self._drawn = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, args=(tick,), daemon=True,
                                        name="follow-redraw")
        self._ticker.start()

    def show(self, event: dict[str, Any]) -> None:
        with self._lock:
            lines = self.view.apply(event)
            self._redraw(lines)

    def close(self) -> FollowView:
        """Stop redrawing, clear the block; the view, for `ending`."""
        self._stop.set()
        self._ticker.join(timeout=2)
        with self._lock:
            self._clear()
            self.out.flush()
        return self.view

    def _tick(self, every: float) -> None:
        while not self._stop.wait(every):
            with self._lock:
                self._redraw([])

    def _clear(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")  # to the block's first line; clear
            self._drawn = 0

    def _redraw(self, lines: list[str]) -> None:
        self._clear()
        block = self.view.block(time.time())
        self.out.write("".join(line + "\n" for line in [*lines, *block]))
        self.out.flush()
        self._drawn = len(block)
