"""GPU health facts: what the probe's `orchestrator/hosts/remote/probe_gpu.py` reported per GPU
and the host's Xid events, as typed values, and their bounded parsers (a host is untrusted input:
every number is range-checked, every list and string bounded, a wrong type is an error).

Probe JSON, per GPU under `"health"` (every value may be null: not supported by this GPU or
driver, or the NVML call failed, then `errors[field]` names the NVML error):
    {"ecc_mode": bool, "ecc_{volatile,aggregate}_{corrected,uncorrected}": int,
     "retired_sbe": int, "retired_dbe": int, "retired_pending": bool,
     "remap_correctable": int, "remap_uncorrectable": int, "remap_pending": bool,
     "remap_failure": bool, "throttle_reasons": int (nvmlClocksEventReasons bits),
     "temperature_c": int, "slowdown_temp_c": int, "power_mw": int, "power_limit_mw": int,
     "persistence": bool, "mig_mode": bool, "mig_devices": int,
     "mig_instances": [{"uuid": "MIG-...", "profile": "1g.10gb", "memory_total_bytes": int,
                        "memory_free_bytes": int, "gi": int | null, "ci": int | null}]
         (in MIG mode: the MIG devices CUDA can be given, at most 64),
     "processes": [{"pid": int, "used_memory_bytes": int | null}] (at most 16), "process_count",
     "pcie_gen", "pcie_max_gen", "pcie_width", "pcie_max_width": int, "pci_bus_id": str,
     "errors": {field: "NVMLError_..."}}
Per host, `"xid"`: {"source": "journalctl" | "kmsg" | "file" | null, "error": str | null,
    "events": [{"time": unix seconds, "age_s": seconds before the probe (host clock),
                "pci": "0000:3b:00", "code": int, "text": str}]}
Older probes sent neither: every field is then None ("not reported"), never a failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

MAX_LIST = 64
MAX_TEXT = 256
MAX_COUNT = (1 << 63) - 1

# nvmlClocksEventReasons bits that mean the GPU is slowed down by heat or by power.
THROTTLE_BITS = {
    0x4: "software power cap",
    0x8: "hardware slowdown",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "hardware power brake",
}
THERMAL_BITS = 0x20 | 0x40
POWER_BITS = 0x4 | 0x8 | 0x80


@dataclass(frozen=True)
class Process:
    pid: int
    used_memory_bytes: int | None


#: A MIG profile name as NVML's MIG device name ends: "1g.10gb", "1c.2g.20gb", "1g.10gb+me".
MIG_PROFILE = re.compile(r"^(\d{1,2}c\.)?\d{1,2}g\.\d{1,4}gb(\+[a-z]{1,8})?$")


@dataclass(frozen=True)
class MigInstance:
    """One MIG device of a GPU in MIG mode: what CUDA_VISIBLE_DEVICES names (by its MIG UUID)."""

    uuid: str
    profile: str | None  # None: NVML's name did not say (then no gpu.mig_profile matches it)
    memory_total_bytes: int
    memory_free_bytes: int
    gi: int | None = None  # GPU instance id
    ci: int | None = None  # compute instance id


@dataclass(frozen=True)
class GpuHealth:
    ecc_mode: bool | None = None
    ecc_volatile_corrected: int | None = None
    ecc_volatile_uncorrected: int | None = None
    ecc_aggregate_corrected: int | None = None
    ecc_aggregate_uncorrected: int | None = None
    retired_sbe: int | None = None
    retired_dbe: int | None = None
    retired_pending: bool | None = None
    remap_correctable: int | None = None
    remap_uncorrectable: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    throttle_reasons: int | None = None
    temperature_c: int | None = None
    slowdown_temp_c: int | None = None
    power_mw: int | None = None
    power_limit_mw: int | None = None
    persistence: bool | None = None
    mig_mode: bool | None = None
    mig_devices: int | None = None
    process_count: int | None = None
    pcie_gen: int | None = None
    pcie_max_gen: int | None = None
    pcie_width: int | None = None
    pcie_max_width: int | None = None
    pci_bus_id: str | None = None
    processes: tuple[Process, ...] = ()
    mig_instances: tuple[MigInstance, ...] = ()
    errors: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def pci(self) -> str | None:
        """"0000:3b:00" (domain:bus:device, as the kernel's Xid lines name a GPU)."""
        return pci_key(self.pci_bus_id) if self.pci_bus_id else None

    def throttle_names(self, bits: int) -> list[str]:
        active = (self.throttle_reasons or 0) & bits
        return [name for bit, name in THROTTLE_BITS.items() if active & bit]


@dataclass(frozen=True)
class XidEvent:
    time: float
    age_s: int  # by the host's clock, at probe time
    pci: str
    code: int
    text: str


@dataclass(frozen=True)
class XidFacts:
    source: str | None = None
    error: str | None = None
    events: tuple[XidEvent, ...] = ()
    reported: bool = False  # False: an older probe, nothing known


_BOOLS = {"ecc_mode", "retired_pending", "remap_pending", "remap_failure", "persistence",
          "mig_mode"}
_INT_RANGE = {"temperature_c": (-273, 1000), "slowdown_temp_c": (-273, 1000)}


def parse_health(data: object) -> GpuHealth:
    """The `health` object of one GPU; None or absent: nothing reported."""
    if data is None:
        return GpuHealth()
    obj = _dict(data, "health")
    values: dict[str, Any] = {}
    for f in fields(GpuHealth):
        raw = obj.get(f.name)
        if f.name == "processes":
            values[f.name] = tuple(_process(p) for p in _list(raw or [], "processes"))
        elif f.name == "mig_instances":
            values[f.name] = tuple(_mig(m) for m in _list(raw or [], "mig_instances"))
        elif f.name == "errors":
            errors = _dict(raw or {}, "errors")
            if len(errors) > MAX_LIST:
                raise ValueError(f"health.errors has {len(errors)} entries")
            values[f.name] = {_text(k, "errors key"): _text(v, "errors value")
                              for k, v in errors.items()}
        elif raw is None:
            values[f.name] = None
        elif f.name in _BOOLS:
            if not isinstance(raw, bool):
                raise ValueError(f"health.{f.name} is not a boolean: {raw!r:.40}")
            values[f.name] = raw
        elif f.name == "pci_bus_id":
            values[f.name] = _text(raw, "pci_bus_id")
        else:
            lo, hi = _INT_RANGE.get(f.name, (0, MAX_COUNT))
            values[f.name] = _int(raw, f"health.{f.name}", lo, hi)
    return GpuHealth(**values)


def parse_xid(data: object) -> XidFacts:
    if data is None:
        return XidFacts()
    obj = _dict(data, "xid")
    source, error = obj.get("source"), obj.get("error")
    events = tuple(
        XidEvent(time=_float(e.get("time"), "xid.time"),
                 age_s=_int(e.get("age_s"), "xid.age_s", 0, MAX_COUNT),
                 pci=pci_key(_text(e.get("pci"), "pci")),
                 code=_int(e.get("code"), "xid.code", 0, 1 << 16),
                 text=_text(e.get("text", ""), "xid.text"))
        for e in (_dict(x, "xid event") for x in _list(obj.get("events") or [], "xid.events")))
    return XidFacts(source=None if source is None else _text(source, "xid.source"),
                    error=None if error is None else _text(error, "xid.error"),
                    events=events, reported=True)


def pci_key(bus_id: str) -> str:
    """"00000000:3B:00.0" or "0000:3b:00" -> "0000:3b:00"."""
    parts = bus_id.lower().split(":")
    if len(parts) != 3:
        raise ValueError(f"PCI bus id {bus_id!r:.40} is not domain:bus:device")
    return f"{parts[0][-4:]}:{parts[1]}:{parts[2].split('.')[0]}"


def _process(data: object) -> Process:
    obj = _dict(data, "process")
    used = obj.get("used_memory_bytes")
    return Process(_int(obj.get("pid"), "process.pid", 0, 1 << 32),
                   None if used is None else _int(used, "process.used_memory_bytes", 0, MAX_COUNT))


def _mig(data: object) -> MigInstance:
    obj = _dict(data, "mig instance")
    profile = obj.get("profile")
    if profile is not None and not MIG_PROFILE.match(_text(profile, "mig.profile")):
        raise ValueError(f"mig.profile is not a MIG profile name: {profile!r:.40}")
    ids = {k: None if obj.get(k) is None else _int(obj.get(k), f"mig.{k}", 0, 1 << 16)
           for k in ("gi", "ci")}
    return MigInstance(uuid=_text(obj.get("uuid"), "mig.uuid"), profile=profile,
                       memory_total_bytes=_int(obj.get("memory_total_bytes"),
                                               "mig.memory_total_bytes", 0, MAX_COUNT),
                       memory_free_bytes=_int(obj.get("memory_free_bytes"),
                                              "mig.memory_free_bytes", 0, MAX_COUNT), **ids)


def _dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not an object")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what} is not a list")
    if len(value) > MAX_LIST:
        raise ValueError(f"{what} has {len(value)} entries, more than {MAX_LIST}")
    return value


def _int(value: object, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{what} is not an integer in [{lo}, {hi}]: {value!r:.40}")
    return value


def _float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e11:
        raise ValueError(f"{what} is not a unix time: {value!r:.40}")
    return float(value)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError(f"{what} is not a string of at most {MAX_TEXT} characters")
    return value
