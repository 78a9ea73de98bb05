"""A deployment's events as server-sent events, over the API's own followers
(orchestrator/daemon/follow.py): the same store-then-feed reading, the same `max_followers`
cap, the same ring bound and `lagged` drop for a reader that falls behind.

Each event is one SSE message: `id:` its seq (so a reconnect resumes with `after=` the last id),
`event:` the contract's `event` field when it is a plain word (else "message"), `data:` its JSON
on one line (JSON escapes newlines, so no event can end a message early or forge another). The
`lagged` marker arrives as `event: lagged` with `{"after": SEQ}`: the page reconnects from there.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

from orchestrator.daemon.events import Follower
from orchestrator.daemon.follow import Followers

MEDIA_TYPE = "text/event-stream"
_WORD = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def frame(line: bytes) -> bytes:
    """One NDJSON line of the follower stream as one SSE message."""
    event = json.loads(line)
    name = event.get("event")
    kind = name if isinstance(name, str) and _WORD.match(name) else "message"
    head = f"id: {event['seq']}\n" if isinstance(event.get("seq"), int) else ""
    return f"{head}event: {kind}\ndata: ".encode() + line.rstrip(b"\n") + b"\n\n"


async def stream(followers: Followers, follower: Follower,
                 wake: asyncio.Event) -> AsyncIterator[bytes]:
    """The follower's stream, re-framed: one write per chunk the follower gives."""
    yield b"retry: 2000\n\n"
    async for chunk in followers.stream(follower, wake, None):
        yield b"".join(frame(line) for line in chunk.splitlines() if line)
    yield b"event: end\ndata: {}\n\n"
