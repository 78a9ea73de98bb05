"""Deploy one spec to one host or many: the library call the CLI, the daemon and `make demo` use.

    inputs = prepare(spec, deployment="dep-1")             # controller-side, once: lock, wheels
    result = deploy(inputs, hosts, pool=pool, sink=sink)   # each host's pipeline, bounded pool
    result.ok, result.hosts["gpu-01"].status, result.exit_code

Per host: open (or reuse) the pool's connection, take the app's deploy lock on the host (a second
deployment of the same app is refused, not interleaved), run the playbook's pipeline, release the
lock. Hosts run in parallel through the pool's `map_hosts` (the one concurrency strategy), at
most `max_parallel` at once. Rollout policy (canary, batches, failure budget) is the caller's:
it calls `deploy` once per batch.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.compat import load_compat
from orchestrator.errors import EXIT_DEPLOY_FAILED, EXIT_OK, HostError
from orchestrator.hostops import HostOps
from orchestrator.inventory import Host
from orchestrator.lockfile import Lock, load_lock
from orchestrator.pipeline import (
    RECOVERY_TIMEOUT_S,
    Deadline,
    EventSink,
    HostResult,
    HostStatus,
    Pipeline,
)
from orchestrator.playbook import Playbook, load_playbook
from orchestrator.pool import Pool, map_hosts
from orchestrator.spec import Spec
from orchestrator.steps import hostlock
from orchestrator.steps.host import DeployInputs, HostDeploy, new_inputs_release_id
from orchestrator.steps.wheels import wheel_resolver
from orchestrator.transport import Transport

#: Extra budget of the verify step beyond the spec's own warmup deadline (upload, parse).
VERIFY_MARGIN_S = 60.0


@dataclass
class DeployResult:
    deployment: str
    release_id: str
    hosts: dict[str, HostResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.hosts) and all(r.ok for r in self.hosts.values())

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_DEPLOY_FAILED


def new_deployment_id() -> str:
    return f"dep-{uuid.uuid4().hex[:12]}"


def prepare(spec: Spec, *, deployment: str | None = None, installer: str = "uv",
            release_id: str | None = None, wheel_cache: Path | None = None,
            lock: Lock | None = None, compile_bytecode: bool = False) -> DeployInputs:
    """Everything resolved once on the controller; nothing touches a host here."""
    lock = lock or load_lock(spec.paths.requirements)
    return DeployInputs(
        deployment=deployment or new_deployment_id(),
        spec=spec,
        lock=lock,
        release_id=release_id or new_inputs_release_id(spec, lock.sha256),
        wheels_for=wheel_resolver(spec, lock, wheel_cache),
        compat=load_compat(),
        installer=installer,
        compile_bytecode=compile_bytecode,
    )


def playbook_for(spec: Spec, playbook: Playbook | None = None) -> Playbook:
    """The playbook, with verify's budget widened to cover the spec's warmup deadline."""
    pb = playbook or load_playbook()
    wanted = float(spec.verify.timeout_s) + VERIFY_MARGIN_S
    if "verify" in pb.names and pb.step("verify").timeout_s < wanted:
        pb = pb.with_timeout("verify", wanted)
    return pb


def deploy_host(transport: Transport, host: Host, inputs: DeployInputs, sink: EventSink, *,
                playbook: Playbook | None = None, cancel: threading.Event | None = None,
                break_lock: bool = False) -> HostResult:
    """The pipeline on one host, under the app's deploy lock on that host."""
    app = str(inputs.spec.name)
    try:
        held = hostlock.acquire(transport, host.deploy_root, app, inputs.deployment,
                                force=break_lock)
    except HostError as exc:
        return _refused(host.name, sink, exc)
    sink.emit("host.lock", host=host.name, status="acquired", **held)
    try:
        steps = HostDeploy(transport, host, inputs)
        return Pipeline(playbook_for(inputs.spec, playbook), steps, sink, cancel=cancel).run()
    finally:
        try:
            hostlock.release(transport, host.deploy_root, app, inputs.deployment)
            sink.emit("host.lock", host=host.name, status="released")
        except HostError as exc:  # the connection is gone: the lock stays, and says whose
            sink.emit("host.lock", host=host.name, status="failed", level="warning",
                      error=str(exc))


