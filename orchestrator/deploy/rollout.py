"""Fleet rollout (DESIGN.md "Fleet rollout"), and the daemon's runner that deploys.

    out = rollout(inputs, hosts, pool=pool, sink=sink)   # canary, batches, failure budget
    outcome_of(out)                                      # the daemon's DeploymentOutcome

`rollout.canary` hosts first, alone, then batches of `rollout.batch_size`, each batch through
`orchestrator.deploy.batch.deploy` (at most `max_parallel` SSH sessions). More than
`rollout.max_failed_hosts` failed hosts stop the rollout; with `rollout.on_failure: rollback`
(the default) the hosts this deployment already switched are switched back.

`DeployRunner` plugs this into the daemon (its default `runner`, named
"orchestrator.deploy.rollout:DeployRunner"): `run`, the manual `rollback` of a deployment, and
`reconcile` of one a dead daemon left in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.core.inventory import Host
from orchestrator.core.preflight import Status, preflight
from orchestrator.core.spec import Spec
from orchestrator.deploy.batch import DeployResult, deploy, prepare
from orchestrator.deploy.control import control_of
from orchestrator.deploy.inputs import DeployInputs
from orchestrator.deploy.pipeline import EventSink, HostResult, HostStatus
from orchestrator.deploy.playbook import Playbook
from orchestrator.deploy.steps.recovery import recover_host, release_of, undo_host
from orchestrator.hosts.hostops import HostOps
from orchestrator.hosts.pool import Pool
from orchestrator.hosts.probe import probe_host
from orchestrator.hosts.transport import Transport
from orchestrator.reverify.findings import excluded_hosts


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
    stopped: str | None = None  # why the rollout stopped early ("cancelled", "aborted", ...)
    undone: dict[str, str] = field(default_factory=dict)  # host -> "rolled_back" | error
    accepted: int = 0  # failures an operator accepted by resuming a rollout they held

    @property
    def failed(self) -> list[str]:
        return sorted(n for n, r in self.deploy.hosts.items() if not r.ok)


def rollout(inputs: DeployInputs, hosts: Sequence[Host], *, pool: Pool, sink: EventSink,
            max_parallel: int | None = None, cancel: threading.Event | None = None,
            playbook: Playbook | None = None,
            excluded: Mapping[str, str] | None = None) -> RolloutResult:
    """Preflight of every target first (nothing changes on a host that fails it), then the
    batches in order. More than `max_failed_hosts` failures stop the rollout: with
    `on_failure: rollback` the hosts this deployment already switched are switched back; with
    `pause` they are left and the rollout waits for `resume` (go on) or `abort` (stop there).
    Given a `RolloutControl` as `cancel`, a pause request holds the rollout before its next
    batch, and `abort` stops it and undoes as `on_failure` says. `excluded` ({host: reason}:
    degraded or failed at their last re-verification, orchestrator/reverify/findings.py) are
    reported
    as failed, counted against the budget like a preflight failure, and never touched."""
    ro = inputs.spec.rollout
    total = DeployResult(inputs.deployment, inputs.release_id)
    out = RolloutResult(total)
    control = control_of(cancel)
    parallel = max_parallel or int(ro.max_parallel)
    total.hosts.update(exclude(excluded or {}, sink))
    ready, refused = preflight_fleet(inputs, [h for h in hosts if h.name not in total.hosts],
                                     pool=pool, sink=sink, max_parallel=parallel)
    total.hosts.update(refused)
    budget = int(ro.max_failed_hosts)
    batches = plan_batches(ready, int(ro.canary), int(ro.batch_size))
    if len(out.failed) > budget:
        out.stopped = _over_budget(out, budget, "before any host changed")
        sink.emit("rollout", status="stopped", level="error", reason=out.stopped)
        batches = []
    for i, batch in enumerate(batches):
        if i > 0 and float(ro.pause_s) > 0:  # rollout.pause_s; a cancel or abort cuts it short
            sink.emit("batch", status="waiting", batch=i, pause_s=float(ro.pause_s))
            (cancel or threading.Event()).wait(float(ro.pause_s))
        if control is not None:
            control.hold(f"paused by request before batch {i}")
        if cancel is not None and cancel.is_set():
            out.stopped = "aborted" if control is not None and control.aborted else "cancelled"
            break
        sink.emit("batch", status="started", batch=i, hosts=[h.name for h in batch])
        part = deploy(inputs, batch, pool=pool, sink=sink, max_parallel=max_parallel,
                      playbook=playbook, cancel=cancel)
        total.hosts.update(part.hosts)
        if cancel is not None and cancel.is_set():
            # Hosts that stopped for it are not failures to weigh against the budget: the
            # request decides what happens to the switched ones (abort: on_failure; cancel: none).
            out.stopped = "aborted" if control is not None and control.aborted else "cancelled"
            break
        if len(out.failed) <= budget:
            continue
        reason = _over_budget(out, budget)
        if ro.on_failure == "pause" and control is not None:
            sink.emit("rollout", status="paused", level="error", reason=reason,
                      hint="switched hosts are left as they are: `orchestrator resume ID` "
                           "goes on, `orchestrator abort ID` stops here")
            if control.hold(reason, force=True):
                budget = out.accepted = len(out.failed)  # the operator accepted these
                continue
            out.stopped = f"aborted after: {reason}"
            break
        out.stopped = reason
        sink.emit("rollout", status="stopped", level="error", reason=out.stopped)
        break
    if _must_undo(out, ro.on_failure):
        switched = [h for h in hosts if h.name in total.hosts and total.hosts[h.name].ok]
        out.undone = undo(inputs, switched, pool=pool, sink=sink, max_parallel=max_parallel)
    return out


def _over_budget(out: RolloutResult, budget: int, when: str = "") -> str:
    return (f"{len(out.failed)} failed hosts ({', '.join(out.failed)}), more than "
            f"rollout.max_failed_hosts={budget}" + (f", {when}" if when else ""))


def _must_undo(out: RolloutResult, on_failure: str) -> bool:
    """Switched hosts go back when the rollout stopped over budget or was aborted, and the
    spec says `on_failure: rollback`. A plain cancel leaves them (it stops, it does not undo)."""
    return out.stopped not in (None, "cancelled") and on_failure == "rollback"


def preflight_fleet(inputs: DeployInputs, hosts: Sequence[Host], *, pool: Pool,
                    sink: EventSink, max_parallel: int) -> tuple[list[Host], dict[str, HostResult]]:
    """Probe and preflight every target before any host changes. Returns the hosts that pass,
    and a failed `HostResult` for each that does not (unreachable within the probe's deadline,
    or refused by the preflight): those are reported, counted against the failure budget by
    the caller, and never touched. Each host's pipeline probes again before it stages (facts
    can change while earlier batches run), so this is a gate, not a cache."""
    sink.emit("rollout.preflight", status="started", hosts=[h.name for h in hosts])

    def check(transport: Transport, host: Host) -> list[str]:
        facts = probe_host(transport, host)
        verdict = preflight(inputs.spec, inputs.lock, facts, inputs.compat)
        return [c.message for c in verdict.checks if c.status is Status.FAIL]

    t0 = time.monotonic()
    found = pool.map_hosts(check, list(hosts), max_parallel)
    refused: dict[str, HostResult] = {}
    for host in hosts:
        problems = found[host.name]
        if isinstance(problems, list) and not problems:
            continue
        step, kind = ("preflight", "preflight failed: ") if isinstance(problems, list) else (
            "probe", "unreachable or probe failed: ")
        error = kind + ("; ".join(problems) if isinstance(problems, list) else str(problems))
        sink.emit("step", host=host.name, step=step, status="failed", level="error",
                  error=error, phase="rollout.preflight")
        sink.emit("host.finished", host=host.name, status=HostStatus.FAILED.value,
                  level="error", reason=error, failed_step=step)
        refused[host.name] = HostResult(host.name, HostStatus.FAILED, reason=error,
                                        failed_step=step, error=error)
    ready = [h for h in hosts if h.name not in refused]
    sink.emit("rollout.preflight", status="finished", level="error" if refused else "info",
              duration_ms=(time.monotonic() - t0) * 1000, passed=[h.name for h in ready],
              failed={n: r.reason for n, r in refused.items()})
    return ready, refused


def exclude(excluded: Mapping[str, str], sink: EventSink) -> dict[str, HostResult]:
    """A failed, untouched `HostResult` for each host kept out of the rollout."""
    out = {}
    for name, reason in excluded.items():
        error = f"excluded from the rollout: {reason}"
        sink.emit("host.finished", host=name, status=HostStatus.FAILED.value, level="error",
                  reason=error, failed_step="reverify", detail_status="skipped")
        out[name] = HostResult(name, HostStatus.FAILED, reason=error, failed_step="reverify",
                               error=error)
    return out


def undo(inputs: DeployInputs, hosts: Sequence[Host], *, pool: Pool, sink: EventSink,
         max_parallel: int | None = None, mark_bad: bool = True) -> dict[str, str]:
    """`undo_host` on each host through the pool; {host: "rolled_back" | the failure}."""
    parallel = max_parallel or int(inputs.spec.rollout.max_parallel)
    results = pool.map_hosts(
        lambda t, h: undo_host(t, h, inputs, sink, mark_bad=mark_bad), list(hosts), parallel)
    return {n: r if isinstance(r, str) else f"rollback failed: {r}" for n, r in results.items()}




class DeployRunner:
    """Deploys for the daemon: the rollout of `rollout()` through the daemon's sink, the manual
    rollback of a deployment's hosts, and the reconciliation of a deployment a dead daemon
    left in flight (read each host's real state; finish it if it serves and is healthy, else
    put the host back). Probing (`verify_hosts`) is the probe runner's; with `reverifies` the
    daemon re-verifies the releases this runner deploys (orchestrator/reverify/scheduler.py)."""

    reverifies = True

    def __init__(self, config: Any) -> None:
        # The daemon's modules are imported only when the daemon builds this runner.
        from orchestrator.daemon.runners.probe import ProbeRunner

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
        store = getattr(sink, "store", None)  # the daemon's: hosts degraded/failed stay out
        excluded = excluded_hosts(store.hosts(), [h.name for h in hosts]) if store else {}
        with self._pool(inventory) as pool:
            out = rollout(inputs, hosts, pool=pool, sink=sink, max_parallel=parallel,
                          cancel=cancel_event, excluded=excluded)
        return outcome_of(out)

    def rollback(self, deployment_id: str, bundle_dir: Path, spec: Spec, sink: Any,
                 cancel_event: threading.Event) -> Any:
        from orchestrator.core.states import DeploymentState
        from orchestrator.daemon.runners.base import DeploymentOutcome

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
        from orchestrator.core.states import DeploymentState
        from orchestrator.daemon.runners.base import DeploymentOutcome

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


def outcome_of(out: RolloutResult) -> Any:
    """The daemon's DeploymentOutcome of a rollout: its state, and a reason naming the failed
    hosts (why each failed) and the hosts put back on their previous release (and why). Pure."""
    from orchestrator.core.states import DeploymentState as D
    from orchestrator.daemon.runners.base import DeploymentOutcome

    hosts = {n: r.status.value for n, r in out.deploy.hosts.items()}
    hosts.update({n: s for n, s in out.undone.items()})
    failed = out.failed
    reasons = "; ".join(f"{n}: {out.deploy.hosts[n].reason} ({out.deploy.hosts[n].error})"
                        for n in failed)
    undone = sorted(n for n, s in out.undone.items() if s == "rolled_back")
    back = (f"; rolled back to their previous release because the rollout "
            f"{'was aborted' if out.stopped == 'aborted' else 'stopped'}: {', '.join(undone)}"
            if undone else "")
    if out.stopped == "cancelled":
        return DeploymentOutcome(D.CANCELLED, "cancelled by request", hosts)
    if out.stopped == "aborted":
        left = sorted(n for n, r in out.deploy.hosts.items() if r.ok and n not in out.undone)
        note = (f"; left on the new release (rollout.on_failure: pause): {', '.join(left)}"
                if left else "")
        return DeploymentOutcome(D.ROLLED_BACK if undone else D.CANCELLED,
                                 f"aborted by request{back}{note}", hosts)
    if not failed:
        return DeploymentOutcome(D.SUCCEEDED, None, hosts)
    if out.stopped is None:  # within the failure budget (or accepted by resume): it went on
        how = "accepted by resuming the rollout" if out.accepted else "within the failure budget"
        return DeploymentOutcome(D.SUCCEEDED, f"{len(failed)} host(s) failed {how}: {reasons}",
                                 hosts)
    # Rolled back only when no host is left serving the new release (`on_failure: pause`
    # leaves them: then the deployment failed, and the reason names them).
    left = sorted(n for n, r in out.deploy.hosts.items() if r.ok and n not in out.undone)
    note = f"; left on the new release: {', '.join(left)}" if left else ""
    rolled = undone or any(out.deploy.hosts[n].status is HostStatus.ROLLED_BACK for n in failed)
    return DeploymentOutcome(D.ROLLED_BACK if rolled and not left else D.FAILED,
                             f"{out.stopped}: {reasons}{back}{note}", hosts)
