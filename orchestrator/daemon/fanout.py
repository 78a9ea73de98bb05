"""Live followers without a coroutine each: one writer per followed deployment.

A follower's request (`GET /v1/deployments/{id}/events?follow=1`) reads the store after its seq
in its own task (orchestrator/daemon/follow.py, through the ASGI `send`, so a slow reader holds
only what its connection holds), then the deployment's feed, and then hands itself to the
deployment's writer and waits, costing nothing per event. The writer is the one task woken per
burst of events (by the hub, through the followers' `LoopWaker`): it takes what each follower
has not had from the shared ring, serialises a burst once for every follower at the same place,
and writes it straight to each follower's connection (`Direct`), never waiting for one:
- a follower whose connection holds more than `WRITE_BUFFER` unsent bytes (it does not read) or
  whose cursor fell off the ring gets the `lagged` marker and its stream ends: it resumes from
  the store by seq, as before;
- a pass writes a whole burst: the next one waits for the waker's gathering delay (longer with
  more followers) and for three times as long as the last pass took (`DUTY`);
- the writer lets the event loop run other callbacks (`/healthz`, submissions) every
  `YIELD_EVERY` followers, so a thousand of them never hold the loop for a whole burst;
- idle for `FOLLOW_POLL_S`, it reads the deployment's state once for all its followers: a
  deployment that ended without an event in the feed (a restart's reconcile) sends them all
  back to the store, which has the end.

Writing straight to a connection needs its asyncio transport, which ASGI does not expose:
`with_transport` (the app as the server runs it) puts uvicorn's into the scope. Without one (any
other server), follow.py streams through the ASGI `send` as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.states import DEPLOYMENT_TERMINAL
from orchestrator.daemon.events import Entry, EventHub, Follower

#: The scope key `with_transport` sets: the connection's asyncio transport.
TRANSPORT = "orchestrator.transport"
#: Unsent bytes a follower's connection may hold before it is dropped as lagged: 1,000 followers
#: that do not read then hold at most 128 MiB, plus what the kernel's socket buffers take.
WRITE_BUFFER = 128 << 10
#: Followers written between two turns of the event loop given to everything else.
YIELD_EVERY = 64
#: The share of the event loop's time a writer's passes may take while events keep coming.
DUTY = 0.25
FOLLOW_POLL_S = 5.0
LAGGED = "lagged"
#: Why a follower's writer let it go: its stream ends, or it reads the store again.
END, DROPPED, STORE = "end", "dropped", "store"


def with_transport(app: Any) -> Any:
    """The ASGI app with each HTTP request's transport in its scope (`TRANSPORT`), when the
    server's `send` is uvicorn's (a bound method of its request cycle, which holds it)."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if isinstance(transport, asyncio.WriteTransport):
                scope[TRANSPORT] = transport
        await app(scope, receive, send)

    return wrapped


