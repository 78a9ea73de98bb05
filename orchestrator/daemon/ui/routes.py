"""The UI's routes, mounted by the API (orchestrator/daemon/api.py `create_app`):

    GET /ui/                       the page (one HTML file; the views are JS modules)
    GET /ui/static/VERSION/NAME    its scripts and style, from the package (ui/static/); the
                                   page names them under VERSION, a digest of every file, so
                                   they are cached for good (a new daemon version: new URLs)
    GET /ui/static/NAME            the same files, not cached
    GET /ui/api/meta               the version, the pipeline's steps (the grid's columns)
    GET /ui/api/deployments/ID     the API's record of a deployment, with its rollout section
    GET /ui/api/fleet?after=H&limit=N   hosts (all, or the N named after H) with status, GPU
                                   stack, releases and each app's last re-verification, labels,
                                   groups
    GET /ui/api/apps/APP           per host: p50/p95/p99 at deploy and each re-verification,
                                   the releases deployments made and their state
    GET /ui/api/deployments/ID/stream?after=SEQ   the live events as server-sent events

The page and its static files hold no data and are served without the token (a browser
navigating to a page cannot send a bearer header), still behind the Host allowlist; everything
else, the /v1 API the pages call included, needs the token over TCP (daemon/guard.py). Every
answer here carries a strict Content-Security-Policy: scripts and styles from this daemon only,
no inline code, no connection elsewhere, not framed.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from orchestrator import __version__
from orchestrator.daemon.follow import Followers
from orchestrator.daemon.service import Service
from orchestrator.daemon.store import describe
from orchestrator.daemon.ui import sse, views
from orchestrator.deploy.steps.registry import STEP_ORDER
from orchestrator.errors import NotFound

STATIC = Path(__file__).resolve().parent / "static"
PREFIX = "/ui"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff",
           "referrer-policy": "no-referrer", "x-frame-options": "DENY",
           "cache-control": "no-store"}
# A versioned file never changes under its URL: a reload asks for the page and its data only.
CACHED = {**HEADERS, "cache-control": "public, max-age=31536000, immutable"}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
          ".svg": "image/svg+xml", ".png": "image/png"}


def load_static(folder: Path = STATIC) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, media type) of every file shipped in ui/static/, read once: a request
    can only name one of these (no path from a URL ever reaches the filesystem)."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or \
                "application/octet-stream"
            if kind.startswith("text/"):
                kind += "; charset=utf-8"
            files[path.name] = (path.read_bytes(), kind)
    return files


def versioned(files: dict[str, tuple[bytes, str]]) -> tuple[str, bytes]:
    """(VERSION, the page naming its files under static/VERSION/): VERSION is the first 16 hex
    digits of a sha256 over every file's name and bytes (guard.py lets only such a segment
    through), so any changed file changes every URL and no stale script is ever run. The
    modules import each other by relative path, so they stay under the same VERSION."""
    digest = hashlib.sha256()
    for name, (body, _) in sorted(files.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(body).digest())
    version = digest.hexdigest()[:16]
    page = files["index.html"][0].replace(b'="static/', f'="static/{version}/'.encode())
    return version, page


def mount(app: FastAPI, service: Service) -> None:
    """Add the UI's routes to the API app."""
    app.include_router(router(service))


def router(service: Service) -> APIRouter:
    files = load_static()
    version, page = versioned(files)
    inventory = views.InventoryCache(service.config.inventory)
    followers = Followers(service)
    r = APIRouter(prefix=PREFIX, include_in_schema=False)

    # The page and its files are bytes in memory: answered on the event loop, with no hop to
    # the thread pool (which a busy daemon's store reads may be holding).
    @r.get("")
    async def root() -> Response:
        return RedirectResponse(f"{PREFIX}/", status_code=308, headers=HEADERS)

    @r.get("/")
    async def index() -> Response:
        return Response(page, media_type=files["index.html"][1], headers=HEADERS)

    @r.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in files:
            raise NotFound(f"no UI file {name!r}")
        body, kind = files[name]
        return Response(body, media_type=kind, headers=HEADERS)

    @r.get("/static/{asked}/{name}")
    async def static_versioned(asked: str, name: str) -> Response:
        if asked != version or name not in files:  # another version's file: not these bytes
            raise NotFound(f"no UI file {asked}/{name}")
        body, kind = files[name]
        return Response(body, media_type=kind, headers=CACHED)

    @r.get("/api/meta")
    def meta() -> Response:
        return _json({"version": __version__, "steps": list(STEP_ORDER)})

    @r.get("/api/deployments/{deployment}")
    def deployment(deployment: str) -> Response:
        """The API's record with the spec's rollout section (the grid marks the canary)."""
        record = service.store.get_deployment(deployment)
        return _json({**describe(service.store, deployment), "rollout": record.spec.get("rollout")})

    @r.get("/api/fleet")
    def fleet(after: Annotated[str | None, Query(max_length=256)] = None,
              limit: Annotated[int | None, Query(ge=1, le=views.MAX_PAGE)] = None) -> Response:
        """The fleet, or one page of it: the page asks for its first screenful, paints it, then
        asks for the rest (`after` the last host it has)."""
        return _json(views.fleet(service.store, inventory.get(), after=after, limit=limit))

    @r.get("/api/apps/{app_name}")
    def app_history(app_name: str) -> Response:
        return _json(views.app_history(service.store, app_name))

    @r.get("/api/deployments/{deployment}/stream")
    async def stream(deployment: str,
                     after: Annotated[int, Query(ge=0)] = 0) -> StreamingResponse:
        follower, wake = await followers.open(deployment, after)
        return StreamingResponse(
            sse.stream(followers, follower, wake), media_type=sse.MEDIA_TYPE,
            headers={**HEADERS, "x-accel-buffering": "no"},
            background=BackgroundTask(service.hub.unfollow, follower))

    return r


def _json(data: Any) -> Response:
    return Response(json.dumps(data, separators=(",", ":"), default=str),
                    media_type="application/json", headers=HEADERS)

