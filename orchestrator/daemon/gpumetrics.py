"""Per-GPU health gauges for `/metrics`, read from each host's last recorded facts at scrape time
(the probe, a deployment's or re-verification's, records them in the store). A separate collector
so orchestrator/daemon/metrics.py only registers it. Labels: host, gpu (index), uuid.

- `orchestrator_gpu_sick` 1 when placement would pass the GPU over for its health
  (orchestrator/core/gpuhealth.py, default gpu.health: uncorrectable ECC, pending
  retirement/remap, remap failure, recent Xid). MIG mode is not sickness: whether it suits
  depends on each spec's gpu.mig_profile, which a fleet-wide gauge cannot know;
- `orchestrator_gpu_ecc_errors{counter}` the volatile (since reset) corrected/uncorrected counts;
- `orchestrator_gpu_reset_pending` 1 when a page retirement or row remap waits for a reset;
- `orchestrator_gpu_throttled` 1 when thermal or power slowdown holds the clocks down;
- `orchestrator_gpu_temperature_celsius`, `orchestrator_gpu_power_watts`;
- `orchestrator_gpu_xid_events` Xid events of the last 24 h the kernel logged for the GPU.
A GPU whose driver did not report a counter (Not Supported) has no sample for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from orchestrator.core import gpuhealth
from orchestrator.core.facts import HostFacts, parse_facts
from orchestrator.core.gpufacts import POWER_BITS, THERMAL_BITS
from orchestrator.core.spec_gpu import GpuHealth
from orchestrator.daemon.store import Store
from orchestrator.errors import BadHostOutput

LABELS = ["host", "gpu", "uuid"]
DAY_S = 86400


class GpuHealthCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        def family(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=[*LABELS, *extra])

        sick = family("orchestrator_gpu_sick", "1: placement passes this GPU over")
        ecc = family("orchestrator_gpu_ecc_errors", "ECC errors since the last reset",
                     ("counter",))
        reset = family("orchestrator_gpu_reset_pending", "1: a page retirement or row remap "
                       "waits for a GPU reset")
        throttled = family("orchestrator_gpu_throttled", "1: thermal or power slowdown")
        temp = family("orchestrator_gpu_temperature_celsius", "GPU temperature")
        power = family("orchestrator_gpu_power_watts", "GPU power draw")
        xids = family("orchestrator_gpu_xid_events", "Xid events in the last 24 h")
        policy = GpuHealth(allow_mig=True)  # health only: MIG mode is each spec's choice
        for facts in self._facts():
            for g in facts.gpus:
                h, labels = g.health, [facts.host, str(g.index), g.uuid]
                sick.add_metric(labels, float(bool(gpuhealth.sick(facts, g, policy))))
                for counter, value in (("corrected", h.ecc_volatile_corrected),
                                       ("uncorrected", h.ecc_volatile_uncorrected)):
                    if value is not None:
                        ecc.add_metric([*labels, counter], float(value))
                if h.retired_pending is not None or h.remap_pending is not None:
                    reset.add_metric(labels, float(bool(h.retired_pending or h.remap_pending)))
                if h.throttle_reasons is not None:
                    throttled.add_metric(labels, float(bool(
                        h.throttle_names(THERMAL_BITS | POWER_BITS))))
                if h.temperature_c is not None:
                    temp.add_metric(labels, float(h.temperature_c))
                if h.power_mw is not None:
                    power.add_metric(labels, h.power_mw / 1000.0)
                if facts.xid.reported:
                    xids.add_metric(labels, float(sum(
                        1 for e in gpuhealth.xids_of(facts, g) if e.age_s <= DAY_S)))
        yield from (sick, ecc, reset, throttled, temp, power, xids)

    def _facts(self) -> Iterator[HostFacts]:
        for record in self.store.hosts():
            if not record.get("facts"):
                continue
            try:
                yield parse_facts(record["host"], json.dumps(record["facts"]))
            except BadHostOutput:
                continue  # recorded before a schema change, or garbage: no GPU figures
