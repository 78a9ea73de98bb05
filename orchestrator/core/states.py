"""Deployment and host-step states, the transitions allowed between them, and `change_state`.

A leaf module (supervisor's `states.py` in spirit): it imports nothing of the orchestrator but the
errors. Every state change in the daemon goes through `change_deployment_state` or
`change_step_state`, which check the transition, persist it (the store re-checks it inside its
write transaction, so two threads cannot both win a race) and emit exactly one event for it.

    queued ──> running ──> succeeded ──> rolling_back ──> rolled_back
      │           │  └───> failed           ▲   └───────> failed
      │           ├──────> rolled_back      │
      │           └──────> cancelled        └── (a manual rollback of a finished deployment)
      └──> cancelled
    running <──> paused (`orchestrator pause`/`resume`, or `rollout.on_failure: pause`); a paused
    deployment ends like a running one (abort, cancel, or reconciliation after a restart).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

from orchestrator.errors import InvalidTransition


class DeploymentState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"  # a rollout held between batches, waiting for resume or abort
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"


class HostStepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"


D, S = DeploymentState, HostStepState

DEPLOYMENT_TRANSITIONS: dict[DeploymentState, frozenset[DeploymentState]] = {
    D.QUEUED: frozenset({D.RUNNING, D.CANCELLED}),
    D.RUNNING: frozenset({D.SUCCEEDED, D.FAILED, D.ROLLED_BACK, D.CANCELLED, D.PAUSED}),
    D.PAUSED: frozenset({D.RUNNING, D.SUCCEEDED, D.FAILED, D.ROLLED_BACK, D.CANCELLED}),
    # A finished deployment can still be rolled back by hand (`orchestrator rollback ID`).
    D.SUCCEEDED: frozenset({D.ROLLING_BACK}),
    D.ROLLING_BACK: frozenset({D.ROLLED_BACK, D.FAILED}),
    D.FAILED: frozenset(),
    D.ROLLED_BACK: frozenset(),
    D.CANCELLED: frozenset(),
}

# "Finished" for a follower and for `submit --wait`: nothing more happens unless a user acts.
DEPLOYMENT_TERMINAL: frozenset[DeploymentState] = frozenset(
    {D.SUCCEEDED, D.FAILED, D.ROLLED_BACK, D.CANCELLED}
)
# A deployment in one of these owns its app's hosts: a second one for the same app is refused.
DEPLOYMENT_ACTIVE: frozenset[DeploymentState] = frozenset(
    {D.QUEUED, D.RUNNING, D.PAUSED, D.ROLLING_BACK})
# Owned by a worker: a daemon restart (or the watchdog, for an orphan) reconciles these.
DEPLOYMENT_IN_FLIGHT: frozenset[DeploymentState] = frozenset(
    {D.RUNNING, D.PAUSED, D.ROLLING_BACK})

STEP_TRANSITIONS: dict[HostStepState, frozenset[HostStepState]] = {
    S.PENDING: frozenset({S.RUNNING, S.SKIPPED, S.CANCELLED}),
    S.RUNNING: frozenset({S.OK, S.FAILED, S.CANCELLED}),
    # A step that succeeded (say `switch`) is undone when a later step or host fails.
    S.OK: frozenset({S.ROLLED_BACK}),
    S.FAILED: frozenset({S.ROLLED_BACK}),
    S.SKIPPED: frozenset(),
    S.ROLLED_BACK: frozenset(),
    S.CANCELLED: frozenset(),
}
STEP_TERMINAL: frozenset[HostStepState] = frozenset(
    {S.OK, S.FAILED, S.SKIPPED, S.ROLLED_BACK, S.CANCELLED}
)


def check_deployment_transition(old: DeploymentState, new: DeploymentState) -> None:
    if new not in DEPLOYMENT_TRANSITIONS[old]:
        raise InvalidTransition(f"deployment cannot go from {old} to {new}")


def check_step_transition(old: HostStepState | None, new: HostStepState) -> None:
    """`old` is None for a step never recorded: it may start in any state but a terminal undo."""
    if old is None:
        if new in (S.ROLLED_BACK,):
            raise InvalidTransition(f"a step cannot start as {new}")
        return
    if new not in STEP_TRANSITIONS[old]:
        raise InvalidTransition(f"step cannot go from {old} to {new}")


class StateStore(Protocol):
    """What `change_*_state` needs of the store: atomic check-and-set, returning the old state."""

    def transition_deployment(
        self, deployment: str, new: DeploymentState, *, result: dict[str, Any] | None = None
    ) -> DeploymentState: ...

    def transition_step(
        self, deployment: str, host: str, step: str, new: HostStepState, *,
        detail: dict[str, Any] | None = None,
    ) -> HostStepState | None: ...


class StateSink(Protocol):
    def emit(
        self, event: str, *, host: str | None = None, step: str | None = None,
        status: str | None = None, duration_ms: float | None = None, level: str = "info",
        **details: Any,
    ) -> dict[str, Any]: ...


def change_deployment_state(
    store: StateStore, sink: StateSink, deployment: str, new: DeploymentState, *,
    reason: str | None = None, result: dict[str, Any] | None = None,
) -> DeploymentState:
    """Check, persist, then emit `{"event": "deployment", "status": new, "from": old}`."""
    old = store.transition_deployment(deployment, new, result=result)
    level = "error" if new is D.FAILED else "info"
    if new in (D.ROLLED_BACK, D.CANCELLED):
        level = "warning"
    extra: dict[str, Any] = {"from": str(old)}
    if reason:
        extra["reason"] = reason
    sink.emit("deployment", status=str(new), level=level, **extra)
    return old


def change_step_state(
    store: StateStore, sink: StateSink, deployment: str, host: str, step: str,
    new: HostStepState, *, duration_ms: float | None = None, reason: str | None = None,
    detail: dict[str, Any] | None = None,
) -> HostStepState | None:
    """Check, persist, then emit `{"event": "step", "host", "step", "status": new, ...}`."""
    record = dict(detail or {})
    if reason:
        record["reason"] = reason
    old = store.transition_step(deployment, host, step, new, detail=record or None)
    level = "error" if new is S.FAILED else "info"
    sink.emit(
        "step", host=host, step=step, status=str(new), duration_ms=duration_ms, level=level,
        **record,
    )
    return old
