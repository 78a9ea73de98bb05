"""The per-host pipeline engine: run the playbook's steps in order on one host, and recover.

The engine knows nothing about SSH, models or venvs: it drives a `HostSteps` object (the real one
is `orchestrator.deploy.steps.host.HostDeploy`; tests also drive an in-memory fake) and an event
sink. Before each step it emits an intent (`status="started"`), after it an outcome (`"ok"` or
`"failed"`, with `duration_ms` and the step's details), so a daemon killed at any point knows what
was under way.

What to do after a failure is a pure function, `decide(Situation) -> Decision`, tested from a
table: before `switch` the staged release is removed (abort-stage) and `current` never moved; at or
after `switch` the host goes back to its previous good release (one automatic rollback at most per
deployment), the new release is marked bad, and if the previous release then fails its check too,
the engine stops and says so.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.core.sink import EventSink, StepSink
from orchestrator.core.states import (
    HostOutcome,
    HostStepState,
    change_host_state,
    check_step_transition,
)
from orchestrator.deploy.deadline import RECOVERY_TIMEOUT_S, Deadline
from orchestrator.deploy.playbook import OnFailure, Playbook, PlaybookStep
from orchestrator.errors import CommandTimeout, HostUnreachable, OrchestratorError

#: Keys of an event that a step's details must not overwrite.
_RESERVED = frozenset({"event", "host", "step", "status", "duration_ms", "level", "ts",
                       "deployment"})

__all__ = ["RECOVERY_TIMEOUT_S", "Deadline", "EventSink", "HostResult", "HostStatus",
           "HostSteps", "Pipeline", "StepReporter", "decide"]
class HostSteps(Protocol):
    """The host-side actions the engine drives. Each raises OrchestratorError on failure."""

    host: str

    def run(self, name: str, deadline: Deadline) -> Mapping[str, Any]:
        """Run one playbook step; returns details for the outcome event."""
        ...

    def has_previous(self) -> bool:
        """Whether a previous good release exists to roll back to."""
        ...

    def abort_stage(self, deadline: Deadline) -> Mapping[str, Any]: ...

    def rollback(self, deadline: Deadline) -> Mapping[str, Any]:
        """Point `current` back at the previous good release and restart the service."""
        ...

    def mark_bad(self, deadline: Deadline) -> Mapping[str, Any]: ...

    def recheck(self, deadline: Deadline) -> Mapping[str, Any]:
        """The health check again, of whatever serves after a rollback."""
        ...


# -- the pure decision -------------------------------------------------------------------------

class Failure(enum.StrEnum):
    STEP = "step"          # a playbook step failed
    ABORT = "abort"        # abort-stage itself failed
    ROLLBACK = "rollback"  # rolling back itself failed
    RECHECK = "recheck"    # the previous release failed its check after the rollback


class Action(enum.StrEnum):
    CONTINUE = "continue"        # report a warning and go on
    ABORT_STAGE = "abort-stage"  # remove the staged release; `current` never moved
    ROLLBACK = "rollback"        # `current` back to the previous good release, new one marked bad
    STOP = "stop"                # nothing more to do automatically: report


#: A host's outcome: the state machine of orchestrator.core.states (one vocabulary, one table).
HostStatus = HostOutcome


@dataclass(frozen=True)
class Situation:
    failure: Failure
    on_failure: OnFailure | None = None
    has_previous: bool = True
    rollbacks_done: int = 0


@dataclass(frozen=True)
class Decision:
    action: Action
    status: HostStatus  # the host's final status once the action has succeeded
    reason: str


def decide(s: Situation) -> Decision:
    """What to do after a failure. Pure: tested from a table."""
    if s.failure is Failure.ABORT:
        return Decision(Action.STOP, HostStatus.FAILED,
                        "abort-stage failed: `current` untouched, staged files may remain")
    if s.failure is Failure.ROLLBACK:
        return Decision(Action.STOP, HostStatus.BROKEN, "rollback failed: host needs attention")
    if s.failure is Failure.RECHECK:
        return Decision(Action.STOP, HostStatus.BROKEN,
                        "the previous release failed its check too: stopped, host needs attention")
    if s.on_failure is OnFailure.WARN:
        return Decision(Action.CONTINUE, HostStatus.SUCCEEDED, "failure reported as a warning")
    if s.on_failure is OnFailure.ABORT_STAGE:
        return Decision(Action.ABORT_STAGE, HostStatus.FAILED,
                        "failed before switch: staged release removed, `current` unchanged")
    if s.rollbacks_done >= 1:
        return Decision(Action.STOP, HostStatus.BROKEN,
                        "at most one automatic rollback per deployment: stopped")
    if not s.has_previous:
        return Decision(Action.STOP, HostStatus.BROKEN,
                        "no previous good release to roll back to: new release marked bad")
    return Decision(Action.ROLLBACK, HostStatus.ROLLED_BACK,
                    "failed after switch: rolled back to the previous good release")


# -- the engine ---------------------------------------------------------------------------------

@dataclass
class StepRecord:
    name: str
    status: HostStepState  # ok | failed
    duration_ms: float
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    kind: str | None = None  # the error's class name: "HostUnreachable", "CommandFailed", ...
    unreachable: bool = False  # the error was a HostUnreachable: the connection is gone


@dataclass
class HostResult:
    host: str
    status: HostStatus
    reason: str | None = None
    failed_step: str | None = None
    error: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status is HostStatus.SUCCEEDED

    def timings(self) -> dict[str, float]:
        return {r.name: r.duration_ms for r in self.steps}

    @property
    def connection_lost(self) -> bool:
        """Whether a step or a recovery action failed because the host could not be reached
        (then nothing after it could be done on that connection)."""
        return any(r.unreachable for r in self.steps)

    def settle(self, sink: EventSink, new: HostStatus, reason: str | None = None,
               **details: Any) -> None:
        """The one way a host's outcome changes: checked against the host state machine,
        kept here, emitted (`host.started` / `host.finished`) by `states.change_host_state`."""
        extra = details if new is HostStatus.RUNNING else {"reason": reason, **details}
        self.status = change_host_state(sink, self.host, self.status, new, **extra)
        if new is not HostStatus.RUNNING:
            self.reason = reason


class StepReporter:
    """How the pipeline reports a step's (or a recovery action's) state change: through the
    sink's `step` (the daemon's: checked, persisted and emitted by `change_step_state`), or,
    for a plain event sink, checked here against the same table and emitted with the words the
    standalone logs have always used ("started" for an intent)."""

    def __init__(self, sink: EventSink, host: str) -> None:
        self.sink, self.host = sink, host
        self._states: dict[tuple[str, str], HostStepState] = {}

    def change(self, step: str, new: HostStepState, *, event: str = "step",
               duration_ms: float | None = None, level: str | None = None,
               reason: str | None = None, extra: dict[str, Any] | None = None) -> None:
        if isinstance(self.sink, StepSink):
            self.sink.step(self.host, step, new, duration_ms=duration_ms, reason=reason,
                           event=event, level=level, extra=extra)
            return
        check_step_transition(self._states.get((event, step)), new, step)
        self._states[(event, step)] = new
        word = "started" if new is HostStepState.RUNNING else str(new)
        self.sink.emit(event, host=self.host, step=step, status=word, duration_ms=duration_ms,
                       level=level or ("error" if new is HostStepState.FAILED else "info"),
                       **(extra or {}))


class Pipeline:
    """Runs a playbook on one host through a HostSteps object, emitting every state change."""

    def __init__(self, playbook: Playbook, steps: HostSteps, sink: EventSink, *,
                 cancel: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.playbook, self.steps, self.sink = playbook, steps, sink
        self.cancel = cancel
        self.clock = clock
        self.host = steps.host
        self.result = HostResult(self.host, HostStatus.PENDING)
        self.report = StepReporter(sink, self.host)
        self._rollbacks = 0
        # The outcome decided so far (the host's state changes once, when the pipeline ends).
        self._outcome: tuple[HostStatus, str | None] = (HostStatus.SUCCEEDED, None)

    def run(self) -> HostResult:
        self.result.settle(self.sink, HostStatus.RUNNING, steps=list(self.playbook.names))
        for step in self.playbook.steps:
            if step.before_switch and self.cancel is not None and self.cancel.is_set():
                # Cancellation only takes effect before the switch: after it, finishing (or
                # rolling back) is the way to leave the host consistent.
                self._fail(step, "cancelled", "OrchestratorError")
                break
            error, kind, exc = self._step(step)
            if error is None:
                continue
            if self._fail(step, error, kind, exc):
                break
        self._finish()
        return self.result

    def _finish(self) -> None:
        status, reason = self._outcome
        self.result.settle(self.sink, status, reason, failed_step=self.result.failed_step,
                           timings_ms=self.result.timings())

    def _step(self, step: PlaybookStep) -> tuple[str | None, str, BaseException | None]:
        """Run one step with intent and outcome events; returns (error, kind, bug) on failure."""
        self.report.change(step.name, HostStepState.RUNNING, extra={"timeout_s": step.timeout_s})
        deadline = Deadline(self.host, step.name, step.timeout_s, self.clock)
        t0 = self.clock()
        try:
            details = dict(self.steps.run(step.name, deadline))
            if deadline.expired:
                raise CommandTimeout(self.host, f"step {step.name} exceeded its budget of "
                                                f"{step.timeout_s:g} s")
        except OrchestratorError as exc:
            return self._outcome_failed(step.name, t0, exc), type(exc).__name__, None
        except Exception as exc:  # a bug: recover the host first, then re-raise it
            return self._outcome_failed(step.name, t0, exc), type(exc).__name__, exc
        ms = _ms(self.clock() - t0)
        self.result.steps.append(StepRecord(step.name, HostStepState.OK, ms, details))
        self.report.change(step.name, HostStepState.OK, duration_ms=ms, extra=_safe(details))
        return None, "", None

    def _outcome_failed(self, name: str, t0: float, exc: BaseException) -> str:
        ms = _ms(self.clock() - t0)
        error = str(exc)
        self.result.steps.append(StepRecord(name, HostStepState.FAILED, ms, error=error,
                                            kind=type(exc).__name__,
                                            unreachable=isinstance(exc, HostUnreachable)))
        self.report.change(name, HostStepState.FAILED, duration_ms=ms, reason=error,
                           extra={"error": error, "kind": type(exc).__name__})
        return error

    def _fail(self, step: PlaybookStep, error: str, kind: str,
              bug: BaseException | None = None) -> bool:
        """Handle a failed step; returns True when the pipeline stops."""
        decision = decide(Situation(Failure.STEP, step.on_failure, self._has_previous(),
                                    self._rollbacks))
        if decision.action is Action.CONTINUE:
            self.result.warnings.append(f"{step.name}: {error}")
            if bug is not None:
                raise bug
            return False
        self.result.failed_step, self.result.error = step.name, error
        self._apply(decision, step)
        if bug is not None:
            self._finish()  # the host is settled: say so before the bug propagates
            raise bug
        return True

    def _apply(self, decision: Decision, step: PlaybookStep) -> None:
        self._settle(decision)
        if decision.action is Action.ABORT_STAGE:
            if not self._recover("abort-stage", self.steps.abort_stage):
                self._settle(decide(Situation(Failure.ABORT)))
        elif decision.action is Action.ROLLBACK:
            self._rollbacks += 1
            self._recover("mark-bad", self.steps.mark_bad)
            if not self._recover("rollback", self.steps.rollback):
                self._settle(decide(Situation(Failure.ROLLBACK)))
            elif "check" in self.playbook.names and not self._recover(
                    "recheck", self.steps.recheck, self.playbook.step("check").timeout_s):
                self._settle(decide(Situation(Failure.RECHECK)))
        elif decision.action is Action.STOP and not step.before_switch:
            self._recover("mark-bad", self.steps.mark_bad)

    def _settle(self, decision: Decision) -> None:
        self._outcome = (decision.status, decision.reason)

    def _recover(self, name: str, action: Callable[[Deadline], Mapping[str, Any]],
                 timeout_s: float = RECOVERY_TIMEOUT_S) -> bool:
        """Run one recovery action, a step row of its own (`recovery` events); never raises
        OrchestratorError."""
        self.report.change(name, HostStepState.RUNNING, event="recovery", level="warning",
                           reason=self.result.error, extra={"reason": self.result.error})
        t0 = self.clock()
        try:
            details = dict(action(Deadline(self.host, name, timeout_s, self.clock)))
        except OrchestratorError as exc:
            ms = _ms(self.clock() - t0)
            self.result.steps.append(StepRecord(name, HostStepState.FAILED, ms, error=str(exc),
                                                kind=type(exc).__name__,
                                                unreachable=isinstance(exc, HostUnreachable)))
            self.report.change(name, HostStepState.FAILED, event="recovery", duration_ms=ms,
                               level="error", reason=str(exc),
                               extra={"error": str(exc), "kind": type(exc).__name__})
            return False
        ms = _ms(self.clock() - t0)
        self.result.steps.append(StepRecord(name, HostStepState.OK, ms, details))
        self.report.change(name, HostStepState.OK, event="recovery", duration_ms=ms,
                           level="warning", extra=_safe(details))
        return True

    def _has_previous(self) -> bool:
        try:
            return self.steps.has_previous()
        except OrchestratorError:
            return False


def _safe(details: Mapping[str, Any]) -> dict[str, Any]:
    return {(f"detail_{k}" if k in _RESERVED else k): v for k, v in details.items()}


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)
