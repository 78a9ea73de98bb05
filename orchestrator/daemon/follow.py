"""`GET /v1/deployments/{id}/events?follow=1`: one live follower's stream, bounded in memory.

A follower reads the store after its seq in pages, then the deployment's feed in the event hub
(orchestrator/daemon/events.py). When its connection can be written directly (uvicorn, the
daemon's server: `Followers.serve`, `FollowResponse`) it then hands itself to its
deployment's writer (orchestrator/daemon/fanout.py), which writes every follower's bursts in
one task. Otherwise (the web UI's server-sent events, another ASGI server) `stream` reads the
feed itself, waiting on an `asyncio.Event` between bursts. What that costs:
- the emitter (the rollout): nothing per event while the follower does not wait; one wake
  otherwise, and the wakes of a burst reach the event loop in one callback (`LoopWaker`), not
  one per follower per event;
- memory: one page of the store (`PAGE` events) or one burst of the feed, plus what the
  transport holds for a client that does not read (uvicorn stops the generator at its high
  water mark, so the daemon never buffers more for it);
- threads: its store reads go through a small limiter of their own, so a thousand followers
  catching up never take the threads of the other routes (`/healthz`, submissions).

A follower that fell off the feed's tail while live is dropped: its stream ends with one marker
line `{"event": "lagged", "deployment": ID, "after": SEQ}` (no `seq`: it is not an event) and
the client reconnects with `after=SEQ`, reading the store from there. A slow reader is thus
never held in memory; it resumes where it was, and sees each seq exactly once.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from anyio import CapacityLimiter
from starlette.responses import StreamingResponse

from orchestrator.core.states import DEPLOYMENT_TERMINAL
from orchestrator.daemon.events import Follower
from orchestrator.daemon.fanout import STORE, Client, Direct, Fanout, is_end, lines_of
from orchestrator.daemon.service import Service

PAGE = 500
#: Without a wake, look at the store again this often: the deployment may have ended while the
#: feed was empty (a restart's reconcile), and a lost reader must not wait forever.
FOLLOW_POLL_S = 5.0
#: Threads at once for followers' store reads (anyio's default pool has 40 for everything).
READ_THREADS = 4
#: How long a woken follower lets events gather before it takes them: latency for fewer sends.
GATHER_MIN_S, GATHER_MAX_S = 0.01, 0.25
LAGGED = "lagged"
T = TypeVar("T")


class LoopWaker:
    """Sets followers' `asyncio.Event`s from the emitting thread: the first wake of a burst
    schedules one loop callback, later ones only join its list (no syscall, no blocking). The
    callback sets them all after `gather()` seconds, one timer for every follower: a fast
    rollout emits every few ms, and a send per event per follower would keep the loop (and the
    GIL) from the emitter."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gather: Callable[[], float]) -> None:
        self._loop = loop
        self._gather = gather
        self._lock = threading.Lock()
        self._pending: list[asyncio.Event] = []

    def wake(self, event: asyncio.Event) -> None:
        with self._lock:
            self._pending.append(event)
            if len(self._pending) > 1:
                return  # a callback is already scheduled and will take this one too
        self._loop.call_soon_threadsafe(self._later)

    def _later(self) -> None:
        self._loop.call_later(self._gather(), self._run)

    def _run(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for event in pending:
            event.set()


class Followers:
    """The API's side of the followers: one waker, one read limiter and one set of
    deployment writers (orchestrator/daemon/fanout.py) per event loop."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waker: LoopWaker | None = None
        self._limiter: CapacityLimiter | None = None
        self._fanout: Fanout | None = None

    def _bind(self) -> tuple[LoopWaker, CapacityLimiter]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._waker is None or self._limiter is None:
            self._loop, self._waker = loop, LoopWaker(loop, self._gather_s)
            self._limiter = CapacityLimiter(READ_THREADS)
            self._fanout = None
        return self._waker, self._limiter

    def fanout(self) -> Fanout:
        waker, _ = self._bind()
        if self._fanout is None:
            self._fanout = Fanout(self.service.hub, lambda: waker, self._ended,
                                  self.service.stopping.is_set, self._gather_s)
        return self._fanout

    async def _ended(self, deployment: str) -> bool:
        state = (await self._read(self.service.store.get_deployment, deployment)).state
        return state in DEPLOYMENT_TERMINAL

    async def _read(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        _, limiter = self._bind()
        return await anyio.to_thread.run_sync(lambda: call(*args, **kwargs), limiter=limiter)

    def _gather_s(self) -> float:
        """The loop sends about followers / gather bursts a second: the more followers, the
        longer each lets a burst gather (10 ms up to 50 followers, 200 ms at 1,000, at most
        250 ms): a pass writes to each of them, so its cost is per pass, not per event."""
        return min(GATHER_MAX_S, max(GATHER_MIN_S, self.service.hub.follower_count() * 2e-4))

    async def open(self, deployment: str, after: int) -> tuple[Follower, asyncio.Event]:
        """Register a follower (503 past `max_followers`) before any read, so nothing emitted
        from now on can be missed."""
        await self._read(self.service.store.get_deployment, deployment)  # 404 first
        waker, _ = self._bind()
        wake = asyncio.Event()
        follower = self.service.hub.follow(
            deployment, lambda: waker.wake(wake), after=after,
            limit=self.service.config.max_followers)
        return follower, wake

    async def _from_store(self, follower: Follower, host: str | None) -> AsyncIterator[bytes]:
        """The follower's deployment's stored events after its cursor, a page at a time (the
        cursor moves past each page read), as lines; pages with no line for `host` skipped."""
        while True:
            rows = await self._read(self.service.store.events, follower.deployment,
                                    after=follower.cursor, limit=PAGE)
            if rows:
                follower.cursor = int(rows[-1]["seq"])
                chunk = _lines(rows, host)
                if chunk:
                    yield chunk
            if len(rows) < PAGE:
                return

    async def stream(self, follower: Follower, wake: asyncio.Event,
                     host: str | None) -> AsyncIterator[bytes]:
        hub, store, stopping = self.service.hub, self.service.store, self.service.stopping
        deployment = follower.deployment
        try:
            while not stopping.is_set():
                # The state first: when it is final, the rows read next hold the last event.
                state = (await self._read(store.get_deployment, deployment)).state
                async for chunk in self._from_store(follower, host):
                    yield chunk
                if state in DEPLOYMENT_TERMINAL:
                    return
                live = False  # whether this reader has kept up with the feed since the store
                while not stopping.is_set():
                    entries, lagged = follower.take_lines()
                    if lagged and not live:
                        break  # a burst passed while the store was read: read it again
                    if lagged:
                        yield _line({"event": LAGGED, "deployment": deployment,
                                     "after": follower.cursor})
                        return
                    live = True
                    if entries:
                        chunk = b"".join(line for e, line in entries
                                         if host is None or e["host"] == host)
                        if chunk:
                            yield chunk  # one write per burst, of lines serialised once
                        if any(is_end(e) for e, _ in entries):
                            return
                        continue
                    try:
                        async with asyncio.timeout(FOLLOW_POLL_S):  # no task, unlike wait_for
                            await wake.wait()
                    except TimeoutError:
                        break  # to the store: the deployment may have ended meanwhile
                    wake.clear()
        finally:
            hub.unfollow(follower)


    async def serve(self, follower: Follower, direct: Direct, host: str | None,
                    body: Callable[[bytes], Awaitable[None]]) -> None:
        """A follower's stream when its connection can be written directly: the store after
        its cursor (through `body`, the ASGI send, which waits for a slow reader), the feed
        after that, then its deployment's writer until the stream ends (or the writer sends
        it back to the store). The follower is unfollowed at the end, however it ends."""
        hub, store, stopping = self.service.hub, self.service.store, self.service.stopping
        deployment = follower.deployment
        try:
            while not stopping.is_set():
                # The state first: when it is final, the rows read next hold the last event.
                state = (await self._read(store.get_deployment, deployment)).state
                async for chunk in self._from_store(follower, host):
                    await body(chunk)
                if state in DEPLOYMENT_TERMINAL:
                    return
                entries, lagged = follower.take_lines(arm=False)
                if lagged:
                    continue  # a burst passed while the store was read: read it again
                if entries:
                    await body(lines_of(entries, host))
                    if any(is_end(e) for e, _ in entries):
                        return
                client = Client(follower, direct, host)
                fanout = self.fanout()
                fanout.add(client)  # no await since the take: the writer has it from there
                try:
                    why = await client.done
                finally:
                    fanout.remove(client)
                if why != STORE:
                    return
        finally:
            hub.unfollow(follower)


class FollowResponse(StreamingResponse):
    """A live follower's response written by its deployment's writer (`Followers.serve`):
    the head and the end through the ASGI `send`, the live events straight to the
    connection."""

    def __init__(self, followers: Followers, follower: Follower, direct: Direct,
                 host: str | None, media_type: str) -> None:
        super().__init__(_nothing(), media_type=media_type)
        self.followers, self.follower, self.direct, self.host = followers, follower, direct, host

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def body(chunk: bytes) -> None:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async def respond() -> None:
            try:
                await send({"type": "http.response.start", "status": self.status_code,
                            "headers": self.raw_headers})
                await self.followers.serve(self.follower, self.direct, self.host, body)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                group.cancel_scope.cancel()

        try:
            # As StreamingResponse does: a client that leaves ends its follower at once, not
            # at the writer's next look at its connection.
            async with anyio.create_task_group() as group:
                group.start_soon(respond)
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()
        finally:
            self.followers.service.hub.unfollow(self.follower)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing: the body is FollowResponse's own


def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, separators=(",", ":")) + "\n").encode()


def _lines(events: list[dict[str, Any]], host: str | None) -> bytes:
    return b"".join(_line(e) for e in events if host is None or e["host"] == host)
