"""The app's service around a switch: its restart and its health check, as the `switch` and
`check` steps and every rollback run them, and which `service:` a release is run with.

One place so that a rollback restarts and checks the release it puts back exactly as that release
was restarted and checked when it was deployed (`service_of`), whoever rolls back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from orchestrator.core.spec import Service
from orchestrator.errors import BadHostOutput, CommandTimeout, HealthCheckFailed
from orchestrator.hosts import agent, layout, ops, serving
from orchestrator.hosts.hostops import HostOps
from orchestrator.hosts.opresults import HostOpFailed, OpKind
from orchestrator.hosts.shipping import RemoteTools
from orchestrator.hosts.transport import Transport


def restart(transport: Transport, deploy_root: str, app: str, svc: Service | None,
            timeout: float, gpus: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run the service's restart command, if it has one; {} when there is nothing to restart.
    `gpus` (placement's UUIDs) reach it as CUDA_VISIBLE_DEVICES. An image release's serving
    container (`service.container`) is replaced instead: whatever `current` now names (the
    new release after a switch, the previous one after a rollback) is started in its own
    image with the GPUs it was verified on, and the old container serves until it is ready."""
    if svc is not None and svc.container is not None:
        return serve_container(transport, deploy_root, app, svc, timeout)
    if svc is None or not svc.restart:
        return {}
    return serving.restart(transport, svc.restart, layout.app_dir(deploy_root, app), timeout,
                           ",".join(gpus) if gpus else None)


def serve_container(transport: Transport, deploy_root: str, app: str, svc: Service,
                    timeout: float) -> dict[str, Any]:
    """container-serve on the host; a new container that is not ready is HealthCheckFailed
    (the old one still serves; the caller rolls `current` back to it)."""
    c = svc.container
    assert c is not None  # restart() asked
    budget = max(1.0, min(c.ready_timeout_s, timeout - c.stop_timeout_s - 15.0))
    try:
        out = HostOps(transport, deploy_root).run(
            ops.container_serve(app, c.stable_name(app), c.command, c.ready_command,
                                budget_s=budget, stop_timeout_s=c.stop_timeout_s),
            timeout=timeout)
    except HostOpFailed as exc:
        if exc.kind is not OpKind.CHECK_FAILED:
            raise
        raise HealthCheckFailed(transport.host, f"container {c.stable_name(app)}",
                                str(exc)) from exc
    return {"container": out.container, "container_release": out.release_id,
            "image_id": out.image_id, "container_reused": out.reused,
            "replaced_release": out.replaced, "ready_s": out.ready_s}


def health(transport: Transport, deploy_root: str, app: str, svc: Service | None,
           timeout: float, tools: RemoteTools | None = None) -> dict[str, Any]:
    """The service's health check (URL or command), if it has one; raises HealthCheckFailed.
    With `tools` (shipped to the host), their health.py runs it."""
    if svc is None or not (svc.health_url or svc.health_command):
        return {"health": "none configured"}
    if tools is not None and agent.current(transport, deploy_root, "python3") is not None:
        return _health_by_agent(HostOps(transport, deploy_root), app, svc, timeout)
    return serving.health(transport, url=svc.health_url, command=svc.health_command,
                          cwd=layout.app_dir(deploy_root, app),
                          budget_s=float(svc.health_timeout_s), timeout=timeout,
                          script=tools.script("health.py") if tools is not None else None)


def _health_by_agent(host_ops: HostOps, app: str, svc: Service,
                     timeout: float) -> dict[str, Any]:
    """The same check as health.py's, as one request to the host agent (the `health` op),
    judged by the same words as `serving.health`."""
    mode, target = ("url", svc.health_url) if svc.health_url else ("command", svc.health_command)
    assert target is not None  # `health` checked that the service has one
    budget = serving.health_budget(float(svc.health_timeout_s), timeout)
    started = time.perf_counter()
    try:
        out = host_ops.run(ops.health(app, mode, target, budget), timeout=budget + 5.0)
    except CommandTimeout as exc:
        raise HealthCheckFailed(host_ops.host, f"{mode} {target}", str(exc)) from exc
    return serving.health_verdict(host_ops.host, mode, target, budget,
                                  (out["healthy"], out["attempts"], out["error"]),
                                  time.perf_counter() - started)


def service_of(host: str, recorded: Mapping[str, Any] | None,
               fallback: Service | None) -> Service | None:
    """The `service:` a release was deployed with, from its manifest: a release put back by a
    rollback is restarted and checked as it was when it last passed (a new spec's health URL
    may not exist in the old release). `fallback` when the manifest predates the record."""
    if recorded is None:
        return fallback
    if not recorded:
        return None
    try:
        return Service.model_validate(recorded)
    except ValueError as exc:  # pydantic's ValidationError
        raise BadHostOutput(host, f"manifest.json: service: {exc}") from exc
