"""What the daemon does for an app rather than for one deployment: a submission that would
change nothing (every target already serves that exact release: a no-op unless forced), the
app's releases on its hosts (`GET /v1/apps/{app}/releases`, what `orchestrator releases` shows
when a daemon runs) and clearing a release's `bad` mark
(`POST /v1/apps/{app}/releases/{id}/unmark-bad`).

All go through the runner's inventory and SSH pool (the deploy runner's `already_serving`,
`releases` and `unmark_bad`); a runner without the last two answers 409. An unmark is
audited: a warning event in the app's latest deployment's log (as re-verification reports an
app) and a line in the daemon's log, naming the release and the hosts where it was marked.
"""

from __future__ import annotations

import re
import shutil
from typing import Any

import structlog

from orchestrator.core.inventory import NAME_PATTERN
from orchestrator.core.release import check_release_id
from orchestrator.core.states import DeploymentState
from orchestrator.daemon import bundle
from orchestrator.daemon.service import Service
from orchestrator.deploy.releases import releases_json
from orchestrator.errors import Conflict, HostError, InvalidInput, OrchestratorError

log = structlog.get_logger("orchestrator.daemon.apps")


def _check_app(app: str) -> str:
    if not re.fullmatch(NAME_PATTERN, app):
        raise InvalidInput(f"not an app name ({NAME_PATTERN}): {app!r}")
    return app


def _method(service: Service, name: str) -> Any:
    method = getattr(service.runner, name, None)
    if method is None:
        raise Conflict(f"the daemon's runner ({type(service.runner).__name__}) does not "
                       "deploy releases: nothing to show or change")
    return method


def releases(service: Service, app: str, hosts: list[str]) -> dict[str, Any]:
    """{host: {"releases": [...]} or {"error": why}} for the app on these hosts (none: all)."""
    found = _method(service, "releases")(_check_app(app), hosts)
    return releases_json(found)


def unmark_bad(service: Service, app: str, release_id: str, hosts: list[str]) -> dict[str, Any]:
    """Clear the mark on these hosts (none: every inventory host), audited. {"unmarked":
    [hosts where it was marked], "unchanged": [...], "errors": {host: why}}."""
    check_release_id(release_id)
    found = _method(service, "unmark_bad")(_check_app(app), release_id, hosts)
    out: dict[str, Any] = {
        "app": app, "release_id": release_id,
        "unmarked": [n for n, r in found.items() if r is True],
        "unchanged": [n for n, r in found.items() if r is False],
        "errors": {n: r.reason for n, r in found.items() if isinstance(r, HostError)}}
    latest = service.store.list_deployments(app=app, limit=1)
    details = {k: out[k] for k in ("release_id", "unmarked", "errors")}
    if latest:
        service.sink(latest[0].id).emit("release.unmark-bad", status="ok", level="warning",
                                        app=app, **details)
    log.warning("audit: release unmarked bad", app=app, **details)
    return out


def submit(service: Service, deployment: str, *,
           force: bool = False) -> tuple[bool, dict[str, Any]]:
    """Queue the bundle written for `deployment` (Service.submit), unless every target already
    serves a verified release of exactly this spec, model and lock and `force` is not given:
    then nothing is queued, the bundle is dropped, and the answer says so ("noop", with the
    release each host serves and the app's latest succeeded deployment, if this daemon made
    it). Returns (queued, body)."""
    check = None if force else getattr(service.runner, "already_serving", None)
    if check is not None:
        path = service.bundle_dir(deployment)
        try:
            # The model is hashed once: here only when nothing would be queued.
            spec = bundle.validate(path, check_model=False).spec
            serving = check(spec)
            if serving:
                bundle.validate(path, check_model=True)  # a wrong model is still refused
        except OrchestratorError:
            shutil.rmtree(path, ignore_errors=True)
            raise
        if serving:
            shutil.rmtree(path, ignore_errors=True)
            app = str(spec.name)
            releases = sorted(set(serving.values()))
            message = (f"{app}: already serving {', '.join(releases)} (verified) on every "
                       f"target ({', '.join(serving)}); nothing to do (--force deploys again)")
            log.info("submission is a no-op", app=app, serving=serving)
            done = service.store.list_deployments(app=app, states=frozenset(
                {DeploymentState.SUCCEEDED}), limit=1)
            base = done[0].as_json() if done else {"id": None, "app": app,
                                                   "state": str(DeploymentState.SUCCEEDED)}
            return False, {**base, "noop": message, "serving": serving}
    return True, service.submit(deployment).as_json()
