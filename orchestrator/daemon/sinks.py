"""The daemon's sinks of one deployment: what the service hands a runner (`ServiceSink`: events,
step states and host facts) and the plain sink under it (`ObservedSink`: events, each also shown
to the metrics).

Apart from the service (orchestrator/daemon/service.py: the queue, the workers, the user actions)
because a sink is what every writer of a deployment's events holds: the runners, the reverifier,
reconciliation. A step's state changes only through `ServiceSink.step`
(`states.change_step_state`); nothing here reads a state from an event's words.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator.core.states import HostStepState, change_step_state
from orchestrator.daemon.events import DeploymentSink, EventHub
from orchestrator.daemon.runners.base import HostCheck
from orchestrator.errors import StoreUnavailable


class ObservedSink(DeploymentSink):
    """A plain sink whose every published event is also shown to `observe` (the metrics): every
    event of a deployment passes here, whether from `emit` or from a state change."""

    def __init__(self, hub: EventHub, deployment: str,
                 observe: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(hub, deployment)
        self._observe = observe

    def emit(
        self, event: str, *, host: str | None = None, step: str | None = None,
        status: str | None = None, duration_ms: float | None = None, level: str = "info",
        **details: Any,
    ) -> dict[str, Any]:
        record = super().emit(event, host=host, step=step, status=status,
                              duration_ms=duration_ms, level=level, **details)
        if self._observe is not None:
            self._observe(record)
        return record


class ServiceSink(DeploymentSink):
    """The `RunSink` a runner gets: events, step states and host facts of one deployment.

    A step's state changes only through `step` (`change_step_state`: checked, persisted,
    emitted); `emit` records an event and nothing else, whatever its name, so no state is ever
    guessed from an event's words.

    A write the store refuses as unavailable (the database is down or cut off) sets
    `store_lost` and the worker's `cancel`: its rollout starts nothing more on a host (every
    step writes its intent first, so none can start unrecorded), and whatever outcome the runner
    then reports is not the deployment's; it stays in flight for the next lease holder."""

    def __init__(self, hub: EventHub, deployment: str,
                 observe: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(hub, deployment)
        self.store = hub.store
        self.fence: int | None = None  # the lease's fencing token, sent to hosts (runners)
        self.cancel: threading.Event | None = None  # the worker's, set when the store is lost
        self.store_lost = False
        self._plain = ObservedSink(hub, deployment, observe)

    def step(self, host: str, step: str, state: HostStepState, *,
             duration_ms: float | None = None, reason: str | None = None,
             detail: dict[str, Any] | None = None, event: str = "step",
             level: str | None = None, extra: dict[str, Any] | None = None) -> None:
        with self._watched():
                change_step_state(self.store, self._plain, self.deployment, host, step, state,
                              duration_ms=duration_ms, reason=reason, detail=detail,
                              event=event, level=level, extra=extra)

    def emit(
        self, event: str, *, host: str | None = None, step: str | None = None,
        status: str | None = None, duration_ms: float | None = None, level: str = "info",
        **details: Any,
    ) -> dict[str, Any]:
        with self._watched():
            return self._plain.emit(event, host=host, step=step, status=status,
                                    duration_ms=duration_ms, level=level, **details)

    @contextmanager
    def _watched(self) -> Iterator[None]:
        try:
            yield
        except StoreUnavailable:
            self.store_lost = True
            if self.cancel is not None:
                self.cancel.set()
            raise

    def record_host(self, check: HostCheck) -> None:
        self.store.record_host(check.host, check.status, check.reasons, check.facts)
