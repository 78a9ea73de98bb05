"""The daemon's HTTP API (FastAPI), served on a Unix socket and, optionally, loopback TCP.

The OpenAPI schema at /openapi.json is the documentation of record. Errors are JSON
`{"error": "<one line>", "kind": "<class in orchestrator.errors>", ...where}` with the error's
`http_status`: 400 bad input, 404 unknown id, 409 refused by the current state, 413 too large
(every body is held to its limit while it is read: daemon/guard.py), 422 a body that does not
match the schema, 503 past `max_followers` log followers. Event streams are newline-delimited
JSON; live followers are daemon/follow.py.

Requests over TCP (never on by default) must carry `Authorization: Bearer <token>` and a `Host`
header from the allowlist (against DNS rebinding from a browser); the Unix socket's 0660 mode is
its access control.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from orchestrator import __version__
from orchestrator.daemon import apps, bundle, routing
from orchestrator.daemon.apidocs import install_docs
from orchestrator.daemon.apimodels import (
    Deployment,
    DeploymentDetail,
    Health,
    HostRecord,
    Noop,
    error_responses,
)
from orchestrator.daemon.fanout import Direct
from orchestrator.daemon.follow import Followers, FollowResponse
from orchestrator.daemon.guard import SMALL_BODY, TAR, TcpGuard
from orchestrator.daemon.metrics import CONTENT_TYPE as METRICS_TYPE
from orchestrator.daemon.service import Service
from orchestrator.daemon.store import describe
from orchestrator.daemon.ui import routes as ui
from orchestrator.errors import InvalidInput, OrchestratorError, PayloadTooLarge

NDJSON = "application/x-ndjson"


class SubmitJson(BaseModel):
    spec: str = Field(max_length=SMALL_BODY, description="the spec's YAML text")


class VerifyRequest(BaseModel):
    hosts: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        default_factory=list, max_length=10_000,
        description="host names, groups or label selectors; empty: every inventory host")


class RollbackRequest(BaseModel):
    to: str | None = Field(default=None, pattern=r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$",
                           description="a release id; none: the previous good release")


class HostsRequest(BaseModel):
    hosts: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        default_factory=list, max_length=10_000, description="hosts; empty: every host")


def error_body(exc: OrchestratorError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": str(exc), "kind": type(exc).__name__}
    for attr in ("file", "line", "field", "host"):
        value = getattr(exc, attr, None)
        if value is not None:
            body[attr] = value
    return body


def create_app(service: Service, *, token: str | None = None) -> FastAPI:
    app = FastAPI(title="orchestrator", version=__version__, docs_url=None, redoc_url=None,
                  description="Deploy ML models to GPU hosts; see docs/operations.md.")
    _install_errors(app)
    install_docs(app)
    _deployment_routes(app, service)
    _host_routes(app, service)
    _metrics_route(app, service)
    ui.mount(app, service)
    app.add_middleware(TcpGuard, token=token, allowed_hosts=service.config.tcp.allowed_hosts,
                       max_body_bytes=service.config.max_body_bytes)
    return app


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(OrchestratorError)
    async def _orchestrator_error(request: Request, exc: OrchestratorError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(
            {"error": f"{where}: {first.get('msg', 'invalid request')}", "kind": "InvalidInput",
             "detail": json.loads(json.dumps(exc.errors(), default=str))},
            status_code=422,
        )


def _deployment_routes(app: FastAPI, service: Service) -> None:
    followers = Followers(service)

    @app.get("/healthz", response_model=Health, responses=error_responses())
    async def healthz() -> dict[str, Any]:
        # On the event loop, not in the thread pool: it answers while every thread is busy.
        return {"ok": True, "version": __version__, "stopping": service.stopping.is_set()}

    @app.post("/v1/deployments", status_code=201, response_model=Deployment | Noop,
              responses=error_responses(400, 413, 422), openapi_extra={"requestBody": {
        "required": True, "content": {
            TAR: {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": SubmitJson.model_json_schema()},
        }}})
    async def submit(request: Request, response: Response, force: bool = False
                     ) -> dict[str, Any]:
        """Submit a spec: a tar bundle (`spec.yaml` plus the files it names, at their relative
        paths) or JSON `{"spec": "<yaml>"}`. Returns the queued deployment (201), or, when every
        target already serves a verified release of exactly this spec and `force` is not set,
        200 with `noop` (why) and `serving` ({host: release}): nothing queued."""
        deployment, path = service.new_bundle()
        try:
            await _receive_bundle(request, path, service.config.max_body_bytes)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        queued, body = await run_in_threadpool(
            lambda: apps.submit(service, deployment, force=force))
        if not queued:
            response.status_code = 200
        return body

    @app.get("/v1/deployments", response_model=list[Deployment], responses=error_responses(422))
    def list_deployments(app_name: Annotated[str | None, Query(alias="app")] = None,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        return [r.as_json() for r in service.store.list_deployments(app=app_name, limit=limit)]

    @app.get("/v1/deployments/{deployment}", response_model=DeploymentDetail,
             responses=error_responses(404))
    def show(deployment: str) -> dict[str, Any]:
        return describe(service.store, deployment)

    @app.get("/v1/deployments/{deployment}/events", response_class=StreamingResponse,
             responses={200: {"content": {NDJSON: {}}}, **error_responses(404, 422, 503)})
    async def events(request: Request, deployment: str,
                     after: Annotated[int, Query(ge=0)] = 0,
                     host: str | None = None, follow: bool = False) -> StreamingResponse:
        """The deployment's events as newline-delimited JSON, after seq `after`; with `follow`
        the stream stays open until the deployment finishes. A follower that falls too far
        behind gets `{"event": "lagged", "after": SEQ}` and the stream ends: reconnect with
        `after=SEQ` (daemon/follow.py). Past `max_followers` followers: 503."""
        if follow:
            follower, wake = await followers.open(deployment, after)
            direct = Direct.of(request.scope)
            if direct is not None:  # written by the deployment's writer (daemon/fanout.py)
                return FollowResponse(followers, follower, direct, host, NDJSON)
            # The unfollow also runs when the client leaves before the stream starts.
            return StreamingResponse(followers.stream(follower, wake, host), media_type=NDJSON,
                                     background=BackgroundTask(service.hub.unfollow, follower))
        await run_in_threadpool(service.store.get_deployment, deployment)  # 404 first
        return StreamingResponse(_replay(service, deployment, after, host), media_type=NDJSON)

    @app.post("/v1/deployments/{deployment}/cancel", response_model=Deployment,
              responses=error_responses(404, 409))
    def cancel(deployment: str) -> dict[str, Any]:
        return routing.act(service, "cancel", deployment).as_json()

    @app.post("/v1/deployments/{deployment}/rollback", response_model=Deployment,
              responses=error_responses(404, 409))
    def rollback(deployment: str, body: RollbackRequest | None = None) -> dict[str, Any]:
        """Roll back a running or succeeded deployment (to `to`, or the previous good
        release); every host is asked first: 409 and nothing changed if one cannot."""
        return routing.act(service, "rollback", deployment, body.to if body else None).as_json()

    @app.post("/v1/deployments/{deployment}/pause", response_model=Deployment,
              responses=error_responses(404, 409))
    def pause(deployment: str) -> dict[str, Any]:
        """Hold a running rollout before its next batch (the batch in flight finishes)."""
        return routing.act(service, "pause", deployment).as_json()

    @app.post("/v1/deployments/{deployment}/resume", response_model=Deployment,
              responses=error_responses(404, 409))
    def resume(deployment: str) -> dict[str, Any]:
        """Let a paused rollout go on (also one held by `rollout.on_failure: pause`)."""
        return routing.act(service, "resume", deployment).as_json()

    @app.post("/v1/deployments/{deployment}/abort", response_model=Deployment,
              responses=error_responses(404, 409))
    def abort(deployment: str) -> dict[str, Any]:
        """Start no more hosts; with `rollout.on_failure: rollback` put back the hosts this
        deployment switched, with `pause` leave them."""
        return routing.act(service, "abort", deployment).as_json()

    @app.post("/v1/apps/{app_name}/rollback", response_model=Deployment,
              responses=error_responses(404, 409))
    def rollback_app(app_name: str, body: RollbackRequest | None = None) -> dict[str, Any]:
        """Roll back the app's running or latest succeeded deployment (see above)."""
        return routing.act_on_app(service, app_name, body.to if body else None).as_json()

    @app.get("/v1/apps/{app_name}/releases", responses=error_responses(404))
    def releases(app_name: str, host: Annotated[list[str] | None, Query()] = None
                 ) -> dict[str, Any]:
        """The app's releases on its hosts (`host`: names, groups, selectors; none: all)."""
        return apps.releases(service, app_name, host or [])

    @app.post("/v1/apps/{app_name}/releases/{release_id}/unmark-bad",
              responses=error_responses(404, 409))
    def unmark_bad(app_name: str, release_id: str, body: HostsRequest | None = None
                   ) -> dict[str, Any]:
        """Clear a release's bad mark on the hosts (none: all); audited (daemon/apps.py)."""
        return apps.unmark_bad(service, app_name, release_id, body.hosts if body else [])


