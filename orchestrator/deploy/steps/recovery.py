"""Settling a host after things went wrong outside a step: a rollout that stops, a manual
rollback, a connection lost mid-pipeline, a controller that died (DESIGN.md: "a daemon killed at
any point resumes or rolls back on restart by reading the host's real state").

Everything here starts from what the host says (hostops `state`, `releases`: readlink `current`
first), never from what the controller remembers, and is idempotent: run twice, it changes
nothing the second time.
"""

from __future__ import annotations

from dataclasses import replace

from orchestrator.core.inventory import Host
from orchestrator.deploy.pipeline import RECOVERY_TIMEOUT_S, Deadline, EventSink
from orchestrator.deploy.steps.host import DeployInputs, HostDeploy, service_of
from orchestrator.errors import HostError
from orchestrator.hosts import hostlock
from orchestrator.hosts.hostops import HostOps
from orchestrator.hosts.transport import Transport


def release_of(ops: HostOps, app: str, deployment: str) -> str | None:
    """The release this deployment made on a host (its manifest names the deployment)."""
    for info in ops.releases(app):
        if info.manifest.get("deployment") == deployment:
            return info.release_id
    return None


def undo_host(transport: Transport, host: Host, inputs: DeployInputs, sink: EventSink, *,
              mark_bad: bool = True) -> str:
    """Switch a host that runs this deployment's release back to its previous good release
    (idempotent: a host no longer on it is left alone), restart the service, mark it bad."""
    sink.emit("recovery", host=host.name, step="rollback", status="started", level="warning",
              reason="rollout stopped or rollback requested")
    res = HostOps(transport, host.deploy_root).rollback(
        str(inputs.spec.name), from_release=inputs.release_id, mark_bad=mark_bad)
    steps = HostDeploy(transport, host, inputs)
    steps.service = service_of(host.name, res.service, inputs.spec.service)
    details = steps.restart_service(Deadline(host.name, "rollback", RECOVERY_TIMEOUT_S))
    sink.emit("recovery", host=host.name, step="rollback", status="ok", level="warning",
              current=res.current, changed=res.changed, **details)
    return "rolled_back"


def recover_host(transport: Transport, host: Host, inputs: DeployInputs,
                 sink: EventSink) -> str:
    """After a crash: read the host's real state and settle it. A host serving this
    deployment's release that passes its health check is "serving"; one that fails it goes
    back ("rolled_back"); staged work is removed ("aborted"). The deploy lock is released."""
    app, deployment = str(inputs.spec.name), inputs.deployment
    ops = HostOps(transport, host.deploy_root)
    state = ops.state(app)
    rid = release_of(ops, app, deployment)
    steps = HostDeploy(transport, host, replace(inputs, release_id=rid or inputs.release_id))
    deadline = Deadline(host.name, "reconcile", RECOVERY_TIMEOUT_S)
    if rid is not None and state.current == rid:
        try:
            steps.recheck(deadline)
            result = "serving"
        except HostError as exc:
            sink.emit("recovery", host=host.name, step="recheck", status="failed",
                      level="error", error=str(exc))
            result = undo_host(transport, host, replace(inputs, release_id=rid), sink)
    else:
        # Our deploy lock means any staging dir of the app is ours; a committed release of
        # ours that never became current is removed too.
        for staged in [*state.staging, *([rid] if rid else [])]:
            ops.abort_stage(app, staged)
        result = "aborted"
    hostlock.release(transport, host.deploy_root, app, deployment)
    sink.emit("recovery", host=host.name, step="reconcile", status="ok", level="warning",
              outcome=result, current=state.current)
    return result
