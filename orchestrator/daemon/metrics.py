"""The daemon's Prometheus metrics, served at `GET /metrics` (text exposition format).

One registry per daemon (never prometheus-client's global one: two services in one process, as in
the tests, must not share figures). Everything is derived in one place: `Metrics.observe(event)`
sees every event the service's sinks publish (`sinks.ObservedSink`), so no step or runner calls
a metric itself. Host status is read from the store at scrape time, since re-verification and
`orchestrator verify` record it there.

- `orchestrator_deployments{state}` gauge: seeded from the store, then `deployment` events;
- `orchestrator_step_duration_seconds{step, status}` histogram: `step` events with a duration;
- `orchestrator_verifications_total{app, kind, result}` counter: `verify` step outcomes (kind
  `deploy`, result passed/failed), `reverify` events of a host (kind `reverify`, its status);
- `orchestrator_warmup_latency_seconds{app, host, percentile}` gauge: the last passing `verify`
  step's p50/p95/p99 (`percentile` is `p50`, `p95` or `p99`: a `quantile` label belongs to a
  Summary, and Prometheus tooling treats it as one);
- `orchestrator_rollbacks_total{app}` counter: `recovery` events of step `rollback` (the
  pipeline's) or `undo` (a switched host put back) that worked, and `reverify.rollback` events
  that did (`reverify.on_failure: rollback`);
- `orchestrator_host_status{host, status}` gauge: 1 for each host's last recorded status;
- `orchestrator_gpu_*{host, gpu, uuid}` per-GPU health gauges (orchestrator/daemon/gpumetrics.py).
- `orchestrator_build_info{version, python}` gauge, always 1 (join on it to see which version
  produced a figure);
- `process_*` (CPU seconds, resident memory, open fds, start time) and `python_info`: the
  client's own process and platform collectors, registered on this registry.

No `_created` series: prometheus-client's `disable_created_metrics()` is a process-wide switch,
turned off here once; the daemon's counters start at its start (`process_start_time_seconds`).
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from orchestrator import __version__
from orchestrator.core.states import UNDO_STEP, DeploymentState
from orchestrator.daemon.gpumetrics import GpuHealthCollector
from orchestrator.daemon.store import Store
from orchestrator.errors import NotFound

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: From a cached redeploy's switch (tens of ms) to a cold TensorFlow install (minutes).
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
HOST_STATUSES = ("healthy", "degraded", "failed", "unreachable")
PERCENTILES = {"p50_ms": "p50", "p95_ms": "p95", "p99_ms": "p99"}


class HostStatusCollector(Collector):
    """`orchestrator_host_status{host, status}`: 1 for each host's last recorded status."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("orchestrator_host_status", "Each host's status at its last "
                                   "probe or re-verification (1 for the current one)",
                                   labels=["host", "status"])
        for record in self.store.hosts():
            for status in HOST_STATUSES:
                family.add_metric([record["host"], status],
                                  1.0 if record["status"] == status else 0.0)
        yield family


class Metrics:
    def __init__(self, store: Store) -> None:
        self.store = store
        # Every series' `_created` twin doubles the exposition and no dashboard reads it.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
        self.registry = CollectorRegistry(auto_describe=True)
        self._apps: dict[str, str] = {}
        self._lock = threading.Lock()
        r = self.registry
        self.deployments = Gauge("orchestrator_deployments", "Deployments by state",
                                 ["state"], registry=r)
        self.step_seconds = Histogram("orchestrator_step_duration_seconds",
                                      "Duration of each host pipeline step",
                                      ["step", "status"], buckets=STEP_BUCKETS, registry=r)
        self.verifications = Counter("orchestrator_verifications",
                                     "Verification results: the verify step of a deploy, and "
                                     "re-verification of hosts", ["app", "kind", "result"],
                                     registry=r)
        self.latency = Gauge("orchestrator_warmup_latency_seconds", "Warmup latency percentiles "
                             "of the last passing verify step", ["app", "host", "percentile"],
                             registry=r)
        self.rollbacks = Counter("orchestrator_rollbacks", "Hosts switched back to their "
                                 "previous release (automatic, rollout stop, or by request)",
                                 ["app"], registry=r)
        r.register(HostStatusCollector(store))
        r.register(GpuHealthCollector(store))
        build = Gauge("orchestrator_build_info", "The orchestrator's version (always 1)",
                      ["version", "python"], registry=r)
        build.labels(__version__, platform.python_version()).set(1)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self._seed()

    def _seed(self) -> None:
        """Deployments by state as the store has them when the daemon starts."""
        for state in DeploymentState:
            count = len(self.store.list_deployments(states=frozenset({state}), limit=1 << 30))
            self.deployments.labels(str(state)).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- the one place figures change --------------------------------------------------------

    def observe(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "deployment":
            self._deployment(event)
        elif kind == "step":
            self._step(event)
        elif kind == "recovery":
            # The pipeline's own rollback, or the undo of a switched host: either puts a host
            # back on its previous release.
            if event.get("step") in ("rollback", UNDO_STEP) and event.get("status") == "ok":
                self.rollbacks.labels(self.app_of(event)).inc()
        elif kind == "reverify.rollback" and event.get("status") == "ok":
            self.rollbacks.labels(self.app_of(event)).inc()  # `reverify.on_failure: rollback`
        elif kind == "reverify" and event.get("host") and event.get("status") in HOST_STATUSES:
            self.verifications.labels(self.app_of(event), "reverify", event["status"]).inc()

    def _deployment(self, event: dict[str, Any]) -> None:
        status, old = event.get("status"), event.get("from")
        if status not in set(DeploymentState):
            return  # e.g. "interrupted": a note, not a state change
        if old in set(DeploymentState):
            self.deployments.labels(old).dec()
        self.deployments.labels(status).inc()

    def _step(self, event: dict[str, Any]) -> None:
        status, step = event.get("status"), event.get("step")
        if step is None or status not in ("ok", "failed"):
            return
        if event.get("duration_ms") is not None:
            self.step_seconds.labels(step, status).observe(float(event["duration_ms"]) / 1000.0)
        if step != "verify":
            return
        app = self.app_of(event)
        self.verifications.labels(app, "deploy", "passed" if status == "ok" else "failed").inc()
        if status == "ok" and event.get("host"):
            for key, percentile in PERCENTILES.items():
                if isinstance(event.get(key), (int, float)):
                    self.latency.labels(app, event["host"], percentile).set(event[key] / 1000.0)

    def app_of(self, event: dict[str, Any]) -> str:
        """The app of the event's deployment, remembered (one store read per deployment)."""
        deployment = str(event.get("deployment") or "")
        with self._lock:
            app = self._apps.get(deployment)
        if app is None:
            try:
                app = event.get("app") or self.store.get_deployment(deployment).app
            except NotFound:
                app = "unknown"
            with self._lock:
                self._apps[deployment] = str(app)
        return str(app)
