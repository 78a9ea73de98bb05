"""Reconciliation: settling a deployment the store shows in flight that no worker owns (the
last daemon died or stopped under it, or its worker died: the watchdog's orphan).

`reconcile` is the service's default (fail it, with events); `reconcile_with_runner` asks a
runner that knows how (the deploy runner: read each host's real state, resume or roll back) and
records what it decides. Either way the steps the dead worker left running are failed and the
deployment changes state once, through `states.change_deployment_state`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from orchestrator.core.states import (
    DEPLOYMENT_TRANSITIONS,
    DeploymentState,
    HostStepState,
    change_deployment_state,
)
from orchestrator.daemon import bundle
from orchestrator.daemon.runners.base import DeploymentOutcome
from orchestrator.daemon.sinks import ServiceSink
from orchestrator.daemon.store import DeploymentRecord, Store
from orchestrator.errors import OrchestratorError

D, S = DeploymentState, HostStepState
log = structlog.get_logger("orchestrator.daemon.service")

RECONCILE_REASON = "daemon restarted; reconciliation pending pipeline support"

#: A runner's `reconcile(deployment_id, bundle_dir, spec, sink, record) -> DeploymentOutcome`.
RunnerReconcile = Callable[..., DeploymentOutcome]


def reconcile(store: Store, sink: ServiceSink, record: DeploymentRecord) -> None:
    """Called at start for every deployment the store shows in flight: the last daemon died (or
    stopped) under it. For now it fails it, with events; the deploy pipeline extends this to read
    each host's real state (readlink `current`) and resume or roll back."""
    sink.emit("reconcile", status="started", level="warning", state=str(record.state))
    for step in store.steps(record.id):
        if step.state is S.RUNNING:
            sink.step(step.host, step.step, S.FAILED, reason="interrupted by a daemon restart")
    sink.emit("reconcile", status="finished", level="warning", outcome="failed")
    change_deployment_state(store, sink, record.id, D.FAILED, reason=RECONCILE_REASON,
                            result={"state": "failed", "reason": RECONCILE_REASON})


def reconcile_with_runner(store: Store, sink: ServiceSink, record: DeploymentRecord,
                          method: RunnerReconcile, bundle_dir: Path) -> None:
    """The runner's `method` decides the outcome (a failure or a crash of it fails the
    deployment, as does an outcome the deployment's state cannot go to); then the steps left
    running are failed and the deployment settled."""
    sink.emit("reconcile", status="started", level="warning", state=str(record.state))
    try:
        submission = bundle.validate(bundle_dir)
        outcome: DeploymentOutcome = method(record.id, submission.bundle_dir,
                                            submission.spec, sink, record)
    except OrchestratorError as exc:
        outcome = DeploymentOutcome(D.FAILED, f"reconciliation failed: {exc}")
    except Exception as exc:
        log.exception("reconcile crashed", deployment=record.id)
        outcome = DeploymentOutcome(D.FAILED, f"reconciliation crashed ({exc!r}); please "
                                              "report (traceback in the daemon log)")
    if outcome.state not in DEPLOYMENT_TRANSITIONS[record.state]:
        outcome = DeploymentOutcome(D.FAILED, f"reconciliation returned {outcome.state} "
                                              f"for a {record.state} deployment", outcome.hosts)
    for step in store.steps(record.id):  # what the dead worker left half-done
        if step.state is S.RUNNING:
            sink.step(step.host, step.step, S.FAILED, reason="interrupted by a daemon restart")
    sink.emit("reconcile", status="finished", level="warning", outcome=str(outcome.state))
    change_deployment_state(store, sink, record.id, outcome.state,
                            reason=outcome.reason, result=outcome.as_json())