def _host_routes(app: FastAPI, service: Service) -> None:
    @app.get("/v1/hosts", response_model=list[HostRecord], responses=error_responses())
    def hosts() -> list[dict[str, Any]]:
        """Every host's last facts and status (healthy/degraded/failed/unreachable) with reasons."""
        return service.store.hosts()

    @app.post("/v1/hosts/verify", response_model=list[HostRecord],
              responses=error_responses(400, 422))
    def verify(body: VerifyRequest) -> list[dict[str, Any]]:
        """Re-verify these hosts now (docs/reverify.md: facts against the release's manifest, the
        release's files, the warmup against its baseline) and return their new records."""
        return service.verify_hosts(list(dict.fromkeys(body.hosts)))


def _metrics_route(app: FastAPI, service: Service) -> None:
    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {METRICS_TYPE: {}}}, **error_responses()})
    def metrics() -> Response:
        """Prometheus text exposition: deployments by state, step durations, host status,
        verification results, warmup latency percentiles, rollbacks
        (orchestrator/daemon/metrics.py).
        Over TCP it needs the bearer token like every other route."""
        return Response(service.metrics.render(), media_type=METRICS_TYPE)


async def _receive_bundle(request: Request, path: Any, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the bundle is {declared} bytes, over the limit of {limit}")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == TAR:
        archive = path / ".upload.tar"
        received = 0
        with archive.open("wb") as out:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise PayloadTooLarge(f"the bundle is over the limit of {limit} bytes")
                out.write(chunk)
        await run_in_threadpool(bundle.unpack_bundle, archive, path)
        archive.unlink()
    elif kind == "application/json":
        body = await request.body()
        if len(body) > SMALL_BODY:
            raise PayloadTooLarge(f"a JSON submission is limited to {SMALL_BODY} bytes")
        try:
            parsed = SubmitJson.model_validate_json(body)
        except ValueError as exc:
            raise InvalidInput(f"the body is not {{\"spec\": \"<yaml text>\"}}: {exc}") from None
        bundle.write_spec_only(parsed.spec, path)
    else:
        raise InvalidInput(f"send the bundle as {TAR} or JSON, not {kind or 'no content type'}")


def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, separators=(",", ":")) + "\n").encode()


async def _replay(service: Service, deployment: str, after: int,
                  host: str | None) -> AsyncIterator[bytes]:
    while True:
        rows = await run_in_threadpool(service.store.events, deployment, after=after, limit=1000)
        for event in rows:
            if host is None or event["host"] == host:
                yield _line(event)
        if len(rows) < 1000:
            return
        after = rows[-1]["seq"]
