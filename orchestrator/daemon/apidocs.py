"""`GET /docs`: the API's reference page, served from files in the package (no CDN: it works on
a controller with no internet), and the bearer scheme in /openapi.json.

The page (orchestrator/daemon/apidocs_files/: index.html, apidocs.js, apidocs.css; about 300
lines, no dependencies) fetches /openapi.json from the daemon and renders every operation, its
parameters, request body, typed responses and the schemas they name. It builds the DOM with
`textContent` only, and is served under a Content-Security-Policy that allows nothing but this
origin, so even a description that contains markup stays text, and a browser would refuse any
asset from elsewhere.

Over TCP the page and its two assets are served without the bearer token (static files of the
package, nothing from the store: the Host allowlist still applies, daemon/guard.py); the page
asks for the token and sends it as `Authorization: Bearer` when it fetches /openapi.json, which,
like every other route, needs it. The token is kept in the tab's sessionStorage only.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from orchestrator.errors import NotFound

#: The page's files and their media types: nothing else under /docs is served.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "apidocs.js": "text/javascript; charset=utf-8",
    "apidocs.css": "text/css; charset=utf-8",
}
DOCS_PATH = "/docs"
ASSET_PREFIX = "/docs/assets/"
#: Only this origin, for scripts, styles and fetches; no frames, no forms, no plugins.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
BEARER = {
    "type": "http", "scheme": "bearer",
    "description": "Over TCP only (`[tcp]` in the daemon's config, off by default): every "
                   "request carries `Authorization: Bearer <token>`, the content of "
                   "`tcp.token_file`, and a Host header from `tcp.allowed_hosts`. On the Unix "
                   "socket no token is used: its 0660 mode is the access control.",
}


def public_path(path: str) -> bool:
    """Whether the TCP guard serves `path` without the token: the page and its assets."""
    return path == DOCS_PATH or (path.startswith(ASSET_PREFIX)
                                 and path[len(ASSET_PREFIX):] in ASSETS)


def asset(name: str) -> Response:
    if name not in ASSETS:
        raise NotFound(f"no such file of the API docs page: {name!r}")
    data = resources.files("orchestrator.daemon").joinpath("apidocs_files", name).read_bytes()
    return Response(data, media_type=ASSETS[name], headers={
        "content-security-policy": CSP, "x-content-type-options": "nosniff",
        "cache-control": "no-cache", "referrer-policy": "no-referrer"})


def install_docs(app: FastAPI) -> None:
    """The /docs page and its assets (outside the schema), and the bearer scheme in it."""

    @app.get(DOCS_PATH, include_in_schema=False)
    def docs_page() -> Response:
        return asset("index.html")

    @app.get(ASSET_PREFIX + "{name}", include_in_schema=False)
    def docs_asset(name: str) -> Response:
        return asset(name)

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.setdefault("components", {})["securitySchemes"] = {"bearerAuth": BEARER}
            # Optional: `{}` (the Unix socket) or the bearer token (TCP).
            schema["security"] = [{}, {"bearerAuth": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override
