"""Connections and concurrency: the one place that holds SSH sessions open and spawns threads.

`Pool` keeps one connection per host, reused by every command of a rollout
(`with pool.session(host) as t: ...`), never more than `max_connections` open at once (an idle
connection to another host is closed to make room), all closed by `pool.close()`. A connection
found dead when a session starts is reopened once; if that fails the caller sees the error.

`map_hosts(fn, hosts, max_parallel)` is the one concurrency strategy: paramiko blocks, so host
work runs in a bounded thread pool; nothing else in the codebase spawns threads for host work.
A `HostError` becomes that host's result; any other exception is a bug and propagates.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from orchestrator.errors import HostError
from orchestrator.hosts import ssh
from orchestrator.hosts.transport import Transport

T = TypeVar("T")


class Named(Protocol):
    @property
    def name(self) -> str: ...


H = TypeVar("H", bound=Named)
A = TypeVar("A", bound=ssh.HostAddress)
Connector = Callable[[ssh.HostAddress], Transport]


def map_hosts(
    fn: Callable[[H], T], hosts: Sequence[H], max_parallel: int
) -> dict[str, T | HostError]:
    """`fn(host)` for every host, at most `max_parallel` at once; results keyed by host name,
    in the order of `hosts`. With `max_parallel` 1 everything runs inline, in order."""
    results: dict[str, T | HostError] = {}
    if max_parallel <= 1 or len(hosts) <= 1:
        for host in hosts:
            results[host.name] = _call(fn, host)
        return results
    workers = min(max_parallel, len(hosts))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="host") as executor:
        futures = [(host.name, executor.submit(_call, fn, host)) for host in hosts]
        for name, future in futures:
            results[name] = future.result()
    return results


def _call(fn: Callable[[H], T], host: H) -> T | HostError:
    try:
        return fn(host)
    except HostError as exc:
        return exc


@dataclass
class _Slot:
    transport: Transport | None = None  # None while the connection is being opened
    busy: bool = False
    owner: int = 0  # thread holding the session: a nested session there would wait forever
    last_used: int = 0


class Pool:
    """At most one open connection per host and `max_connections` in all."""

    def __init__(
        self,
        options: ssh.SshOptions,
        max_connections: int = 16,
        connector: Connector | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.options = options
        self.max_connections = max_connections
        self._connector = connector  # None: SSH, whose connect retries within `remaining`
        self._slots: dict[str, _Slot] = {}
        self._cond = threading.Condition()
        self._clock = 0
        self.connects = 0  # connections opened so far: what "one per host" is checked against
        self._closed = False

    @contextmanager
    def session(self, host: ssh.HostAddress,
                remaining: Callable[[], float] | None = None) -> Iterator[Transport]:
        """Exclusive use of the host's connection for the duration of the block. A connection
        opened here retries a transient failure within `remaining()` (a step's deadline)."""
        slot, evicted = self._acquire(host.name)
        for old in evicted:
            old.close()
        try:
            if slot.transport is not None and not slot.transport.alive:
                slot.transport.close()  # found dead: reopen it, once
                slot.transport = None
            if slot.transport is None:
                slot.transport = self._open(host, remaining)
            yield slot.transport
        except BaseException:
            self._release(host.name, slot)
            raise
        self._release(host.name, slot)

    def _open(self, host: ssh.HostAddress,
              remaining: Callable[[], float] | None = None) -> Transport:
        transport = (self._connector(host) if self._connector is not None
                     else ssh.connect(host, self.options, remaining=remaining))
        with self._cond:
            self.connects += 1
        return transport

    def _acquire(self, name: str) -> tuple[_Slot, list[Transport]]:
        evicted: list[Transport] = []
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("the connection pool is closed")
                slot = self._slots.get(name)
                if slot is not None and not slot.busy:
                    break
                if slot is not None and slot.owner == threading.get_ident():
                    raise RuntimeError(f"nested pool.session({name!r}) in one thread: reuse "
                                       "the transport of the enclosing session")
                if slot is None and len(self._slots) < self.max_connections:
                    slot = self._slots[name] = _Slot()
                    break
                if slot is None and (victim := self._idle_victim()) is not None:
                    idle = self._slots.pop(victim)
                    if idle.transport is not None:
                        evicted.append(idle.transport)
                    continue
                self._cond.wait()
            slot.busy, slot.owner = True, threading.get_ident()
            return slot, evicted

    def _idle_victim(self) -> str | None:
        idle = [(s.last_used, n) for n, s in self._slots.items() if not s.busy]
        return min(idle)[1] if idle else None

    def _release(self, name: str, slot: _Slot) -> None:
        if self._closed and slot.transport is not None:
            slot.transport.close()  # the pool was closed while this session ran
        with self._cond:
            self._clock += 1
            slot.busy, slot.owner, slot.last_used = False, 0, self._clock
            if slot.transport is None and self._slots.get(name) is slot:
                del self._slots[name]  # the connect failed: free the place for others
            self._cond.notify_all()

    def open_count(self) -> int:
        with self._cond:
            return sum(1 for s in self._slots.values() if s.transport is not None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            slots, self._slots = list(self._slots.values()), {}
            self._cond.notify_all()
        for slot in slots:
            if slot.transport is not None:
                slot.transport.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map_hosts(
        self, fn: Callable[[Transport, A], T], hosts: Sequence[A], max_parallel: int
    ) -> dict[str, T | HostError]:
        """`fn(transport, host)` on every host through this pool's sessions."""

        def one(host: A) -> T:
            with self.session(host) as transport:
                return fn(transport, host)

        return map_hosts(one, hosts, max_parallel)
