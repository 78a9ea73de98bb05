"""The API's outer ASGI layer: who may call (TCP only: bearer token, Host allowlist) and how much
a request may send (every connection, every route).

Body limits are enforced on the ASGI messages themselves, below any route: a declared
`Content-Length` over the limit is refused before a byte of the body is read, and a body without
one (chunked) is cut as soon as the bytes received pass the limit, whatever the route does with
it. The limit is `max_body_bytes` for a tar bundle to `POST /v1/deployments`, and 1 MiB
(`SMALL_BODY`) for everything else, a JSON submission included. Both answer 413 PayloadTooLarge.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

from orchestrator.daemon.apidocs import public_path

SMALL_BODY = 1 << 20
BUNDLE_PATH = "/v1/deployments"
TAR = "application/x-tar"
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _BodyTooLarge(Exception):
    """Raised into the route by `receive` once the body passed its limit."""


class TcpGuard:
    """ASGI middleware: on TCP connections (the Unix socket has no port), require the bearer
    token and an allowed Host header; on every connection, hold each body to its limit."""

    def __init__(self, app: ASGIApp, token: str | None, allowed_hosts: tuple[str, ...],
                 max_body_bytes: int) -> None:
        self.app = app
        self.token = token
        self.allowed = {h.lower() for h in allowed_hosts}
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        limit = self._limit(scope, headers)
        problem = self._problem(scope, headers, limit)
        if problem is not None:
            await _refuse(scope, receive, send, *problem)
            return
        await _limited(self.app, scope, receive, send, limit)

    def _limit(self, scope: Scope, headers: dict[str, str]) -> int:
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if scope.get("path") == BUNDLE_PATH and kind == TAR:
            return self.max_body
        return SMALL_BODY

    def _problem(self, scope: Scope, headers: dict[str, str],
                 limit: int) -> tuple[int, str, str] | None:
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return 413, "PayloadTooLarge", f"request body of {length} bytes, over {limit}"
        server = scope.get("server")
        if self.token is None or not server or server[1] is None:
            return None  # the Unix socket (without a token, TCP is off: no TCP listener exists)
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name.lower() not in self.allowed:
            return 403, "Forbidden", f"Host header {host!r} is not in tcp.allowed_hosts"
        if scope.get("method") in ("GET", "HEAD") and public_path(scope.get("path", "")):
            return None  # the /docs page's static files: it asks for the token itself
        given = headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return 401, "Unauthorized", "missing or wrong bearer token"
        return None


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, kind: str,
                  message: str) -> None:
    # A refused body is never read: `Connection: close` makes uvicorn close the connection after
    # the answer instead of reading (and discarding) the rest to reuse it.
    headers = {"connection": "close"} if status == 413 else None
    response = JSONResponse({"error": message, "kind": kind}, status_code=status,
                            headers=headers)
    await response(scope, receive, send)


async def _limited(app: ASGIApp, scope: Scope, receive: Receive, send: Send,
                   limit: int) -> None:
    """Run `app` with a `receive` that stops at `limit` bytes. Whatever the route makes of the
    error (FastAPI turns an exception while reading a body into its own 400), the client gets
    the 413: the route's own answer is swallowed."""
    received = 0
    over = False
    started = False

    async def limited_receive() -> Any:
        nonlocal received, over
        message = await receive()
        if message.get("type") == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                over = True
                raise _BodyTooLarge(f"request body over {limit} bytes")
        return message

    async def guarded_send(message: Any) -> None:
        nonlocal started
        if over:
            return
        started = started or message.get("type") == "http.response.start"
        await send(message)

    with contextlib.suppress(_BodyTooLarge):  # answered below
        await app(scope, limited_receive, guarded_send)
    if over and not started:
        await _refuse(scope, receive, send, 413, "PayloadTooLarge",
                      f"request body over {limit} bytes")
