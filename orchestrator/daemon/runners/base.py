"""The seam between the daemon and what a deployment does to hosts: the `Runner` protocol.

The daemon (orchestrator/daemon/service.py) owns queueing, states, events and recovery; a runner
owns the hosts. It is chosen by the config's `runner = "module:factory"`, the factory taking the
`DaemonConfig`:

- `orchestrator.daemon.runners.deploy.DeployRunner` (the default): the deploy pipeline, with rollout
  policy, manual rollback, and `reconcile` after a crash (reads each host's real state).
- `orchestrator.daemon.runners.probe.ProbeRunner`: probes each target and runs the preflight,
  one event per step state; changes nothing on any host (a dry run through the daemon).
- `EchoRunner` (here): walks every target through the pipeline's step names without connecting
  to anything (`ORCHESTRATOR_ECHO_DELAY_S` seconds per step); for `make bench` and tests of the
  daemon itself.

A runner reports only through its `RunSink`: `step()` for a host-step state change (persisted and
emitted through `states.change_step_state`), `emit()` for anything else, `record_host()` for
host facts. It checks `cancel` between steps and returns a `DeploymentOutcome`; it never sets the
deployment's state itself.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from orchestrator.core.sink import StepSink
from orchestrator.core.spec import Spec
from orchestrator.core.states import DeploymentState, HostStepState
from orchestrator.daemon.config import DaemonConfig
from orchestrator.deploy.steps.registry import STEP_ORDER

D, S = DeploymentState, HostStepState


@dataclass(frozen=True)
class DeploymentOutcome:
    state: DeploymentState  # succeeded, failed, rolled_back or cancelled
    reason: str | None = None
    hosts: dict[str, str] = field(default_factory=dict)  # host -> "ok" | "failed" | ...

    def as_json(self) -> dict[str, Any]:
        return {"state": str(self.state), "reason": self.reason, "hosts": self.hosts}


@dataclass(frozen=True)
class HostCheck:
    """The verdict of probing one host now."""

    host: str
    status: str  # healthy | degraded | failed | unreachable
    reasons: list[str]
    facts: dict[str, Any] | None


class RunSink(StepSink, Protocol):
    """The one event sink with step states (`StepSink`), and host facts."""

    def record_host(self, check: HostCheck) -> None: ...


class Runner(Protocol):
    def run(self, deployment_id: str, bundle_dir: Path, spec: Spec, sink: RunSink,
            cancel_event: threading.Event) -> DeploymentOutcome: ...

    def rollback(self, deployment_id: str, bundle_dir: Path, spec: Spec, sink: RunSink,
                 cancel_event: threading.Event) -> DeploymentOutcome: ...

    def verify_hosts(self, names: list[str]) -> list[HostCheck]: ...

    # Optional: `check(spec) -> None`, called at submission; a SpecError it raises refuses the
    # spec with 400 / exit 2 before anything is queued (unknown targets, a bad lock file).
    # Optional: `reconcile(deployment_id, bundle_dir, spec, sink, record) -> DeploymentOutcome`,
    # called at start (and by the daemon's watchdog) for a deployment left in flight; see
    # `Service.reconcile`. Without it the deployment is failed.
    # Optional (the deploy runner's): `check_rollback(deployment_id, spec, to)`, asked before a
    # manual rollback changes anything (a Conflict refuses it); `rollback(..., to=RELEASE)`;
    # `releases(app, names)` and `unmark_bad(app, release_id, names)`, the app's releases on
    # its hosts. Without them the daemon answers `releases` and `--to` with 409.
    # Optional: `resume(deployment_id, bundle_dir, spec, sink, cancel_event)`, as `run`, for a
    # deployment a dead daemon left `running`: settle each host from its real state, then go
    # on (the deploy runner's). With it, such a deployment is resumed instead of reconciled.


def targets_of(spec: Spec) -> list[str]:
    """The spec's `targets`, whether `spec` is the plain dict or `load_spec`'s object."""
    targets = spec.get("targets") if isinstance(spec, dict) else getattr(spec, "targets", None)
    return [str(t) for t in targets or []]


class EchoRunner:
    """Touches nothing: each target goes through each step, pending -> running -> ok."""

    #: The registry's steps, so the echo walks exactly what a real deployment would.
    STEPS: tuple[str, ...] = STEP_ORDER

    def __init__(self, config: DaemonConfig) -> None:
        self.delay_s = float(os.environ.get("ORCHESTRATOR_ECHO_DELAY_S", "0"))

    def run(self, deployment_id: str, bundle_dir: Path, spec: Spec, sink: RunSink,
            cancel_event: threading.Event) -> DeploymentOutcome:
        hosts = targets_of(spec)
        for host in hosts:
            for step in self.STEPS:
                if cancel_event.is_set():
                    return DeploymentOutcome(D.CANCELLED, "cancelled by request")
                started = time.monotonic()
                sink.step(host, step, S.RUNNING)
                if self.delay_s:
                    cancel_event.wait(self.delay_s)
                sink.step(host, step, S.OK, duration_ms=(time.monotonic() - started) * 1000)
        return DeploymentOutcome(D.SUCCEEDED, None, {h: "ok" for h in hosts})

    def rollback(self, deployment_id: str, bundle_dir: Path, spec: Spec, sink: RunSink,
                 cancel_event: threading.Event) -> DeploymentOutcome:
        return DeploymentOutcome(D.ROLLED_BACK, "nothing was switched")

    def verify_hosts(self, names: list[str]) -> list[HostCheck]:
        return [HostCheck(n, "healthy", [], None) for n in names]


def make_runner(config: DaemonConfig) -> Runner:
    """Import `config.runner` ("module:factory") and build the runner from the config."""
    import importlib

    from orchestrator.errors import SpecError

    module_name, _, attr = config.runner.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"cannot load runner {config.runner!r}: {exc}", field="runner") from None
    runner: Runner = factory(config)
    return runner
