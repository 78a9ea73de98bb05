"""Deployment, host-step and host-outcome states, the transitions allowed between them, and the
one function that changes each.

A leaf module (supervisor's `states.py` in spirit): it imports nothing of the orchestrator but the
errors and the sink protocol. Every state change goes through `change_deployment_state`,
`change_step_state` or `change_host_state`, which check the transition, persist it (the store
re-checks it inside its write transaction, so two threads cannot both win a race; a host's outcome
is kept by its caller's result) and emit exactly one event for it.

    queued ──> running ──> succeeded ──> rolling_back ──> rolled_back
      │           │  └───> failed           ▲   └───────> failed
      │           ├──────> rolled_back      │
      │           └──────> cancelled        └── (a manual rollback of a finished deployment)
      └──> cancelled
    running <──> paused (`orchestrator pause`/`resume`, or `rollout.on_failure: pause`); a paused
    deployment ends like a running one (abort, cancel, or reconciliation after a restart).

A host's outcome in one deployment (`HostOutcome`; the `status` of `host.started`/`host.finished`):

    pending ──> running ──> succeeded | failed | rolled_back | broken
      └───────> failed     (refused before its pipeline: unreachable, locked, excluded, preflight)
    succeeded | failed | rolled_back | broken ──> succeeded | failed | rolled_back
        (settled again from the host's real state: after a lost connection, or when the rollout
         puts a switched host back); nothing goes back to pending or running, and only the
         pipeline's own verdict is `broken`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

from orchestrator.core.sink import EventSink
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


class HostOutcome(StrEnum):
    """Where one host stands in one deployment."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"            # failed before switch: host as it was
    ROLLED_BACK = "rolled_back"  # failed after switch: previous good release serves again
    BROKEN = "broken"            # needs a human: no healthy release could be restored


D, S, H = DeploymentState, HostStepState, HostOutcome

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

#: The step rows of the host actions outside the pipeline (orchestrator/deploy/steps/recovery.py):
#: the rollout's (or a manual rollback's) undo of a switched host, and the reconciliation of a
#: host from its real state. Their names are never the pipeline's own (its `rollback` and
#: `recheck` rows stay as they were), and, idempotent on the host by design, each may start
#: again in the same deployment from any state: a manual rollback after the rollout's own undo,
#: a reconciliation (or an undo in it) interrupted by another restart.
UNDO_STEP = "undo"
RECONCILE_STEP = "reconcile"
RERUNNABLE_STEPS: frozenset[str] = frozenset({UNDO_STEP, RECONCILE_STEP})


HOST_TRANSITIONS: dict[HostOutcome, frozenset[HostOutcome]] = {
    H.PENDING: frozenset({H.RUNNING, H.FAILED}),
    H.RUNNING: frozenset({H.SUCCEEDED, H.FAILED, H.ROLLED_BACK, H.BROKEN}),
    **{t: frozenset({H.SUCCEEDED, H.FAILED, H.ROLLED_BACK})
       for t in (H.SUCCEEDED, H.FAILED, H.ROLLED_BACK, H.BROKEN)},
}
HOST_TERMINAL: frozenset[HostOutcome] = frozenset(
    {H.SUCCEEDED, H.FAILED, H.ROLLED_BACK, H.BROKEN})


def check_deployment_transition(old: DeploymentState, new: DeploymentState) -> None:
    if new not in DEPLOYMENT_TRANSITIONS[old]:
        raise InvalidTransition(f"deployment cannot go from {old} to {new}")


def check_step_transition(old: HostStepState | None, new: HostStepState,
                          step: str | None = None) -> None:
    """`old` is None for a step never recorded: it may start in any state but a terminal undo.
    A step of `RERUNNABLE_STEPS` may also start again (`running`) whatever its state."""
    if step in RERUNNABLE_STEPS and new is S.RUNNING:
        return
    if old is None:
        if new in (S.ROLLED_BACK,):
            raise InvalidTransition(f"a step cannot start as {new}")
        return
    if new not in STEP_TRANSITIONS[old]:
        raise InvalidTransition(f"step cannot go from {old} to {new}")


def check_host_transition(old: HostOutcome, new: HostOutcome) -> None:
    if new not in HOST_TRANSITIONS[old]:
        raise InvalidTransition(f"host cannot go from {old} to {new}")


class StateStore(Protocol):
    """What `change_*_state` needs of the store: atomic check-and-set, returning the old state."""

    def transition_deployment(
        self, deployment: str, new: DeploymentState, *, result: dict[str, Any] | None = None
    ) -> DeploymentState: ...

    def transition_step(
        self, deployment: str, host: str, step: str, new: HostStepState, *,
        detail: dict[str, Any] | None = None,
    ) -> HostStepState | None: ...


#: The sink of state changes is the one event sink (orchestrator.core.sink).
StateSink = EventSink


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
    detail: dict[str, Any] | None = None, event: str = "step", level: str | None = None,
    extra: dict[str, Any] | None = None,
) -> HostStepState | None:
    """Check, persist, then emit `{"event": "step", "host", "step", "status": new, ...}`.

    `detail` (and `reason`) are persisted with the step and emitted; `extra` is only emitted (a
    step's outcome details: what it did, for the log, not the step's record). A recovery action
    (abort-stage, mark-bad, rollback, recheck) is a step too, emitted as `event="recovery"`."""
    record = dict(detail or {})
    if reason:
        record["reason"] = reason
    old = store.transition_step(deployment, host, step, new, detail=record or None)
    if level is None:
        level = "error" if new is S.FAILED else "info"
    sink.emit(
        event, host=host, step=step, status=event_status(event, new), duration_ms=duration_ms,
        level=level, **{**(extra or {}), **record},
    )
    return old


def event_status(event: str, new: HostStepState) -> str:
    """The `status` word of a step's state change in the event stream: the state's name, but
    the intent of a recovery action, which its events have always called "started" (users'
    scripts read these words: DESIGN.md "Events")."""
    if event == "recovery" and new is S.RUNNING:
        return "started"
    return str(new)


#: The events `change_host_state` emits: readers (the web UI) match these names, never spell them.
HOST_STARTED, HOST_FINISHED = "host.started", "host.finished"


def change_host_state(
    sink: EventSink, host: str, old: HostOutcome, new: HostOutcome, **details: Any,
) -> HostOutcome:
    """Check a host's outcome transition, then emit it: `host.started` (status "started") for
    RUNNING, `host.finished` (status the outcome) for every other state. Returns `new`: the
    caller's result keeps it (a host's outcome lives in its deployment's result, not a store)."""
    check_host_transition(old, new)
    if new is H.RUNNING:
        sink.emit(HOST_STARTED, host=host, status="started", **details)
    else:
        level = "info" if new is H.SUCCEEDED else "error"
        sink.emit(HOST_FINISHED, host=host, status=new.value, level=level, **details)
    return new
