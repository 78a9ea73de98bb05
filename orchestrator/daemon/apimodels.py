"""The API's response bodies as pydantic models: what /openapi.json promises for each route.

The routes still build plain dicts (`DeploymentRecord.as_json`, `Service.describe`,
`Store.hosts`); FastAPI validates each against its `response_model` on the way out, so a route
that drifts from its documented shape fails in tests (schemathesis, tests/test_api.py) instead
of surprising a client. `extra="allow"`: a field added to a record reaches clients before its
model names it (and the schema says more fields may come).

Errors have two shapes: `ErrorBody` (every `OrchestratorError`, by its `http_status`, and the
TCP guard's 401/403/413) and `ValidationErrorBody` (422: FastAPI's own validation, with its
`detail` list). `error_responses(...)` is the `responses=` of a route that can give them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.core.states import DeploymentState, HostStepState

#: schema.HOST_STATUSES as a type (tests/test_api.py checks they agree).
HostStatus = Literal["healthy", "degraded", "failed", "unreachable"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Health(_Open):
    ok: bool = Field(description="Always true: the daemon answers")
    version: str = Field(description="The orchestrator's version")
    stopping: bool = Field(description="True once a stop began (no new submissions)")


class Deployment(_Open):
    id: str = Field(description="Deployment id (`orchestrator status ID`)")
    app: str = Field(description="The spec's `name`")
    state: DeploymentState
    created: float = Field(description="Unix time of the submission")
    updated: float = Field(description="Unix time of the last state change")
    result: dict[str, Any] | None = Field(
        description="The outcome once it ends: per-host results, the verdict; null before")
    targets: list[str] = Field(description="The spec's targets as submitted")


class Noop(_Open):
    """A submission that queued nothing: every target already serves a verified release of
    exactly this spec (200; `force=true` deploys it again)."""
    id: str | None = Field(description="The app's latest succeeded deployment, if this daemon "
                                       "made it")
    app: str = Field(description="The spec's `name`")
    state: DeploymentState
    noop: str = Field(description="Why nothing was queued")
    serving: dict[str, str] = Field(description="{host: the release it serves}")


class Step(_Open):
    host: str
    step: str = Field(description="A pipeline step or recovery action (docs/architecture.md)")
    state: HostStepState
    started: float | None = None
    finished: float | None = None
    detail: dict[str, Any] | None = Field(default=None,
                                          description="What the step recorded (reason, ...)")


class HostSteps(_Open):
    state: HostStepState = Field(description="The state of the host's latest step")
    steps: list[Step]


class DeploymentDetail(Deployment):
    hosts: dict[str, HostSteps] = Field(description="Per target host, its steps in order")


class HostRecord(_Open):
    host: str
    ts: float = Field(description="Unix time of the probe or re-verification")
    status: HostStatus
    reasons: list[str] = Field(description="Why the status is not healthy (empty when it is)")
    facts: dict[str, Any] | None = Field(description="The host's last probed facts, if any")


class ErrorBody(_Open):
    """An error: one line, its kind in the tree of orchestrator/errors.py, and where."""

    error: str = Field(description="One line saying what is wrong and where")
    kind: str = Field(description="The error's class: SpecError, NotFound, Conflict, ...")
    file: str | None = None
    line: int | None = None
    field: str | None = None
    host: str | None = None


class ValidationErrorBody(ErrorBody):
    detail: list[dict[str, Any]] = Field(description="Every problem pydantic found")


_WHY = {
    400: "Invalid input (a spec, a selector, a body): `kind` names the error",
    401: "Over TCP: a missing or wrong bearer token",
    403: "Over TCP: a Host header not in `tcp.allowed_hosts`",
    404: "Unknown deployment",
    409: "Refused by the deployment's current state",
    413: "A body over its limit",
    422: "A body or parameter that does not match this schema",
    503: "Past `max_followers` live followers",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with its model; 401/403 apply to every route
    over TCP and are always listed."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({401, 403, *statuses}):
        model = ValidationErrorBody if status == 422 else ErrorBody
        out[status] = {"model": model, "description": _WHY[status]}
    return out