class Direct:
    """A follower's connection, written without the ASGI `send` (so without awaiting it): the
    response's body framing is ours to write, chunked for an HTTP/1.1 client, raw for 1.0."""

    def __init__(self, transport: asyncio.WriteTransport, chunked: bool) -> None:
        self.transport = transport
        self.chunked = chunked

    @classmethod
    def of(cls, scope: MutableMapping[str, Any]) -> Direct | None:
        transport = scope.get(TRANSPORT)
        if not isinstance(transport, asyncio.WriteTransport):
            return None
        return cls(transport, chunked=scope.get("http_version") == "1.1")

    def write(self, data: bytes) -> None:
        if not data:
            return  # an empty chunk would end a chunked body
        if self.chunked:
            self.transport.writelines([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            self.transport.write(data)

    def unsent(self) -> int:
        return self.transport.get_write_buffer_size()

    def gone(self) -> bool:
        return self.transport.is_closing()


@dataclass(eq=False)
class Client:
    """One follower in its writer's hands: `done` says why the writer let it go."""

    follower: Follower
    direct: Direct
    host: str | None
    done: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    def finish(self, why: str) -> None:
        if not self.done.done():
            self.done.set_result(why)


class Writer:
    """The one task that writes a deployment's live events to all its followers."""

    def __init__(self, fanout: Fanout, deployment: str) -> None:
        self.fanout = fanout
        self.deployment = deployment
        self.clients: list[Client] = []
        self.wake = asyncio.Event()
        self.kick = False  # a follower joined: one pass even without a new event
        waker = fanout.waker()
        self.own = fanout.hub.watch(deployment, lambda: waker.wake(self.wake))
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        hub, loop = self.fanout.hub, asyncio.get_running_loop()
        try:
            while self.clients and not self.fanout.stopping():
                if hub.rearm(self.own) or self.kick:  # new events since the last pass
                    self.kick = False
                    started = loop.time()
                    await self._pass()
                    # Let a burst gather before the next pass, the longer the more followers
                    # (the waker's delay) and the longer a pass takes (at most DUTY of the
                    # loop's time): a write per follower per pass is what followers cost.
                    spent = loop.time() - started
                    await asyncio.sleep(max(self.fanout.gather(), spent * (1 / DUTY - 1)))
                    continue
                try:
                    async with asyncio.timeout(FOLLOW_POLL_S):
                        await self.wake.wait()
                except TimeoutError:
                    await self._idle()
                self.wake.clear()
        finally:
            self.fanout.writers.pop(self.deployment, None)
            hub.unfollow(self.own)
            for client in self.clients:
                client.finish(END if self.fanout.stopping() else STORE)

    async def _pass(self) -> None:
        """Each follower's events after its cursor, written to its connection: the feed is
        copied once (one short hold of the hub's feeds lock) and each distinct slice of it
        serialised once, whatever the number of followers."""
        ring = self.fanout.hub.recent(self.deployment)
        if not ring:
            return
        first, newest = int(ring[0][0]["seq"]), int(ring[-1][0]["seq"])
        chunks: dict[tuple[int, str | None], tuple[bytes, bool]] = {}
        for index, client in enumerate(list(self.clients)):
            if index and index % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if client.done.done():
                continue
            if client.direct.gone():
                self._drop(client, END)
                continue
            cursor = client.follower.cursor
            if cursor >= newest:
                continue
            if cursor + 1 < first:  # what it has not had fell off the feed: the store has it
                self._lagged(client)
                continue
            key = (cursor, client.host)
            if key not in chunks:
                entries = ring[cursor + 1 - first:]
                chunks[key] = (lines_of(entries, client.host), any(is_end(e) for e, _ in entries))
            chunk, ended = chunks[key]
            client.direct.write(chunk)
            client.follower.cursor = newest
            if ended:
                self._drop(client, END)
            elif client.direct.unsent() > WRITE_BUFFER:
                self._lagged(client)

    async def _idle(self) -> None:
        """No event for a while: drop the followers that left, and send them all to the store
        when the deployment ended without its end reaching the feed."""
        for client in list(self.clients):
            if client.direct.gone():
                self._drop(client, END)
        if self.clients and await self.fanout.ended(self.deployment):
            for client in list(self.clients):
                self._drop(client, STORE)

    def _lagged(self, client: Client) -> None:
        client.direct.write(marker(self.deployment, client.follower.cursor))
        self._drop(client, DROPPED)

    def _drop(self, client: Client, why: str) -> None:
        with contextlib.suppress(ValueError):
            self.clients.remove(client)
        client.finish(why)


class Fanout:
    """The writers of one event loop, by deployment."""

    def __init__(self, hub: EventHub, waker: Callable[[], Any],
                 ended: Callable[[str], Any], stopping: Callable[[], bool],
                 gather: Callable[[], float]) -> None:
        self.hub = hub
        self.waker = waker          # the loop's LoopWaker
        self.gather = gather        # seconds a burst gathers before it is written
        self.ended = ended          # async: whether the deployment is in a final state
        self.stopping = stopping
        self.writers: dict[str, Writer] = {}

    def add(self, client: Client) -> None:
        """Hand a follower that has caught up with the feed to its deployment's writer; it gets
        every event after its cursor from the writer's next pass on."""
        deployment = client.follower.deployment
        writer = self.writers.get(deployment)
        if writer is None:
            writer = self.writers[deployment] = Writer(self, deployment)
        writer.clients.append(client)
        writer.kick = True  # a pass now: what came between the follower's take and this
        writer.wake.set()

    def remove(self, client: Client) -> None:
        writer = self.writers.get(client.follower.deployment)
        if writer is not None:
            writer._drop(client, END)


def marker(deployment: str, after: int) -> bytes:
    """The line that ends a dropped follower's stream (no `seq`: it is not an event)."""
    return (json.dumps({"event": LAGGED, "deployment": deployment, "after": after},
                       separators=(",", ":")) + "\n").encode()


def lines_of(entries: list[Entry], host: str | None) -> bytes:
    return b"".join(line for e, line in entries if host is None or e["host"] == host)


_END = frozenset(str(s) for s in DEPLOYMENT_TERMINAL)  # built once: checked per event per reader


def is_end(event: dict[str, Any]) -> bool:
    return event.get("event") == "deployment" and event.get("status") in _END
