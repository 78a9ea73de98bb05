"""Recovery: putting a host back to a release that serves, for everyone who has to.

One "roll back and restart" (`roll_back_and_restart`): `current` back to the previous good
release (the one undone marked bad), then that release's own service restarted as it was deployed.
Its users: the pipeline's `rollback` action (a failure at or after switch), the rollout's undo of
hosts already switched (`undo_host`), crash reconciliation (`recover_host`), and re-verification
(orchestrator.reverify.audit). Beside it the pipeline's other recovery actions (abort-stage,
mark-bad, recheck) as functions of the step context.

Everything here starts from what the host says (hostops `state`, `releases`: readlink `current`
first), never from what the controller remembers, and is idempotent: run twice, it changes
nothing the second time (`rollback` names the release it undoes).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.core.inventory import Host
from orchestrator.core.sink import EventSink
from orchestrator.core.spec import Service
from orchestrator.core.states import RECONCILE_STEP, UNDO_STEP, HostStepState
from orchestrator.deploy.deadline import RECOVERY_TIMEOUT_S, Deadline
from orchestrator.deploy.inputs import DeployInputs
from orchestrator.deploy.pipeline import StepReporter
from orchestrator.deploy.steps import service
from orchestrator.deploy.steps.context import HostContext
from orchestrator.errors import HostError, OrchestratorError
from orchestrator.hosts import hostlock, ops
from orchestrator.hosts.hostops import HostOps
from orchestrator.hosts.transport import Transport


class Settled(enum.StrEnum):
    """How recovery left a host (its values are the `outcome` field of the recovery events)."""

    SERVING = "serving"          # this deployment's release serves and passes its check
    ROLLED_BACK = "rolled_back"  # back on the previous good release
    ABORTED = "aborted"          # staged work removed; `current` never moved


@dataclass(frozen=True)
class RolledBack:
    """What `roll_back_and_restart` did: where `current` points now, whether it moved, the
    service that now runs (the restored release's own), and the restart's details."""

    current: str | None
    changed: bool
    service: Service | None
    restarted: dict[str, Any]


def roll_back_and_restart(transport: Transport, host: Host, app: str,
                          from_release: str | None, fallback: Service | None,
                          deadline: Deadline, *, mark_bad: bool = True, forget: bool = False,
                          to: str = "previous") -> RolledBack:
    """The one "roll back and restart": `current` back to `to` (the previous good release, or
    a chosen one) if it is still `from_release` (None: whatever is current; marked bad with
    `mark_bad`, dropped from the rollback targets with `forget`), then the restored release's
    service (as its manifest recorded it; `fallback` for a manifest that predates the record)
    restarted. The host checks the target before it changes anything."""
    out = HostOps(transport, host.deploy_root).rollback(
        app, to=to, from_release=from_release, mark_bad=mark_bad, forget=forget,
        timeout=deadline.timeout())
    svc = service.service_of(host.name, out.service, fallback)
    # Restarted on the GPUs that release was placed on, as when it was deployed.
    restarted = service.restart(transport, host.deploy_root, app, svc, deadline.timeout(),
                                out.gpus)
    if out.changed and out.before and (svc is None or svc.container is None) \
            and fallback is not None and fallback.container is not None:
        # The undone release served in a container; the restored one has none (its own
        # restart serves): the undone container must not keep serving.
        restarted["container_removed"] = HostOps(transport, host.deploy_root).run(
            ops.container_remove(app, fallback.container.stable_name(app), out.before,
                                 stop_timeout_s=fallback.container.stop_timeout_s),
            timeout=deadline.timeout())
    return RolledBack(out.current, out.changed, svc, restarted)


# -- the pipeline's recovery actions, on the step context -------------------------------------

def abort_stage(ctx: HostContext, deadline: Deadline) -> dict[str, Any]:
    """Remove the staged release: `current` never moved."""
    if ctx.staged is None:
        return {"removed": [], "note": "nothing was staged"}
    removed = ctx.ops.abort_stage(ctx.app_name, ctx.release_id, timeout=deadline.timeout())
    return {"removed": list(removed)}


def mark_bad(ctx: HostContext, deadline: Deadline) -> dict[str, Any]:
    """Mark the new release bad: it is never a rollback target."""
    return {"bad": list(ctx.ops.mark_bad(ctx.app_name, ctx.release_id,
                                         timeout=deadline.timeout()))}


def rollback(ctx: HostContext, deadline: Deadline) -> dict[str, Any]:
    """Roll back and restart; later checks use the restored release's service."""
    out = roll_back_and_restart(ctx.transport, ctx.inv_host, ctx.app_name, ctx.release_id,
                                ctx.spec.service, deadline)
    ctx.service = out.service
    return {"current": out.current, "changed": out.changed, **out.restarted}


def recheck(ctx: HostContext, deadline: Deadline) -> dict[str, Any]:
    """The health check again, of whatever serves after a rollback."""
    return service.health(ctx.transport, ctx.root, ctx.app_name, ctx.service,
                          deadline.timeout(), ctx.tools)


# -- settling a host outside a pipeline -------------------------------------------------------

def release_of(ops: HostOps, app: str, deployment: str) -> str | None:
    """The release this deployment made on a host (its manifest names the deployment)."""
    for info in ops.releases(app):
        if info.manifest.get("deployment") == deployment:
            return info.release_id
    return None


def undo_host(transport: Transport, host: Host, inputs: DeployInputs, sink: EventSink, *,
              mark_bad: bool = True, forget: bool = False, to: str = "previous") -> Settled:
    """Switch a host that runs this deployment's release back to its previous good release
    (or `to`; idempotent: a host no longer on it is left alone), restart the service, mark it
    bad (`mark_bad`) or only drop it from the rollback targets (`forget`: a user's abort).
    Reported as the host's `undo` step (`recovery` events; a row in the daemon), apart from
    the pipeline's own `rollback` row."""
    report = StepReporter(sink, host.name)
    why = ("aborted by request" if forget else "rollout stopped or rollback requested") + (
        f" (to {to})" if to != "previous" else "")
    report.change(UNDO_STEP, HostStepState.RUNNING, event="recovery", level="warning",
                  reason=why, extra={"reason": why})
    try:
        out = roll_back_and_restart(transport, host, str(inputs.spec.name), inputs.release_id,
                                    inputs.spec.service,
                                    Deadline(host.name, "rollback", RECOVERY_TIMEOUT_S),
                                    mark_bad=mark_bad, forget=forget, to=to)
    except OrchestratorError as exc:
        _failed(report, UNDO_STEP, exc)
        raise
    report.change(UNDO_STEP, HostStepState.OK, event="recovery", level="warning",
                  extra={"current": out.current, "changed": out.changed, **out.restarted})
    return Settled.ROLLED_BACK


def _failed(report: StepReporter, step: str, exc: OrchestratorError) -> None:
    """The row of an action that raised: failed, with the error (the caller re-raises it)."""
    report.change(step, HostStepState.FAILED, event="recovery", level="error", reason=str(exc),
                  extra={"error": str(exc), "kind": type(exc).__name__})


def recover_host(transport: Transport, host: Host, inputs: DeployInputs,
                 sink: EventSink) -> Settled:
    """After a crash: read the host's real state and settle it. A host serving this
    deployment's release that passes its health check is SERVING; one that fails it goes
    back (ROLLED_BACK); staged work is removed (ABORTED). The deploy lock is released.
    Reported as the host's `reconcile` step (`recovery` events; a row in the daemon)."""
    report = StepReporter(sink, host.name)
    report.change(RECONCILE_STEP, HostStepState.RUNNING, event="recovery", level="warning")
    try:
        result, current = _recover(transport, host, inputs, sink)
    except OrchestratorError as exc:
        _failed(report, RECONCILE_STEP, exc)
        raise
    report.change(RECONCILE_STEP, HostStepState.OK, event="recovery", level="warning",
                  extra={"outcome": result.value, "current": current})
    return result


def _recover(transport: Transport, host: Host, inputs: DeployInputs,
             sink: EventSink) -> tuple[Settled, str | None]:
    """`recover_host`'s work: how it left the host, and what `current` was found to be."""
    app, deployment = str(inputs.spec.name), inputs.deployment
    ops = HostOps(transport, host.deploy_root)
    state = ops.state(app)
    rid = release_of(ops, app, deployment)
    result: Settled
    if rid is not None and state.current == rid:
        try:
            ctx = HostContext.open(transport, host, replace(inputs, release_id=rid))
            recheck(ctx, Deadline(host.name, "reconcile", RECOVERY_TIMEOUT_S))
            result = Settled.SERVING
        except HostError as exc:
            sink.emit("recovery", host=host.name, step="recheck", status="failed",
                      level="error", error=str(exc))
            result = undo_host(transport, host, replace(inputs, release_id=rid), sink)
    else:
        # Our deploy lock means any staging dir of the app is ours; a committed release of
        # ours that never became current is removed too.
        for staged in [*state.staging, *([rid] if rid else [])]:
            ops.abort_stage(app, staged)
        result = Settled.ABORTED
    hostlock.release(transport, host.deploy_root, app, deployment)
    return result, state.current