def deploy(inputs: DeployInputs, hosts: Sequence[Host], *, pool: Pool, sink: EventSink,
           max_parallel: int | None = None, playbook: Playbook | None = None,
           cancel: threading.Event | None = None, break_lock: bool = False) -> DeployResult:
    """Run the pipeline on every host, at most `max_parallel` (default: the spec's) at once."""
    parallel = max_parallel or int(inputs.spec.rollout.max_parallel)
    sink.emit("deployment.started", status="started", release_id=inputs.release_id,
              hosts=[h.name for h in hosts], app=str(inputs.spec.name))

    def one(host: Host) -> HostResult:
        try:
            with pool.session(host) as transport:
                result = deploy_host(transport, host, inputs, sink, playbook=playbook,
                                     cancel=cancel, break_lock=break_lock)
        except HostError as exc:  # could not connect: nothing was done on that host
            return _refused(host.name, sink, exc)
        if result.connection_lost:
            _reconnect_and_settle(pool, host, inputs, sink, result)
        return result

    outcomes = map_hosts(one, list(hosts), parallel)
    result = DeployResult(inputs.deployment, inputs.release_id)
    for name, outcome in outcomes.items():
        result.hosts[name] = (outcome if isinstance(outcome, HostResult)
                              else _refused(name, sink, outcome))
    sink.emit("deployment.finished", status="succeeded" if result.ok else "failed",
              level="info" if result.ok else "error",
              hosts={n: r.status.value for n, r in result.hosts.items()})
    return result


def _reconnect_and_settle(pool: Pool, host: Host, inputs: DeployInputs, sink: EventSink,
                          result: HostResult) -> None:
    """The connection died under the pipeline, so neither the step nor its recovery could
    finish: reconnect once and settle the host from its real state (`recover_host`)."""
    sink.emit("host.reconnect", host=host.name, status="started", level="warning",
              reason=result.error)
    try:
        with pool.session(host) as transport:  # the pool reopens a dead connection
            outcome = recover_host(transport, host, inputs, sink)
    except HostError as exc:
        sink.emit("host.reconnect", host=host.name, status="failed", level="error",
                  error=str(exc))
        result.status = HostStatus.BROKEN
        result.reason = f"connection lost in {result.failed_step}; reconnecting failed: {exc}"
        return
    sink.emit("host.reconnect", host=host.name, status="ok", level="warning", outcome=outcome)
    if outcome == "serving":
        result.status = HostStatus.SUCCEEDED
        result.warnings.append(f"connection lost in {result.failed_step}; reconnected: the "
                               "release serves and passes its health check")
    else:
        result.status = HostStatus.FAILED if outcome == "aborted" else HostStatus.ROLLED_BACK
        result.reason = (f"connection lost in {result.failed_step}; reconnected and settled the "
                         f"host from its real state: {outcome}")


def _refused(host: str, sink: EventSink, exc: HostError) -> HostResult:
    """A host that never started its pipeline (unreachable, or its deploy lock is held)."""
    kind = type(exc).__name__
    status = "refused" if isinstance(exc, hostlock.DeployLocked) else "failed"
    sink.emit("host.finished", host=host, status=HostStatus.FAILED.value, level="error",
              reason=exc.reason, kind=kind, detail_status=status)
    return HostResult(host, HostStatus.FAILED, reason=exc.reason, failed_step="connect"
                      if status == "failed" else "lock", error=str(exc))


def summary(result: DeployResult) -> dict[str, Any]:
    """The result as plain data: per host its status, reason, and each step's time."""
    return {"deployment": result.deployment, "release_id": result.release_id, "ok": result.ok,
            "hosts": {n: {"status": r.status.value, "reason": r.reason,
                          "failed_step": r.failed_step, "error": r.error,
                          "warnings": r.warnings, "timings_ms": r.timings()}
                      for n, r in result.hosts.items()}}


__all__ = ["DeployResult", "deploy", "deploy_host", "new_deployment_id", "prepare", "summary"]


# -- fleet rollout: canary, batches, failure budget (DESIGN.md "Fleet rollout") -----------------

def plan_batches(hosts: Sequence[Host], canary: int, batch_size: int) -> list[list[Host]]:
    """The canary hosts alone first, then batches of `batch_size`. Pure."""
    hosts = list(hosts)
    batches = [hosts[:canary]] if canary > 0 and hosts else []
    rest = hosts[canary:] if canary > 0 else hosts
    batches += [rest[i:i + batch_size] for i in range(0, len(rest), max(1, batch_size))]
    return batches


@dataclass
class RolloutResult:
    deploy: DeployResult
    stopped: str | None = None  # why the rollout stopped early
    undone: dict[str, str] = field(default_factory=dict)  # host -> "rolled_back" | error

    @property
    def failed(self) -> list[str]:
        return sorted(n for n, r in self.deploy.hosts.items() if not r.ok)


