"""The API's outer ASGI layer: who may call (TCP only: bearer token, Host allowlist) and how much
a request may send (every connection, every route).

Body limits are enforced on the ASGI messages themselves, below any route: a declared
`Content-Length` over the limit is refused before a byte of the body is read, and a body without
one (chunked) is cut as soon as the bytes received pass the limit, whatever the route does with
it. The limit is `max_body_bytes` for a tar bundle to `POST /v1/deployments`, and 1 MiB
(`SMALL_BODY`) for everything else, a JSON submission included. Both answer 413 PayloadTooLarge.

Browsers (the web UI, daemon/ui/): a request whose `Origin` is not the daemon's own (the Host
it was sent to), or that the browser marks `Sec-Fetch-Site: cross-site`, is refused (403) on
every listener: another site's page cannot drive the API, even through an SSH tunnel to the
Unix socket. A browser's request on the Unix socket (it has `Sec-Fetch-Site`: it came through a
tunnel) must also name an allowed Host, against DNS rebinding to the tunnel's local port. The
UI's page and static files (`PUBLIC`: no data in them) are the only routes served over TCP
without the token, as a browser cannot send one when it navigates; they still need the Host.
"""

from __future__ import annotations

import contextlib
import hmac
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

from orchestrator.daemon.apidocs import public_path

SMALL_BODY = 1 << 20
BUNDLE_PATH = "/v1/deployments"
TAR = "application/x-tar"
UI_PAGE, UI_STATIC = "/ui/", "/ui/static/"
# A UI file's name, alone or under the files' version (16 hex digits: ui/routes.py `versioned`).
_STATIC_FILE = re.compile(r"(?:[0-9a-f]{16}/)?[^/]+")
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
        host = headers.get("host", "")
        cross = _cross_site(headers, host)
        if cross is not None:
            return 403, "Forbidden", cross
        server = scope.get("server")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        allowed = name.lower() in self.allowed
        if self.token is None or not server or server[1] is None:
            # The Unix socket (without a token, TCP is off: no TCP listener exists).
            if "sec-fetch-site" in headers and not allowed:
                return 403, "Forbidden", f"Host header {host!r} is not in tcp.allowed_hosts"
            return None
        if not allowed:
            return 403, "Forbidden", f"Host header {host!r} is not in tcp.allowed_hosts"
        if _public(scope):
            return None
        given = headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return 401, "Unauthorized", "missing or wrong bearer token"
        return None


def _public(scope: Scope) -> bool:
    """Package files with no data, served without the token (each page asks for the token
    itself): the UI's page and its static files, and the /docs page's files."""
    path = str(scope.get("path", ""))
    return scope.get("method") in ("GET", "HEAD") and (
        path in ("/ui", UI_PAGE) or public_path(path)
        or (path.startswith(UI_STATIC) and _STATIC_FILE.fullmatch(path[len(UI_STATIC):])
            is not None))


def _cross_site(headers: dict[str, str], host: str) -> str | None:
    """Why a browser's request comes from another site, or None."""
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        return "cross-site request refused (Sec-Fetch-Site: cross-site)"
    origin = headers.get("origin")
    if origin is None:
        return None
    scheme, _, rest = origin.partition("://")
    if origin == "null" or scheme not in ("http", "https") or rest.lower() != host.lower():
        return f"cross-site request refused: Origin {origin!r} is not this daemon ({host!r})"
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
