"""`EventSink`: the one protocol of whatever receives the events of DESIGN.md "Events" (and
`StepSink`, the same with step states kept).

A leaf (it imports nothing of the orchestrator): the pipeline, recovery, the rollout, the state
functions of orchestrator.core.states and the daemon's sinks all name this protocol, so a sink
written for one is accepted by all. `emit` may return the event it recorded (the daemon's sinks
do) or nothing (a test's list); callers never rely on the value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # states imports this module; the name is only needed by the type checker
    from orchestrator.core.states import HostStepState


class EventSink(Protocol):
    """Receives one structured event per state change: `{"event", "host", "step", "status",
    "duration_ms", "level", ...details}` (the sink adds `ts` and `deployment`)."""

    def emit(
        self, event: str, *, host: str | None = None, step: str | None = None,
        status: str | None = None, duration_ms: float | None = None, level: str = "info",
        **details: Any,
    ) -> object: ...


@runtime_checkable
class StepSink(EventSink, Protocol):
    """A sink that also keeps step states (the daemon's): `step` checks the transition, persists
    it and emits its event, through `orchestrator.core.states.change_step_state`. The pipeline
    reports its steps and recovery actions through `step` when its sink has it."""

    def step(
        self, host: str, step: str, state: HostStepState, *, duration_ms: float | None = None,
        reason: str | None = None, detail: dict[str, Any] | None = None, event: str = "step",
        level: str | None = None, extra: dict[str, Any] | None = None,
    ) -> None: ...