def rollout(inputs: DeployInputs, hosts: Sequence[Host], *, pool: Pool, sink: EventSink,
            max_parallel: int | None = None, cancel: threading.Event | None = None,
            playbook: Playbook | None = None) -> RolloutResult:
    """Batches in order; more than `max_failed_hosts` failures stop the rollout, and with
    `on_failure: rollback` the hosts this deployment already switched are switched back."""
    ro = inputs.spec.rollout
    total = DeployResult(inputs.deployment, inputs.release_id)
    out = RolloutResult(total)
    batches = plan_batches(hosts, int(ro.canary), int(ro.batch_size))
    for i, batch in enumerate(batches):
        if cancel is not None and cancel.is_set():
            out.stopped = "cancelled"
            break
        sink.emit("batch", status="started", batch=i, hosts=[h.name for h in batch])
        part = deploy(inputs, batch, pool=pool, sink=sink, max_parallel=max_parallel,
                      playbook=playbook, cancel=cancel)
        total.hosts.update(part.hosts)
        if len(out.failed) > int(ro.max_failed_hosts):
            out.stopped = (f"{len(out.failed)} failed hosts ({', '.join(out.failed)}), more than "
                           f"rollout.max_failed_hosts={ro.max_failed_hosts}")
            sink.emit("rollout", status="stopped", level="error", reason=out.stopped)
            break
        if i + 1 < len(batches) and float(ro.pause_s) > 0 and cancel is not None:
            cancel.wait(float(ro.pause_s))
    if out.stopped and out.stopped != "cancelled" and ro.on_failure == "rollback":
        switched = [h for h in hosts if h.name in total.hosts and total.hosts[h.name].ok]
        out.undone = undo(inputs, switched, pool=pool, sink=sink, max_parallel=max_parallel)
    return out


def undo(inputs: DeployInputs, hosts: Sequence[Host], *, pool: Pool, sink: EventSink,
         max_parallel: int | None = None, mark_bad: bool = True) -> dict[str, str]:
    """`undo_host` on each host through the pool; {host: "rolled_back" | the failure}."""
    parallel = max_parallel or int(inputs.spec.rollout.max_parallel)
    results = pool.map_hosts(
        lambda t, h: undo_host(t, h, inputs, sink, mark_bad=mark_bad), list(hosts), parallel)
    return {n: r if isinstance(r, str) else f"rollback failed: {r}" for n, r in results.items()}


def undo_host(transport: Transport, host: Host, inputs: DeployInputs, sink: EventSink, *,
              mark_bad: bool = True) -> str:
    """Switch a host that runs this deployment's release back to its previous good release
    (idempotent: a host no longer on it is left alone), restart the service, mark it bad."""
    sink.emit("recovery", host=host.name, step="rollback", status="started", level="warning",
              reason="rollout stopped or rollback requested")
    res = HostOps(transport, host.deploy_root).rollback(
        str(inputs.spec.name), from_release=inputs.release_id, mark_bad=mark_bad)
    details = HostDeploy(transport, host, inputs).restart_service(
        Deadline(host.name, "rollback", RECOVERY_TIMEOUT_S))
    sink.emit("recovery", host=host.name, step="rollback", status="ok", level="warning",
              current=res.current, changed=res.changed, **details)
    return "rolled_back"


# -- the daemon's runner (config: runner = "orchestrator.deploy:DeployRunner") ------------------

