"""The daemon's default runner: deploys through the fleet rollout (orchestrator/deploy/rollout.py).

Named in the daemon's config as `runner = "orchestrator.daemon.runners.deploy:DeployRunner"`
(the default). Configs written before the runners package had it as
"orchestrator.deploy:DeployRunner" or "orchestrator.deploy.rollout:DeployRunner"; the config
loader reads both as this one (orchestrator/daemon/config.py, RUNNER_ALIASES).

The rollout itself is the same one `orchestrator deploy` runs in-process: what this runner adds is
the daemon's side of it, the hosts a re-verification found degraded or failed (from the store)
kept out, the rollout's verdict as the deployment's `DeploymentOutcome`, the manual `rollback`
of a deployment's hosts, and `reconcile` of a deployment a dead daemon left in flight.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from orchestrator.core.envinputs import load_environment
from orchestrator.core.facts import HostFacts
from orchestrator.core.findings import EXCLUDED, excluded_hosts
from orchestrator.core.hashing import hash_file
from orchestrator.core.inventory import Host, Inventory
from orchestrator.core.spec import Spec
from orchestrator.core.states import RECONCILE_STEP, DeploymentState, HostStepState
from orchestrator.daemon.config import DaemonConfig
from orchestrator.daemon.runners.base import DeploymentOutcome, HostCheck, RunSink
from orchestrator.daemon.runners.probe import ProbeRunner, host_status
from orchestrator.deploy.batch import prepare
from orchestrator.deploy.imagebuild import pack_layout
from orchestrator.deploy.pipeline import EventSink, HostResult, HostStatus
from orchestrator.deploy.releases import (
    app_releases,
    plan_rollback,
    serving_identical,
    unmark_bad,
)
from orchestrator.deploy.rollout import RolloutResult, Undone, rollout, undo, verdict
from orchestrator.deploy.steps.recovery import Settled, recover_host, release_of
from orchestrator.errors import Conflict, HostError
from orchestrator.hosts.hostops import HostOps, ReleaseInfo
from orchestrator.hosts.pool import Pool

D = DeploymentState
#: A manual rollback's word for a host that has no release of the deployment (nothing to undo).
NOT_DEPLOYED = "not deployed here"


def _events(sink: RunSink) -> EventSink:
    """The daemon's sink as the engine's: the same `emit`, but the daemon's also returns the
    event it stored, which the engine ignores (its protocol says None)."""
    return cast(EventSink, sink)


class DeployRunner:
    """Deploys for the daemon: the rollout of `rollout()` through the daemon's sink, the manual
    rollback of a deployment's hosts, and the reconciliation of a deployment a dead daemon
    left in flight (read each host's real state; finish it if it serves and is healthy, else
    put the host back). Probing (`verify_hosts`) is the probe runner's; with `reverifies` the
    daemon re-verifies the releases this runner deploys (orchestrator/daemon/reverifier.py)."""

    reverifies = True

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self._probe = ProbeRunner(config)

    def verify_hosts(self, names: list[str]) -> list[HostCheck]:
        return self._probe.verify_hosts(names)

    def check(self, spec: Spec) -> None:
        """At submission: the targets resolve and the lock is valid (the probe runner's)."""
        self._probe.check(spec)

    def _inventory(self) -> Inventory:
        return self._probe._inventory()

    def _pool(self, inventory: Inventory) -> Pool:
        return self._probe._pool(inventory)

    def run(self, deployment_id: str, bundle_dir: Path, spec: Spec, sink: RunSink,
            cancel_event: threading.Event) -> DeploymentOutcome:
        inventory = self._inventory()
        hosts = inventory.resolve(list(spec.targets))
        inputs = replace(prepare(spec, deployment=deployment_id, index=self.config.index,
                                 sink=_events(sink)),  # an image built now: `image.build`
                         fence=getattr(sink, "fence", None))  # the daemon's lease token
        parallel = min(int(self.config.max_ssh_sessions), int(spec.rollout.max_parallel))
        store = getattr(sink, "store", None)  # the daemon's: hosts degraded/failed stay out
        excluded = excluded_hosts(store.hosts(), [h.name for h in hosts]) if store else {}
        def record(host: Host, found: HostFacts | HostError) -> None:
            # The rollout's probe fills `GET /v1/hosts` too, but never with a verdict that
            # keeps the host out of later rollouts (degraded, failed): that is re-verification's
            # call, per app, while this probe was judged by the preflight of this spec only (a
            # host without a driver is fine for a CPU deployment).
            status, reasons = host_status(found)
            if status not in EXCLUDED:
                sink.record_host(HostCheck(host.name, status, reasons,
                                           None if isinstance(found, HostError) else found.raw))

        with self._pool(inventory) as pool:
            out = rollout(inputs, hosts, pool=pool, sink=_events(sink), max_parallel=parallel,
                          cancel=cancel_event, excluded=excluded, on_probe=record)
        return outcome_of(out)

    def check_rollback(self, deployment_id: str, spec: Spec, to: str | None) -> None:
        """Before a manual rollback changes anything: every host that serves the deployment's
        release must have somewhere to go (its previous good release, or `to`). Conflict
        (exit 2) naming each host that has not; nothing is changed or marked."""
        inventory = self._inventory()
        hosts = inventory.resolve(list(spec.targets))
        with self._pool(inventory) as pool:
            plan = plan_rollback(pool, hosts, str(spec.name), deployment_id, to)
        if plan.problems:
            raise Conflict(f"rollback of {deployment_id} refused, nothing changed: "
                           + "; ".join(plan.problems))

    def already_serving(self, spec: Spec) -> dict[str, str] | None:
        """{host: release} when every target already serves a verified release made from
        exactly this spec, model and lock (a re-submission would change nothing), else None."""
        inventory = self._inventory()
        hosts = inventory.resolve(list(spec.targets))
        digests = {"spec_digest": spec.digest, "model_sha256": spec.model.sha256,
                   # an image: its archive's (an OCI layout directory's packed archive)
                   "lock_sha256": load_environment(pack_layout(spec)).sha256,
                   "golden_sha256": hash_file(spec.paths.golden)}
        with self._pool(inventory) as pool:
            found = serving_identical(pool, hosts, str(spec.name), digests)
        serving = {h: r for h, r in found.items() if r is not None}
        return serving if hosts and len(serving) == len(hosts) else None

    def releases(self, app: str, names: list[str]) -> dict[str, list[ReleaseInfo] | HostError]:
        """The app's releases on these hosts (names, groups or selectors; none: every host)."""
        inventory = self._inventory()
        hosts = inventory.resolve(names) if names else list(inventory.hosts.values())
        with self._pool(inventory) as pool:
            return app_releases(pool, hosts, app)

    def unmark_bad(self, app: str, release_id: str,
                   names: list[str]) -> dict[str, bool | HostError]:
        """Clear the release's bad mark on these hosts (none: every host)."""
        inventory = self._inventory()
        hosts = inventory.resolve(names) if names else list(inventory.hosts.values())
        with self._pool(inventory) as pool:
            return unmark_bad(pool, hosts, app, release_id)

    def rollback(self, deployment_id: str, bundle_dir: Path, spec: Spec, sink: RunSink,
                 cancel_event: threading.Event, to: str | None = None) -> DeploymentOutcome:
        inventory = self._inventory()
        hosts = inventory.resolve(list(spec.targets))
        inputs = prepare(spec, deployment=deployment_id, index=self.config.index)
        with self._pool(inventory) as pool:
            done: dict[str, Undone | None] = {}  # None: no release of this deployment there
            for host in hosts:
                with pool.session(host) as t:
                    rid = release_of(HostOps(t, host.deploy_root), str(spec.name), deployment_id)
                if rid is None:
                    done[host.name] = None
                    continue
                done.update(undo(replace(inputs, release_id=rid), [host], pool=pool,
                                 sink=_events(sink), mark_bad=True, to=to or "previous"))
        states = {h: NOT_DEPLOYED if u is None else u.value for h, u in done.items()}
        failed = [u.value for u in done.values() if u is not None and not u.rolled_back]
        if failed:
            return DeploymentOutcome(D.FAILED, "; ".join(failed), states)
        return DeploymentOutcome(D.ROLLED_BACK, "rolled back by request"
                                 + (f" to {to}" if to else ""), states)

    def resume(self, deployment_id: str, bundle_dir: Path, spec: Spec, sink: RunSink,
               cancel_event: threading.Event) -> DeploymentOutcome:
        """Go on with a deployment a dead daemon left running, from the hosts' real state:
        each host reconciled first (`recover_host`: serving and healthy, or put back, or its
        staged work removed); then the rollout again over the same release id, the serving
        hosts counted as done, the ones reconciliation put back (or could not reach) as
        failed against the budget, the rest deployed afresh (their previous attempt's step
        rows cleared; the events keep it)."""
        inventory = self._inventory()
        hosts = inventory.resolve(list(spec.targets))
        store = getattr(sink, "store", None)
        inputs = replace(prepare(spec, deployment=deployment_id,
                                 release_id=_release_id(store, deployment_id)),
                         fence=getattr(sink, "fence", None))
        parallel = min(int(self.config.max_ssh_sessions), int(spec.rollout.max_parallel))
        sink.emit("reconcile", status="started", level="warning", state=str(D.RUNNING),
                  action="resume")
        with self._pool(inventory) as pool:
            found = pool.map_hosts(lambda t, h: recover_host(t, h, inputs, _events(sink)), hosts,
                                   parallel)
            done = {n: HostResult(n, HostStatus.SUCCEEDED, reason="serving (reconciled)")
                    for n, r in found.items() if r is Settled.SERVING}
            lost = {n: ("put back by reconciliation after a restart" if isinstance(r, Settled)
                        else f"unreachable at reconciliation: {r}")
                    for n, r in found.items() if n not in done and r is not Settled.ABORTED}
            if store is not None:
                for name in found:
                    if name not in done and name not in lost:
                        store.restart_steps(deployment_id, name)
                for row in store.steps(deployment_id):  # half-done on the hosts kept as found
                    if row.state is HostStepState.RUNNING and row.step != RECONCILE_STEP:
                        sink.step(row.host, row.step, HostStepState.FAILED,
                                  reason="interrupted by a daemon restart")
                excluded = excluded_hosts(store.hosts(), [h.name for h in hosts])
                lost = {**excluded, **lost}
            sink.emit("reconcile", status="finished", level="warning", outcome="resumed",
                      serving=sorted(done), failed=lost, release_id=inputs.release_id)
            out = rollout(inputs, hosts, pool=pool, sink=_events(sink), max_parallel=parallel,
                          cancel=cancel_event, excluded=lost, done=done)
        return outcome_of(out)

    def reconcile(self, deployment_id: str, bundle_dir: Path, spec: Spec, sink: RunSink,
                  record: Any) -> DeploymentOutcome:
        inventory = self._inventory()
        hosts = inventory.resolve(list(spec.targets))
        inputs = prepare(spec, deployment=deployment_id, index=self.config.index)
        with self._pool(inventory) as pool:
            found = pool.map_hosts(lambda t, h: recover_host(t, h, inputs, _events(sink)), hosts,
                                   int(self.config.max_ssh_sessions))
        states = {n: (r.value if isinstance(r, Settled) else f"unreachable: {r}")
                  for n, r in found.items()}
        if all(r is Settled.SERVING for r in found.values()):
            return DeploymentOutcome(D.SUCCEEDED, "reconciled: every host serves "
                                     "the release and is healthy", states)
        if any(r is Settled.ROLLED_BACK for r in found.values()):
            return DeploymentOutcome(D.ROLLED_BACK, "reconciled after a daemon "
                                     "restart: hosts put back on their previous release", states)
        return DeploymentOutcome(D.FAILED, "reconciled after a daemon restart: "
                                 "the deployment did not finish", states)


def _release_id(store: Any, deployment_id: str) -> str | None:
    """The release id the deployment's first attempt used (its `deployment.started` events
    name it), so hosts it already switched and hosts deployed now share one release."""
    if store is None:
        return None
    for event in store.events(deployment_id):
        if event.get("event") == "deployment.started" and event.get("release_id"):
            return str(event["release_id"])
    return None


def outcome_of(out: RolloutResult) -> DeploymentOutcome:
    """The daemon's DeploymentOutcome of a rollout: its `verdict` (the same one the CLI's exit
    code comes from). Pure."""
    judged = verdict(out)
    return DeploymentOutcome(judged.state, judged.reason, judged.hosts)


__all__ = ["DeployRunner", "outcome_of"]
