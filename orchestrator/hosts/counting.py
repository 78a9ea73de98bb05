"""Counting a host's exchanges: how many commands, uploads and downloads each host's connection
carried, and how long they took, per label (a deploy step). Over a far link each exchange costs
at least one round trip, so this count is what a deploy to distant hosts pays beyond its work.

    counter = Exchanges()
    pool = Pool(options, connector=lambda host: Counting(ssh.connect(host, options), counter,
                                                         label=lambda: where[host.name]))
    ... deploy ...
    counter.count[("tb-01", "verify", "run")]   # commands tb-01 ran during verify

`Counting` wraps any Transport and changes nothing of what it does; a stream of files
(`run_with_files`) counts as one run; a host agent's start (`converse`: the exec of its
channel) as one run, and each of its requests as one `req` (a line sent, its reply read: one
round trip), timed from the send to the reply; anything else is passed through uncounted.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from orchestrator.hosts.transport import CommandResult, Conversation, Transport

KINDS = ("run", "req", "put", "get")


class Exchanges:
    """Thread-safe tallies per (host, label, kind): a count and the seconds spent."""

    def __init__(self) -> None:
        self.count: Counter[tuple[str, str, str]] = Counter()
        self.seconds: defaultdict[tuple[str, str, str], float] = defaultdict(float)
        self._guard = threading.Lock()

    def add(self, host: str, label: str, kind: str, seconds: float, n: int = 1) -> None:
        with self._guard:
            self.count[(host, label, kind)] += n
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
        # command, counted as a run; an agent's start too, and its requests as `req`s. Looked
        # up on `inner`, so a Counting can stream (or converse) exactly when what it wraps can
        # (hostops checks `isinstance(transport, FileStreamer)`, the agent `Converser`).
        attr = getattr(self.inner, name)
        if name == "converse":
            def conversing(argv: Sequence[str]) -> _CountedConversation:
                started = time.perf_counter()
                try:
                    conversation: Conversation = attr(argv)
                finally:
                    self._tally("run", started)
                return _CountedConversation(conversation, self)
            return conversing
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


class _CountedConversation:
    """A Conversation whose requests are tallied: one `req` per send, with the seconds until
    the reply lines that follow it are read (the agent's hello belongs to its first request)."""

    def __init__(self, inner: Conversation, counting: Counting) -> None:
        self.inner, self.counting = inner, counting

    def send(self, data: bytes, *, timeout: float) -> None:
        started = time.perf_counter()
        try:
            self.inner.send(data, timeout=timeout)
        finally:
            self._add(1, started)

    def read_line(self, *, timeout: float, limit: int) -> bytes:
        started = time.perf_counter()
        try:
            return self.inner.read_line(timeout=timeout, limit=limit)
        finally:
            self._add(0, started)

    def _add(self, n: int, started: float) -> None:
        c = self.counting
        c.exchanges.add(c.host, c.label(), "req", time.perf_counter() - started, n)

    def stderr_tail(self) -> str:
        return self.inner.stderr_tail()

    def exit_code(self) -> int | None:
        return self.inner.exit_code()

    def close(self) -> None:
        self.inner.close()

    def kill(self) -> None:
        self.inner.kill()
