"""Progress of a long step: bytes shipped during `stage`, iterations run during `verify`.

Pure: when a progress event is worth emitting (`Throttle`), and what the warmup runner's
progress lines say (`ProgressLines`, a host's text parsed with bounds like every host reply).
orchestrator/deploy/progress.py turns both into events through the pipeline's sink.

Progress events are *stored* events (`"event": "progress"`), through the same `emit` as every
other, so they get a gapless `seq`: a follower that reconnects after `lagged`, `logs ID`
after the fact, `--json` and the web UI's history all see the same stream, and a follower needs
no second channel that the daemon would have to fan out and bound separately. What that costs is
bounded here rather than in the store: at most one event a second per transfer (`MIN_INTERVAL_S`),
and only after 5 % more of it was done (`MIN_FRACTION`), plus the first and the final one; so a
transfer or warmup phase yields at most ~22 events however long it runs, about what its
`step` events already cost, and a 16-host batch adds at most 16 appends a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.core import hostjson

#: The event name (`{"event": "progress", "host", "step", "unit", "item", "done", "total",
#: "elapsed_ms"}`); `status` is "running": the step it belongs to is.
PROGRESS = "progress"
BYTES, ITERATIONS = "bytes", "iterations"
MIN_INTERVAL_S = 1.0
MIN_FRACTION = 0.05

#: How the warmup runner marks a progress line on its stderr (one JSON object after it);
#: orchestrator/hosts/remote/warmup.py writes the same prefix (tests/test_progress.py checks).
LINE_PREFIX = b"orchestrator-progress "
#: A progress line is ~60 bytes; one longer than this is not ours.
MAX_LINE = 512
#: The runner's phases that report iterations.
PHASES = ("warmup", "latency")
#: Bound on a total a host may claim (iterations are ints in the request, at most this).
MAX_TOTAL = 1 << 40


class Throttle:
    """Decides which updates of one transfer (or phase) become events. Pure: `now` is given."""

    def __init__(self, total: int, *, interval_s: float = MIN_INTERVAL_S,
                 fraction: float = MIN_FRACTION) -> None:
        self.total = total
        self.interval_s, self.step = interval_s, max(1, math.ceil(total * fraction))
        self._at = -math.inf
        self._done = -1
        self.finished = False

    def ready(self, done: int, now: float) -> bool:
        """Whether `done` (of `total`) is to be emitted at `now`: the final one always (once),
        else only past the interval and the fraction since the last one emitted."""
        if self.finished or done <= self._done:
            return False
        if done >= self.total:
            self.finished = True
        elif now - self._at < self.interval_s or (self._done >= 0
                                                   and done - self._done < self.step):
            return False
        self._at, self._done = now, done
        return True


@dataclass(frozen=True)
class Iterations:
    """One progress line of the warmup runner: `done` of `total` iterations of `phase`."""

    phase: str
    done: int
    total: int


class ProgressLines:
    """The warmup runner's stderr, fed as it arrives: the progress lines in it, parsed.

    Other stderr text (a login rc file's noise, `timeout`'s message, the log tail the runner
    writes at its end) is not ours and is skipped. A line with our prefix that is not a valid
    progress record is the host's error: `error` keeps the first one (the caller raises it as
    `BadHostOutput` once the command has ended; raising in the middle of a read would leave the
    runner running). Memory is bounded: at most `MAX_LINE` bytes of a line are held."""

    def __init__(self) -> None:
        self._buf = b""
        self._skipping = False  # inside an over-long line: drop until its newline
        self.error: str | None = None

    def feed(self, data: bytes) -> list[Iterations]:
        out: list[Iterations] = []
        self._buf += data
        while True:
            cut = self._buf.find(b"\n")
            if cut < 0:
                if len(self._buf) > MAX_LINE:
                    self._long(self._buf)
                    self._buf, self._skipping = b"", True
                return out
            line, self._buf = self._buf[:cut], self._buf[cut + 1:]
            if self._skipping:
                self._skipping = False
                continue
            if len(line) > MAX_LINE:
                self._long(line)
                continue
            record = self._parse(line)
            if record is not None:
                out.append(record)

    def _long(self, line: bytes) -> None:
        if line.startswith(LINE_PREFIX):
            self._fail(f"a progress line longer than {MAX_LINE} bytes")

    def _fail(self, why: str) -> None:
        if self.error is None:
            self.error = f"warmup runner sent {why}"

    def _parse(self, line: bytes) -> Iterations | None:
        if not line.startswith(LINE_PREFIX):
            return None
        try:
            raw = hostjson.loads(line[len(LINE_PREFIX):], max_depth=1)
        except ValueError as exc:  # HostJsonError, JSONDecodeError, bad UTF-8
            self._fail(f"a progress line that is not JSON ({exc})")
            return None
        if not isinstance(raw, dict):
            self._fail("a progress line that is not a JSON object")
            return None
        phase, done, total = raw.get("phase"), raw.get("done"), raw.get("total")
        if phase not in PHASES:
            self._fail(f"a progress line of unknown phase {str(phase)[:40]!r}")
            return None
        if type(done) is not int or type(total) is not int \
                or not 0 <= done <= total <= MAX_TOTAL:  # type(): a bool is not a count
            self._fail(f"a progress line with done={str(done)[:20]} total={str(total)[:20]}"
                       " (wanted integers, 0 <= done <= total)")
            return None
        return Iterations(str(phase), done, total)


def strip_lines(text: str) -> str:
    """Text of the runner's stderr without its progress lines (for an error's tail)."""
    prefix = LINE_PREFIX.decode()
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith(prefix))
