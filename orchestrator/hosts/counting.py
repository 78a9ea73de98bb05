"""Counting a host's exchanges: how many commands, uploads and downloads each host's connection
carried, and how long they took, per label (a deploy step). Over a far link each exchange costs
at least one round trip, so this count is what a deploy to distant hosts pays beyond its work.

    counter = Exchanges()
    pool = Pool(options, connector=lambda host: Counting(ssh.connect(host, options), counter,
                                                         label=lambda: where[host.name]))
    ... deploy ...
    counter.count[("tb-01", "verify", "run")]   # commands tb-01 ran during verify

`Counting` wraps any Transport and changes nothing of what it does; a stream of files
(`run_with_files`) counts as one run; anything else is passed through uncounted.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from orchestrator.hosts.transport import CommandResult, Transport

KINDS = ("run", "put", "get")


class Exchanges:
    """Thread-safe tallies per (host, label, kind): a count and the seconds spent."""

    def __init__(self) -> None:
        self.count: Counter[tuple[str, str, str]] = Counter()
        self.seconds: defaultdict[tuple[str, str, str], float] = defaultdict(float)
        self._guard = threading.Lock()

    def add(self, host: str, label: str, kind: str, seconds: float) -> None:
        with self._guard:
            self.count[(host, label, kind)] += 1
            self.seconds[(host, label, kind)] += seconds

    def total(self, host: str, label: str | None = None) -> int:
        """Exchanges of `host` (in `label` only, if given)."""
        with self._guard:
            return sum(n for (h, lb, _), n in self.count.items()
                       if h == host and (label is None or lb == label))


class Counting:
    """A Transport that tallies each exchange of `inner` under `label()` (called at the time)."""

    def __init__(self, inner: Transport, exchanges: Exchanges,
                 label: Callable[[], str] = lambda: "") -> None:
        self.inner, self.exchanges, self.label = inner, exchanges, label
        self.host = inner.host

    @property
    def alive(self) -> bool:
        return self.inner.alive

    def _tally(self, kind: str, started: float) -> None:
        self.exchanges.add(self.host, self.label(), kind, time.perf_counter() - started)

    def run(self, argv: Sequence[str], *, timeout: float | None = None,
            stdin: bytes | None = None, check: bool = True,
            max_output: int | None = None,
            on_stderr: Callable[[bytes], None] | None = None) -> CommandResult:
        started = time.perf_counter()
        try:
            return self.inner.run(argv, timeout=timeout, stdin=stdin, check=check,
                                  max_output=max_output, on_stderr=on_stderr)
        finally:
            self._tally("run", started)

    def put(self, data_or_local_path: bytes | Path, remote_path: str,
            mode: int = 0o644, progress: Callable[[int, int], None] | None = None) -> None:
        started = time.perf_counter()
        try:
            self.inner.put(data_or_local_path, remote_path, mode, progress)
        finally:
            self._tally("put", started)

    def get(self, remote_path: str, *, max_bytes: int | None = None,
            timeout: float | None = None) -> bytes:
        started = time.perf_counter()
        try:
            return self.inner.get(remote_path, max_bytes=max_bytes, timeout=timeout)
        finally:
            self._tally("get", started)

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> Counting:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        # What the Transport gains later: passed, not counted; but a stream of files is one
        # command, counted as a run. Looked up on `inner`, so a Counting can stream exactly when
        # what it wraps can (hostops checks `isinstance(transport, FileStreamer)`).
        attr = getattr(self.inner, name)
        if name != "run_with_files":
            return attr

        def counted(*args: Any, **kwargs: Any) -> CommandResult:
            started = time.perf_counter()
            try:
                result: CommandResult = attr(*args, **kwargs)
                return result
            finally:
                self._tally("run", started)
        return counted