class DeployRunner:
    """Deploys for the daemon: the rollout of `rollout()` through the daemon's sink, the manual
    rollback of a deployment's hosts, and the reconciliation of a deployment a dead daemon
    left in flight (read each host's real state; finish it if it serves and is healthy, else
    put the host back). Probing (`verify_hosts`) is the probe runner's."""

    def __init__(self, config: Any) -> None:
        # The daemon's modules are imported only when the daemon builds this runner.
        from orchestrator.probe_runner import ProbeRunner

        self.config = config
        self._probe = ProbeRunner(config)

    def verify_hosts(self, names: list[str]) -> Any:
        return self._probe.verify_hosts(names)

    def check(self, spec: Any) -> None:
        """At submission: the targets resolve and the lock is valid (the probe runner's)."""
        self._probe.check(spec)

    def _inventory(self) -> Any:
        return self._probe._inventory()

    def _pool(self, inventory: Any) -> Pool:
        pool: Pool = self._probe._pool(inventory)
        return pool

    def run(self, deployment_id: str, bundle_dir: Path, spec: Spec, sink: Any,
            cancel_event: threading.Event) -> Any:
        inventory = self._inventory()
        hosts = inventory.resolve(list(spec.targets))
        inputs = prepare(spec, deployment=deployment_id)
        parallel = min(int(self.config.max_ssh_sessions), int(spec.rollout.max_parallel))
        with self._pool(inventory) as pool:
            out = rollout(inputs, hosts, pool=pool, sink=sink, max_parallel=parallel,
                          cancel=cancel_event)
        return outcome_of(out)

    def rollback(self, deployment_id: str, bundle_dir: Path, spec: Spec, sink: Any,
                 cancel_event: threading.Event) -> Any:
        from orchestrator.runner import DeploymentOutcome
        from orchestrator.states import DeploymentState

        inventory = self._inventory()
        hosts = inventory.resolve(list(spec.targets))
        inputs = prepare(spec, deployment=deployment_id)
        with self._pool(inventory) as pool:
            done: dict[str, str] = {}
            for host in hosts:
                with pool.session(host) as t:
                    rid = release_of(HostOps(t, host.deploy_root), str(spec.name), deployment_id)
                if rid is None:
                    done[host.name] = "not deployed here"
                    continue
                done.update(undo(replace(inputs, release_id=rid), [host], pool=pool, sink=sink,
                                 mark_bad=True))
        failed = {h: s for h, s in done.items() if s.startswith("rollback failed")}
        if failed:
            return DeploymentOutcome(DeploymentState.FAILED, "; ".join(failed.values()), done)
        return DeploymentOutcome(DeploymentState.ROLLED_BACK, "rolled back by request", done)

    def reconcile(self, deployment_id: str, bundle_dir: Path, spec: Spec, sink: Any,
                  record: Any) -> Any:
        from orchestrator.runner import DeploymentOutcome
        from orchestrator.states import DeploymentState

        inventory = self._inventory()
        hosts = inventory.resolve(list(spec.targets))
        inputs = prepare(spec, deployment=deployment_id)
        with self._pool(inventory) as pool:
            found = pool.map_hosts(lambda t, h: recover_host(t, h, inputs, sink), hosts,
                                   int(self.config.max_ssh_sessions))
        states = {n: (r if isinstance(r, str) else f"unreachable: {r}") for n, r in found.items()}
        if all(s == "serving" for s in states.values()):
            return DeploymentOutcome(DeploymentState.SUCCEEDED, "reconciled: every host serves "
                                     "the release and is healthy", states)
        if any(s == "rolled_back" for s in states.values()):
            return DeploymentOutcome(DeploymentState.ROLLED_BACK, "reconciled after a daemon "
                                     "restart: hosts put back on their previous release", states)
        return DeploymentOutcome(DeploymentState.FAILED, "reconciled after a daemon restart: "
                                 "the deployment did not finish", states)


def release_of(ops: HostOps, app: str, deployment: str) -> str | None:
    """The release this deployment made on a host (its manifest names the deployment)."""
    for info in ops.releases(app):
        if info.manifest.get("deployment") == deployment:
            return info.release_id
    return None


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


def outcome_of(out: RolloutResult) -> Any:
    """The daemon's DeploymentOutcome of a rollout. Pure."""
    from orchestrator.runner import DeploymentOutcome
    from orchestrator.states import DeploymentState as D

    hosts = {n: r.status.value for n, r in out.deploy.hosts.items()}
    hosts.update({n: s for n, s in out.undone.items()})
    failed = out.failed
    if out.stopped == "cancelled":
        return DeploymentOutcome(D.CANCELLED, "cancelled by request", hosts)
    if not failed:
        return DeploymentOutcome(D.SUCCEEDED, None, hosts)
    reasons = "; ".join(f"{n}: {out.deploy.hosts[n].reason} ({out.deploy.hosts[n].error})"
                        for n in failed)
    if out.stopped is None:  # within the failure budget: the rollout went on
        return DeploymentOutcome(D.SUCCEEDED, f"{len(failed)} host(s) failed within the "
                                 f"failure budget: {reasons}", hosts)
    rolled = out.undone or any(out.deploy.hosts[n].status is HostStatus.ROLLED_BACK
                               for n in failed)
    return DeploymentOutcome(D.ROLLED_BACK if rolled else D.FAILED,
                             f"{out.stopped}: {reasons}", hosts)
