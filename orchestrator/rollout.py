"""Fleet rollout (DESIGN.md "Fleet rollout"), and the daemon's runner that deploys.

    out = rollout(inputs, hosts, pool=pool, sink=sink)   # canary, batches, failure budget
    outcome_of(out)                                      # the daemon's DeploymentOutcome

`rollout.canary` hosts first, alone, then batches of `rollout.batch_size`, each batch through
`orchestrator.deploy.deploy` (at most `max_parallel` SSH sessions). More than
`rollout.max_failed_hosts` failed hosts stop the rollout; with `rollout.on_failure: rollback`
(the default) the hosts this deployment already switched are switched back.

`DeployRunner` plugs this into the daemon (its default `runner`, named
"orchestrator.deploy:DeployRunner"): `run`, the manual `rollback` of a deployment, and
`reconcile` of one a dead daemon left in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.deploy import DeployResult, deploy, prepare
from orchestrator.hostops import HostOps
from orchestrator.inventory import Host
from orchestrator.pipeline import EventSink, HostStatus
from orchestrator.playbook import Playbook
from orchestrator.pool import Pool
from orchestrator.spec import Spec
from orchestrator.steps.host import DeployInputs
from orchestrator.steps.recovery import recover_host, release_of, undo_host


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
