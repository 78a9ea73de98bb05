"""Deploy one spec to one batch of hosts: the step under the fleet rollout.

    inputs = prepare(spec)                                 # controller-side, once: lock, wheels
    result = deploy(inputs, hosts, pool=pool, sink=sink)   # each host's pipeline, bounded pool
    result.ok, result.hosts["gpu-01"].status

Per host: open (or reuse) the pool's connection, take the app's deploy lock on the host (a second
deployment of the same app is refused, not interleaved), run the playbook's pipeline, release the
lock. Hosts run in parallel through the pool's `map_hosts` (the one concurrency strategy), at
most `max_parallel` at once. Rollout policy (fleet preflight, canary, batches, failure budget)
is orchestrator/deploy/rollout.py's, which calls `deploy` once per batch; the daemon and
`orchestrator deploy` both deploy through it. Re-verification (orchestrator/reverify/audit.py)
and the benchmarks call `deploy_host` / `deploy` directly.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.compat import load_compat
from orchestrator.core.envinputs import load_environment
from orchestrator.core.ids import new_deployment_id
from orchestrator.core.inventory import Host
from orchestrator.core.lockfile import Lock
from orchestrator.core.ociimage import ImageInfo
from orchestrator.core.spec import Spec, check_model_hash
from orchestrator.deploy.bytecode import cache_dir_beside
from orchestrator.deploy.deadline import RECOVERY_TIMEOUT_S, Deadline
from orchestrator.deploy.imagebuild import deploy_time_image, pack_layout
from orchestrator.deploy.inputs import DeployInputs, new_inputs_release_id
from orchestrator.deploy.peers import WheelPeers
from orchestrator.deploy.pipeline import (
    EventSink,
    HostResult,
    HostStatus,
    Pipeline,
)
from orchestrator.deploy.pkgindex import PackageIndex
from orchestrator.deploy.playbook import Playbook, load_playbook
from orchestrator.deploy.steps import probe as probe_step
from orchestrator.deploy.steps import prune as prune_step
from orchestrator.deploy.steps.host import HostDeploy
from orchestrator.deploy.steps.recovery import Settled, recover_host
from orchestrator.deploy.steps.wheels import default_cache_dir, wheel_resolver
from orchestrator.errors import HostError
from orchestrator.hosts import agent, hostlock, ops, shipping
from orchestrator.hosts.pool import Pool, map_hosts
from orchestrator.hosts.probe import PROBE_TIMEOUT_S
from orchestrator.hosts.transport import Transport

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


def prepare(spec: Spec, *, deployment: str | None = None, installer: str = "uv",
            release_id: str | None = None, wheel_cache: Path | None = None,
            lock: Lock | ImageInfo | None = None, compile_bytecode: bool = False,
            check_model: bool = False, index: PackageIndex | None = None,
            image_cache: Path | None = None, sink: EventSink | None = None,
            ship_bytecode: bool = True) -> DeployInputs:
    """Everything resolved once on the controller; nothing touches a host here. Without a
    `deployment`, a new id from the one generator (orchestrator/core/ids.py).

    With `check_model` (a rollout about to send the model: `orchestrator deploy`) the model must
    hash to `model.sha256` first, so a wrong model, or one holding a symlink or special file, is
    refused (SpecError, exit 2) before a byte leaves the controller, not found out by the
    host's own check after the upload. Off for the callers that only read what is deployed
    (rollback, reconcile, re-verification) and for the daemon, whose bundles are checked once
    at submission (daemon/bundle.py `validate`)."""
    if check_model:
        check_model_hash(spec)
    # An OCI layout directory packed into an archive; environment.image_base: the image its
    # lock makes, built once and cached. Either way the spec becomes an image release of an
    # archive, and a lock given for the spec as it was no longer describes it.
    ready = deploy_time_image(pack_layout(spec, cache_dir=image_cache), cache_dir=image_cache,
                              wheel_cache=wheel_cache, sink=sink)  # `sink` hears of a build
    if ready is not spec:
        spec, lock = ready, None
    lock = lock or load_environment(spec)
    return DeployInputs(
        deployment=deployment or new_deployment_id(),
        spec=spec,
        lock=lock,
        release_id=release_id or new_inputs_release_id(spec, lock.sha256),
        wheels_for=wheel_resolver(spec, lock, wheel_cache, index),
        compat=load_compat(),
        installer=installer,
        compile_bytecode=compile_bytecode,
        bytecode_cache=(cache_dir_beside(wheel_cache or default_cache_dir()) if ship_bytecode
                        else None),
        # One per rollout: the hosts that hold the wheels serve the later ones (deploy/peers.py).
        peers=WheelPeers() if spec.environment.wheel_peers else None,
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
    # The lock, the probe and the unlock each need the host tools: checked once, not thrice
    # (each check is a round trip: what far hosts pay, bench farhosts). The host's ops go
    # through one agent process on one channel (orchestrator/hosts/agent.py), ended with the
    # pipeline.
    with shipping.remembered(transport), agent.serving(transport, host.deploy_root):
        return _deploy_host(transport, host, inputs, sink, playbook=playbook, cancel=cancel,
                            break_lock=break_lock)


def _deploy_host(transport: Transport, host: Host, inputs: DeployInputs, sink: EventSink, *,
                 playbook: Playbook | None, cancel: threading.Event | None,
                 break_lock: bool) -> HostResult:
    app = str(inputs.spec.name)
    pb = playbook_for(inputs.spec, playbook)
    # Over a far link each host call is a round trip: the probe goes with the lock, and the
    # unlock with the last step when that is prune (nothing of the pipeline comes after it).
    probe_first = pb.names[:1] == (probe_step.NAME,)
    try:
        held, early = hostlock.acquire_then(
            transport, host.deploy_root, app, inputs.deployment, force=break_lock,
            token=inputs.fence, then=probe_step.calls(inputs.spec) if probe_first else (),
            timeout=max(30.0, PROBE_TIMEOUT_S), max_output=probe_step.MAX_OUTPUT)
    except HostError as exc:
        return _refused(host.name, sink, exc)
    sink.emit("host.lock", host=host.name, status="acquired", **held)
    steps = HostDeploy(transport, host, inputs, sink)
    if probe_first:
        steps.ctx.prefetched = early
    if pb.names[-1:] == (prune_step.NAME,):
        steps.ctx.unlock = ops.deploy_unlock(app, inputs.deployment)
    try:
        return Pipeline(pb, steps, sink, cancel=cancel).run()
    finally:
        try:
            if not steps.ctx.unlocked:
                hostlock.release(transport, host.deploy_root, app, inputs.deployment)
            sink.emit("host.lock", host=host.name, status="released")
        except HostError as exc:  # the connection is gone: the lock stays, and says whose
            sink.emit("host.lock", host=host.name, status="failed", level="warning",
                      error=str(exc))


def deploy(inputs: DeployInputs, hosts: Sequence[Host], *, pool: Pool, sink: EventSink,
           max_parallel: int | None = None, playbook: Playbook | None = None,
           cancel: threading.Event | None = None, break_lock: bool = False) -> DeployResult:
    """Run the pipeline on every host, at most `max_parallel` (default: the spec's) at once."""
    parallel = parallel_of(inputs, max_parallel)
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
        # The pool reopens the dead connection, retrying within the recovery's own budget.
        budget = Deadline(host.name, "reconnect", RECOVERY_TIMEOUT_S)
        with pool.session(host, remaining=budget.remaining) as transport:
            outcome = recover_host(transport, host, inputs, sink)
    except HostError as exc:
        # The pipeline's verdict stands (before switch: `current` never moved); the deploy
        # lock stays on the host, naming this deployment, for the next run or reconcile.
        sink.emit("host.reconnect", host=host.name, status="failed", level="error",
                  error=str(exc))
        result.reason = f"{result.reason}; connection lost and reconnecting failed: {exc}"
        return
    sink.emit("host.reconnect", host=host.name, status="ok", level="warning", outcome=outcome)
    if outcome is Settled.SERVING:
        new, reason = HostStatus.SUCCEEDED, result.reason
        result.warnings.append(f"connection lost in {result.failed_step}; reconnected: the "
                               "release serves and passes its health check")
    else:
        new = HostStatus.FAILED if outcome is Settled.ABORTED else HostStatus.ROLLED_BACK
        reason = (f"connection lost in {result.failed_step}; reconnected and settled the "
                  f"host from its real state: {outcome}")
    # The host's final state changed after the pipeline's own host.finished: say so once more.
    result.settle(sink, new, reason, failed_step=result.failed_step,
                  settled_after_reconnect=True)


def parallel_of(inputs: DeployInputs, max_parallel: int | None) -> int:
    """Hosts at once: the caller's bound, else the spec's `rollout.max_parallel`."""
    return max_parallel or int(inputs.spec.rollout.max_parallel)


def untouched(host: str, sink: EventSink, *, reason: str, failed_step: str,
              error: str | None = None, **detail: Any) -> HostResult:
    """The failed result of a host whose pipeline never started, so nothing changed on it
    (unreachable, deploy lock held, refused by the fleet preflight, excluded as degraded), and
    its one `host.finished` event. Every such host is reported the same way, whoever stopped it:
    pending, then failed through `HostResult.settle` (the host state machine's one path)."""
    result = HostResult(host, HostStatus.PENDING, failed_step=failed_step,
                        error=error if error is not None else reason)
    result.settle(sink, HostStatus.FAILED, reason, failed_step=failed_step, **detail)
    return result


def _refused(host: str, sink: EventSink, exc: HostError) -> HostResult:
    """A host that never started its pipeline (unreachable, or its deploy lock is held)."""
    locked = isinstance(exc, hostlock.DeployLocked)
    return untouched(host, sink, reason=exc.reason, failed_step="lock" if locked else "connect",
                     error=str(exc), kind=type(exc).__name__,
                     detail_status="refused" if locked else "failed")


__all__ = ["DeployResult", "deploy", "deploy_host", "parallel_of", "prepare", "untouched"]

