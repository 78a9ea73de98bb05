"""`EventSink`: the one protocol of whatever receives the events of DESIGN.md "Events".

A leaf (it imports nothing of the orchestrator): the pipeline, recovery, the rollout, the state
functions of orchestrator.core.states and the daemon's sinks all name this protocol, so a sink
written for one is accepted by all. `emit` may return the event it recorded (the daemon's sinks
do) or nothing (a test's list); callers never rely on the value.
"""

from __future__ import annotations

from typing import Any, Protocol


class EventSink(Protocol):
    """Receives one structured event per state change: `{"event", "host", "step", "status",
    "duration_ms", "level", ...details}` (the sink adds `ts` and `deployment`)."""

    def emit(
        self, event: str, *, host: str | None = None, step: str | None = None,
        status: str | None = None, duration_ms: float | None = None, level: str = "info",
        **details: Any,
    ) -> object: ...
