"""The daemon's first real runner: probe every target and run the preflight; change nothing.

Per host, two steps, each `running` then `ok`/`failed` (one event per state change):
    probe      connect (the daemon's known_hosts and identity) and run remote/probe.py
    preflight  the pure preflight of (spec, lock, facts, compat data)
The host's facts and status are recorded for `GET /v1/hosts` as they are found. The deployment
succeeds when every target passes the preflight, and fails naming each failing host's reasons.
The deploy pipeline replaces this runner (config `runner`), keeping the same seam.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

from orchestrator.core.compat import CompatData, load_compat
from orchestrator.core.envinputs import load_environment
from orchestrator.core.facts import HostFacts
from orchestrator.core.inventory import Host, Inventory, load_inventory
from orchestrator.core.preflight import preflight
from orchestrator.core.spec import Spec
from orchestrator.core.states import DeploymentState, HostStepState
from orchestrator.daemon.config import DaemonConfig
from orchestrator.daemon.runners.base import DeploymentOutcome, HostCheck, RunSink, targets_of
from orchestrator.deploy.imagebuild import pack_layout
from orchestrator.errors import HostError, HostKeyRejected, HostUnreachable, SpecError
from orchestrator.hosts.pool import Pool, map_hosts
from orchestrator.hosts.probe import probe_host
from orchestrator.hosts.ssh import SshOptions

D, S = DeploymentState, HostStepState


def host_status(result: HostFacts | HostError) -> tuple[str, list[str]]:
    """Pure: the `GET /v1/hosts` status of a probe result, with its reasons."""
    if isinstance(result, HostUnreachable | HostKeyRejected):
        return "unreachable", [str(result)]
    if isinstance(result, HostError):
        return "failed", [str(result)]
    if result.nvml_error is not None:
        return "degraded", [f"NVML: {result.nvml_error.name}: {result.nvml_error.message}"]
    return "healthy", []


class ProbeRunner:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self._compat: CompatData | None = None

    def _inventory(self) -> Inventory:
        if self.config.inventory is None:
            raise SpecError("no inventory configured", field="inventory")
        # Read at each run: editing the inventory needs no daemon restart.
        return load_inventory(self.config.inventory)

    def _pool(self, inventory: Inventory) -> Pool:
        options = SshOptions.for_inventory(inventory)
        overrides: dict[str, Any] = {}
        if self.config.known_hosts is not None:
            overrides["known_hosts"] = self.config.known_hosts
        if self.config.identity is not None:
            overrides["identity_file"] = self.config.identity
        if overrides:
            options = dataclasses.replace(options, **overrides)
        return Pool(options, max_connections=self.config.max_ssh_sessions)

    def check(self, spec: Spec) -> None:
        """At submission: every target resolves in the inventory and the lock file is valid."""
        self._inventory().resolve(targets_of(spec))
        load_environment(pack_layout(spec))

    def run(self, deployment_id: str, bundle_dir: Path, spec: Spec, sink: RunSink,
            cancel_event: threading.Event) -> DeploymentOutcome:
        inventory = self._inventory()
        hosts = inventory.resolve(targets_of(spec))
        lock = load_environment(pack_layout(spec))
        compat = self._compat = self._compat or load_compat()
        parallel = min(self.config.max_ssh_sessions, int(spec.rollout.max_parallel))
        pool = self._pool(inventory)

        def one(host: Host) -> HostStepState:
            if cancel_event.is_set():
                sink.step(host.name, "probe", S.CANCELLED, reason="cancelled before it started")
                return S.CANCELLED
            facts = self._probe_step(pool, host, sink)
            if facts is None:
                return S.FAILED
            return self._preflight_step(host, spec, lock, facts, compat, sink)

        with pool:
            results = map_hosts(one, hosts, parallel)
        statuses = {name: r if isinstance(r, HostStepState) else S.FAILED
                    for name, r in results.items()}
        return _outcome(statuses, cancel_event)

    def _probe_step(self, pool: Pool, host: Host, sink: RunSink) -> HostFacts | None:
        started = time.monotonic()
        sink.step(host.name, "probe", S.RUNNING, detail={"address": host.address})
        try:
            with pool.session(host) as transport:
                facts: HostFacts | HostError = probe_host(transport, host)
        except HostError as exc:
            facts = exc
        status, reasons = host_status(facts)
        sink.record_host(HostCheck(host.name, status, reasons,
                                   None if isinstance(facts, HostError) else facts.raw))
        elapsed = (time.monotonic() - started) * 1000
        if isinstance(facts, HostError):
            sink.step(host.name, "probe", S.FAILED, duration_ms=elapsed, reason=str(facts))
            return None
        sink.step(host.name, "probe", S.OK, duration_ms=elapsed, detail={
            "host_status": status, "driver": facts.driver_version, "gpus": len(facts.gpus),
            "python": facts.python_version})
        return facts

    def _preflight_step(self, host: Host, spec: Spec, lock: Any, facts: HostFacts,
                        compat: CompatData, sink: RunSink) -> HostStepState:
        started = time.monotonic()
        sink.step(host.name, "preflight", S.RUNNING)
        verdict = preflight(spec, lock, facts, compat)
        elapsed = (time.monotonic() - started) * 1000
        checks = verdict.to_dict()["checks"]
        if verdict.ok:
            sink.step(host.name, "preflight", S.OK, duration_ms=elapsed, detail={"checks": checks})
            return S.OK
        sink.step(host.name, "preflight", S.FAILED, duration_ms=elapsed,
                  reason="; ".join(verdict.reasons()), detail={"checks": checks})
        return S.FAILED

    def rollback(self, deployment_id: str, bundle_dir: Path, spec: Spec, sink: RunSink,
                 cancel_event: threading.Event) -> DeploymentOutcome:
        return DeploymentOutcome(D.ROLLED_BACK, "nothing to undo: the probe runner changes no host")

    def verify_hosts(self, names: list[str]) -> list[HostCheck]:
        inventory = self._inventory()
        hosts = inventory.resolve(names) if names else list(inventory.hosts.values())
        with self._pool(inventory) as pool:
            results = pool.map_hosts(probe_host, hosts, self.config.max_ssh_sessions)
        checks = []
        for name, result in results.items():
            status, reasons = host_status(result)
            checks.append(HostCheck(name, status, reasons,
                                    None if isinstance(result, HostError) else result.raw))
        return checks


def _outcome(states: dict[str, HostStepState],
             cancel_event: threading.Event) -> DeploymentOutcome:
    """Each host's last step state (its value is what the deployment's result shows)."""
    statuses = {h: str(s) for h, s in states.items()}
    failed = sorted(h for h, s in states.items() if s is S.FAILED)
    if failed:
        return DeploymentOutcome(D.FAILED, f"preflight failed on {len(failed)} of "
                                           f"{len(statuses)} hosts: {', '.join(failed)}", statuses)
    if cancel_event.is_set() and any(s is S.CANCELLED for s in states.values()):
        return DeploymentOutcome(D.CANCELLED, "cancelled by request", statuses)
    return DeploymentOutcome(D.SUCCEEDED, None, statuses)
