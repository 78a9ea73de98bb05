"""The daemon's periodic checks on the work in the store, apart from the service's own logic.

`check_progress` (every PROGRESS_CHECK_S): a deployment in flight that no worker owns (its
worker died) is reconciled, one silent for `progress_timeout_s` is stopped after its current step;
the re-verification schedule rides on the same tick. `heartbeat` (every third of `lease_ttl_s`):
this daemon's leases renewed, the deployments of the lost ones told to stop after their current
step (left in flight, for whoever holds them next), then `take_over` of the work no live daemon
holds: a lease that expired (its daemon died or lost the database) or was never taken (queued).

It sees the service through `Supervised` (the work, the store, the leases, and one way to stop a
worker), not its internals: the service calls these functions, they never reach into it.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import structlog

from orchestrator.core.states import DEPLOYMENT_IN_FLIGHT, DeploymentState
from orchestrator.daemon.config import DaemonConfig
from orchestrator.daemon.leases import DEPLOYMENT, Leases
from orchestrator.daemon.sinks import ServiceSink
from orchestrator.daemon.store import DeploymentRecord, Store

log = structlog.get_logger("orchestrator.daemon.watchdog")
D = DeploymentState


class Supervised(Protocol):
    """What the watchdog needs of the service (orchestrator/daemon/service.py)."""

    config: DaemonConfig
    store: Store
    leases: Leases
    stopping: threading.Event
    reverifier: Any  # daemon/reverifier.py's Reverifier (its `tick`), or None

    def sink(self, deployment: str) -> ServiceSink: ...
    def works_on(self, deployment: str) -> bool: ...
    def stop_worker(self, deployment: str, why: str) -> bool: ...
    def take_over(self, record: DeploymentRecord) -> None: ...
    def reconcile(self, record: DeploymentRecord) -> None: ...


#: `take_over` (the heartbeat) and the orphan check (`check_progress`) run on different threads
#: and may both find one deployment unheld: the first to claim it works it, the other sees it
#: held by this daemon and leaves it (a second resume beside the first would race it).
_claiming = threading.Lock()


def _claim_unheld(service: Supervised, deployment: str) -> int | None:
    """The lease's token, claimed now, unless this daemon already holds or works it."""
    with _claiming:
        if (service.works_on(deployment)
                or service.leases.token(DEPLOYMENT, deployment) is not None):
            return None
        return service.leases.claim(DEPLOYMENT, deployment)


def take_over(service: Supervised) -> list[str]:
    """Claim and work every deployment, in flight or queued, that no live daemon holds (oldest
    first); returns them. At start this is crash recovery; on the tick, another's takeover."""
    taken = []
    for record in sorted(service.store.list_deployments(
            states=DEPLOYMENT_IN_FLIGHT | {D.QUEUED}, limit=1 << 30), key=lambda r: r.created):
        if service.stopping.is_set():
            continue
        token = _claim_unheld(service, record.id)
        if token is None:
            continue
        record = service.store.get_deployment(record.id)  # as of the claim
        if record.state is not D.QUEUED:  # another daemon's (or this one's last process's)
            service.sink(record.id).emit("lease", status="taken", level="warning",
                                         owner=service.leases.owner, token=token,
                                         state=str(record.state))
        service.take_over(record)
        taken.append(record.id)
    return taken


def heartbeat(service: Supervised) -> list[str]:
    """Renew; stop what was lost; take over what expired. Returns the deployments taken."""
    for kind, key in service.leases.heartbeat():
        if kind != DEPLOYMENT:
            continue
        log.error("lease lost", deployment=key, owner=service.leases.owner)
        service.stop_worker(key, "lease")  # the rollout starts no further step
    if service.stopping.is_set():
        return []
    return take_over(service)


def check_progress(service: Supervised, now: float, *, orphan_after_s: float = 30.0) -> list[str]:
    """The daemon's own watchdog, run periodically: a deployment in flight in the store that
    no worker owns (its worker died) is reconciled; one whose worker has emitted nothing
    for `progress_timeout_s` is told to stop after its current step, with an event. Returns
    the deployments acted on."""
    acted = []
    in_flight = service.store.list_deployments(states=DEPLOYMENT_IN_FLIGHT, limit=1 << 30)
    for record in in_flight:
        owned = service.works_on(record.id)
        stalled = owned and record.state is not D.PAUSED  # a pause waits for a person
        if (not owned and not service.stopping.is_set() and now - record.updated > orphan_after_s
            and _claim_unheld(service, record.id) is not None):  # not another's, nor taken
            service.sink(record.id).emit("watchdog", status="orphaned", level="error",
                                      reason="no worker owns this deployment")
            try:
                service.reconcile(record)
            finally:
                service.leases.release(DEPLOYMENT, record.id)
            acted.append(record.id)
        elif stalled:
            last = service.store.last_event_ts(record.id) or record.updated
            if (now - last > service.config.progress_timeout_s
                    and service.stop_worker(record.id, "stall")):  # once
                service.sink(record.id).emit(
                    "watchdog", status="stalled", level="error",
                    reason=f"no progress for {now - last:.0f} s "
                           f"(progress_timeout_s {service.config.progress_timeout_s:g}); "
                           "stopping after the current step")
                acted.append(record.id)
    if service.reverifier is not None and not service.stopping.is_set():
        try:  # the schedule of `reverify.every` rides on this periodic tick
            service.reverifier.tick(now)
        except Exception:  # a bug in scheduling must not stop the watchdog
            log.exception("re-verification schedule failed")
    return acted
