"""User actions on a deployment, wherever it runs: pause, resume, abort, cancel and rollback
sent to any daemon reach the daemon that works on it (issue 16).

    API -> act(service, action, deployment)
        this daemon works on it, or it is not running: the service's own method, here
        another daemon holds it: a request row (daemon/sql_requests.py) -> wait for its answer
    the holder's tick (every ANSWER_EVERY_S) -> answer(service): each open request for a
        deployment it works on, run by its own method, answered with the status that method
        gave (200, or the error's 409/404 and message)

The answer is what the holder's method said, so a client sees the same 409 ("nothing to
resume") from any daemon. A holder that dies before answering leaves the request open: the
daemon that takes the deployment over answers it (it works on it then). No answer within the
lease's expiry + ANSWER_GRACE_S: the asker closes the request itself and says so (exit 4, the
client may retry); a late answer by the holder is then refused (the first answer stands),
so an action the client was told failed is never taken afterwards.
"""

from __future__ import annotations

import time
from typing import Protocol

import structlog

from orchestrator.core.states import DeploymentState
from orchestrator.daemon.leases import DEPLOYMENT, Leases
from orchestrator.daemon.sql_requests import Answer
from orchestrator.daemon.store import DeploymentRecord, Store
from orchestrator.errors import (
    Conflict,
    DaemonUnavailable,
    InvalidInput,
    NotFound,
    OrchestratorError,
)

log = structlog.get_logger("orchestrator.daemon.routing")
D = DeploymentState
ACTIONS = ("cancel", "pause", "resume", "abort", "rollback")
#: Only a deployment some daemon's worker holds is routed; any other is one the store decides
#: (a queued one is cancelled in place, a succeeded one rolled back by the daemon asked).
ROUTED = frozenset({D.RUNNING, D.PAUSED})
ANSWER_EVERY_S = 0.2  # the holder's polling of open requests: answered within a second
POLL_S = 0.05         # the asker's polling of its answer
ANSWER_GRACE_S = 5.0
ERRORS: dict[int, type[OrchestratorError]] = {404: NotFound, 409: Conflict, 400: InvalidInput}


class Actor(Protocol):
    """What routing needs of the service (orchestrator/daemon/service.py)."""

    store: Store
    leases: Leases

    def works_on(self, deployment: str) -> bool: ...
    def cancel(self, deployment: str) -> DeploymentRecord: ...
    def pause(self, deployment: str) -> DeploymentRecord: ...
    def resume(self, deployment: str) -> DeploymentRecord: ...
    def abort(self, deployment: str) -> DeploymentRecord: ...
    def rollback(self, deployment: str, to: str | None = None) -> DeploymentRecord: ...


def act(actor: Actor, action: str, deployment: str, to: str | None = None) -> DeploymentRecord:
    """Take the action here, or have the deployment's holder take it; its record after."""
    if not _elsewhere(actor, deployment):
        return _local(actor, action, deployment, to)
    request = actor.store.ask(deployment, action, to)
    log.info("action routed", deployment=deployment, action=action, request=request)
    deadline = time.monotonic() + actor.leases.ttl_s + ANSWER_GRACE_S
    while (answer := actor.store.answer_of(request)) is None:
        if time.monotonic() > deadline:
            actor.store.answer(request, 503, "not answered in time")
        elif not _elsewhere(actor, deployment) and not actor.works_on(deployment):
            # It finished meanwhile: its state decides, as it would have here.
            done = _run(actor, action, deployment, to)
            actor.store.answer(request, done.status, done.error)
        else:
            time.sleep(POLL_S)
    if answer.status == 503:
        raise DaemonUnavailable(f"deployment {deployment}: the daemon holding it did not take "
                                f"the {action} within {actor.leases.ttl_s + ANSWER_GRACE_S:g} s; "
                                "nothing was done, try again")
    if answer.status != 200:
        raise ERRORS.get(answer.status, Conflict)(answer.error or f"{action} refused")
    return actor.store.get_deployment(deployment)


def act_on_app(actor: Actor, app: str, to: str | None = None) -> DeploymentRecord:
    """Roll back the app's running or latest succeeded deployment."""
    for record in actor.store.list_deployments(app=app, limit=1 << 30):
        if record.state in (D.RUNNING, D.SUCCEEDED):
            return act(actor, "rollback", record.id, to)
    raise NotFound(f"app {app!r} has no running or succeeded deployment to roll back")


def answer(actor: Actor) -> int:
    """Take and answer the open requests for deployments this daemon works on; how many."""
    taken = 0
    for request in actor.store.open_requests():
        if request.action not in ACTIONS or not actor.works_on(request.deployment):
            continue
        done = _run(actor, request.action, request.deployment, request.arg)
        if actor.store.answer(request.id, done.status, done.error):
            log.info("routed action taken", deployment=request.deployment,
                     action=request.action, status=done.status)
        taken += 1
    return taken


def _elsewhere(actor: Actor, deployment: str) -> bool:
    """Another daemon works on it (or did, and the next holder will)."""
    if not actor.store.shared or actor.works_on(deployment):
        return False
    if actor.store.get_deployment(deployment).state not in ROUTED:  # 404 here when unknown
        return False
    lease = actor.store.lease(DEPLOYMENT, deployment)
    return lease is None or lease["owner"] != actor.leases.owner


def _local(actor: Actor, action: str, deployment: str, to: str | None) -> DeploymentRecord:
    if action == "rollback":
        return actor.rollback(deployment, to)
    if action not in ACTIONS:
        raise InvalidInput(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    method = {"cancel": actor.cancel, "pause": actor.pause, "resume": actor.resume,
              "abort": actor.abort}[action]
    return method(deployment)


def _run(actor: Actor, action: str, deployment: str, to: str | None) -> Answer:
    try:
        _local(actor, action, deployment, to)
    except OrchestratorError as exc:
        return Answer(exc.http_status, str(exc))
    return Answer(200, None)


__all__ = ["ACTIONS", "ANSWER_EVERY_S", "Actor", "act", "act_on_app", "answer"]
