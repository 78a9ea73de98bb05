"""GPU health, judged: which GPUs of a host are sick and why, what only warns, and which GPUs a
deployment is placed on. Pure: host facts and the spec's `gpu.health` (orchestrator/core/
spec_gpu.py) in, reasons and a placement out. The preflight checks (orchestrator/core/gpuchecks.py)
and re-verification (orchestrator/core/findings.py) report them.

Sick (never placed on; `sick`): uncorrectable ECC errors since the last reset above
`max_uncorrectable_ecc`, a page retirement or row remap pending (takes effect at the next reset),
a row remap failure, a recent Xid of `fail_xids`, and MIG mode unless `allow_mig` (or unless
the spec places on MIG instances, `gpu.mig_profile`: then a GPU not in MIG mode is passed over).
Warnings (`advisories`, each with the spec's fail/warn/ignore): thermal or power slowdown,
corrected ECC errors above `warn_corrected_ecc`, persistence mode off, PCIe link narrower than its
maximum, processes this deployment did not start. Every message names the GPU's index and UUID
and the counter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.core.facts import Gpu, HostFacts
from orchestrator.core.gpufacts import POWER_BITS, THERMAL_BITS, MigInstance, XidEvent
from orchestrator.core.spec_gpu import GpuHealth as Policy

GiB = 1 << 30
#: A GPU's or a MIG device's UUID: it goes into CUDA_VISIBLE_DEVICES (no commas, no spaces).
UUID = re.compile(r"^(GPU|MIG)-[0-9a-fA-F-]{8,64}$")


def label(g: Gpu) -> str:
    return f"GPU {g.index} ({g.uuid})"


def xids_of(facts: HostFacts, g: Gpu) -> list[XidEvent]:
    """The Xid events the kernel logged for this GPU (matched by PCI bus id)."""
    pci = g.health.pci
    return [e for e in facts.xid.events if pci is not None and e.pci == pci]


def sick(facts: HostFacts, g: Gpu, policy: Policy, mig_profile: str | None = None) -> list[str]:
    """Why this GPU must not be used (empty: it is healthy enough). MIG mode is a reason only
    for whole-GPU placement (no `mig_profile`): placement on MIG instances wants it."""
    h, out = g.health, []
    if h.ecc_volatile_uncorrected is not None and \
            h.ecc_volatile_uncorrected > policy.max_uncorrectable_ecc:
        out.append(f"{h.ecc_volatile_uncorrected} uncorrectable ECC error(s) since the last "
                   f"reset (ecc_volatile_uncorrected; gpu.health.max_uncorrectable_ecc "
                   f"{policy.max_uncorrectable_ecc}): reset the GPU, replace it if they recur")
    if h.retired_pending:
        out.append("a page retirement is pending (retired_pending; "
                   f"{h.retired_dbe or 0} double-bit page(s) retired): reset the GPU")
    if h.remap_pending:
        out.append(f"a row remap is pending (remap_pending; {h.remap_uncorrectable or 0} "
                   "uncorrectable row(s) remapped): reset the GPU to apply it")
    if h.remap_failure:
        out.append("row remapping failed (remap_failure): the GPU has no spare rows left; "
                   "replace it")
    window = policy.xid_window_h * 3600
    for e in xids_of(facts, g):
        if e.code in policy.fail_xids and e.age_s <= window:
            out.append(f"Xid {e.code} {_age(e.age_s)} ago (kernel log: {e.text[:120]})")
    if h.mig_mode and not policy.allow_mig and mig_profile is None:
        out.append(f"MIG mode is enabled ({h.mig_devices or 0} MIG device(s)"
                   f"{': ' + profiles_of(g) if h.mig_instances else ''}): CUDA sees MIG "
                   "devices, not the GPU; set gpu.mig_profile to place on them, disable MIG, "
                   "or set gpu.health.allow_mig: true")
    return out


def profiles_of(g: Gpu) -> str:
    """"3g.40gb, 1g.10gb x2": the MIG profiles a GPU is partitioned into."""
    names = [m.profile or "unknown profile" for m in g.health.mig_instances]
    return ", ".join(n if names.count(n) == 1 else f"{n} x{names.count(n)}"
                     for n in dict.fromkeys(names)) or "no MIG instance"


@dataclass(frozen=True)
class Advisory:
    """A condition that slows a model down: `advice` is the spec's fail, warn or ignore."""

    gpu: Gpu
    advice: str
    message: str


def advisories(g: Gpu, policy: Policy) -> list[Advisory]:
    h, out = g.health, []

    def add(advice: str, text: str) -> None:
        if advice != "ignore":
            out.append(Advisory(g, advice, f"{label(g)}: {text}"))

    thermal, power = h.throttle_names(THERMAL_BITS), h.throttle_names(POWER_BITS)
    if thermal or power:
        temp = "" if h.temperature_c is None else (
            f", {h.temperature_c} C (slowdown at {h.slowdown_temp_c} C)")
        add(policy.throttling, f"clocks held down by {', '.join(thermal + power)} "
            f"(throttle_reasons 0x{h.throttle_reasons or 0:x}{temp}); gpu.health.throttling")
    if h.ecc_volatile_corrected is not None and \
            h.ecc_volatile_corrected > policy.warn_corrected_ecc:
        add("warn", f"{h.ecc_volatile_corrected} corrected ECC errors since the last reset "
            f"(ecc_volatile_corrected > gpu.health.warn_corrected_ecc "
            f"{policy.warn_corrected_ecc})")
    if h.persistence is False:
        add(policy.persistence_off, "persistence mode is off: the first CUDA call re-initialises "
            "the GPU (nvidia-smi -pm 1 or nvidia-persistenced); gpu.health.persistence_off")
    if h.pcie_width is not None and h.pcie_max_width and h.pcie_width < h.pcie_max_width:
        add(policy.pcie_degraded, f"PCIe link x{h.pcie_width} of x{h.pcie_max_width} "
            f"(pcie_width; gen {h.pcie_gen} of {h.pcie_max_gen}): reseat the GPU or its riser; "
            "gpu.health.pcie_degraded")
    if h.process_count:
        procs = ", ".join(f"pid {p.pid} ({_gib(p.used_memory_bytes)})" for p in h.processes)
        add(policy.foreign_processes, f"{h.process_count} process(es) already use it: {procs}; "
            "gpu.health.foreign_processes")
    return out


@dataclass(frozen=True)
class Placement:
    """The GPUs a deployment gets, and why each other GPU was passed over. With
    `gpu.mig_profile` it gets MIG instances (`mig`, each with its GPU) instead of whole GPUs
    (`chosen` stays empty); `uuids` is what CUDA_VISIBLE_DEVICES names either way."""

    wanted: int
    chosen: tuple[Gpu, ...]
    passed_over: tuple[tuple[Gpu, str], ...]
    mig: tuple[tuple[Gpu, MigInstance], ...] = ()
    mig_profile: str | None = None

    @property
    def ok(self) -> bool:
        return len(self.mig if self.mig_profile else self.chosen) == self.wanted

    @property
    def uuids(self) -> tuple[str, ...]:
        if self.mig_profile:
            return tuple(m.uuid for _, m in self.mig)
        return tuple(g.uuid for g in self.chosen)

    @property
    def visible_devices(self) -> str:
        """CUDA_VISIBLE_DEVICES: the chosen GPUs (or MIG devices) by UUID (an index can change
        at a reboot)."""
        return ",".join(self.uuids)

    def describe(self) -> str:
        over = "; ".join(f"{label(g)}: {why}" for g, why in self.passed_over)
        if self.mig_profile:
            got = ", ".join(f"{m.uuid} on {label(g)}" for g, m in self.mig) or "none"
            what = f"MIG instance(s) of profile {self.mig_profile} (gpu.count, gpu.mig_profile)"
            head = (f"{len(self.mig)} of {self.wanted} {what} placed: {got}" if self.ok else
                    f"{self.wanted} {what} needed, {len(self.mig)} on healthy GPUs with enough "
                    f"free memory: {got}")
        else:
            chosen = ", ".join(label(g) for g in self.chosen) or "none"
            head = (f"{len(self.chosen)} of {self.wanted} GPU(s) (gpu.count) placed: {chosen}"
                    if self.ok else f"{self.wanted} GPU(s) needed (gpu.count), "
                    f"{len(self.chosen)} healthy with enough free memory: {chosen}")
        return head + (f"; passed over: {over}" if over else "")


def place(facts: HostFacts, count: int, min_memory_gib: float, policy: Policy,
          mig_profile: str | None = None) -> Placement:
    """The first `count` GPUs (by index) that are not sick and have `min_memory_gib` free; with
    `mig_profile`, the first `count` MIG instances of that profile on such GPUs."""
    if mig_profile is not None:
        return _place_mig(facts, count, min_memory_gib, policy, mig_profile)
    chosen: list[Gpu] = []
    over: list[tuple[Gpu, str]] = []
    for g in sorted(facts.gpus, key=lambda g: g.index):
        why = sick(facts, g, policy)
        if not (UUID.match(g.uuid) and g.uuid.startswith("GPU-")):
            why = [f"NVML reported a UUID that is not GPU-<hex>: {g.uuid[:60]!r}"]
        if not why and g.memory_free_bytes < min_memory_gib * GiB:
            why = [f"{_gib(g.memory_free_bytes)} free, gpu.min_memory_gib is {min_memory_gib:g}"]
        if why:
            over.append((g, "; ".join(why)))
        elif len(chosen) < count:
            chosen.append(g)
    return Placement(count, tuple(chosen), tuple(over))


def _place_mig(facts: HostFacts, count: int, min_memory_gib: float, policy: Policy,
               profile: str) -> Placement:
    """MIG instances of `profile` (their free memory against gpu.min_memory_gib) on GPUs in
    MIG mode that are not sick for another reason; each GPU or instance left out says why."""
    chosen: list[tuple[Gpu, MigInstance]] = []
    over: list[tuple[Gpu, str]] = []
    for g in sorted(facts.gpus, key=lambda g: g.index):
        why = sick(facts, g, policy, profile)
        if not g.health.mig_mode:
            why = [f"not in MIG mode (gpu.mig_profile {profile} asks for MIG instances)"]
        matching = [m for m in g.health.mig_instances if m.profile == profile]
        if not why and not matching:
            why = [f"no MIG instance of profile {profile} (it has {profiles_of(g)}; "
                   "nvidia-smi mig -lgip lists the profiles it can make)"]
        if why:
            over.append((g, "; ".join(why)))
            continue
        for m in matching:
            if not (UUID.match(m.uuid) and m.uuid.startswith("MIG-")):
                over.append((g, f"NVML reported a MIG UUID that is not MIG-<hex>: "
                                f"{m.uuid[:60]!r}"))
            elif m.memory_free_bytes < min_memory_gib * GiB:
                over.append((g, f"MIG {m.uuid} ({profile}): {_gib(m.memory_free_bytes)} free, "
                                f"gpu.min_memory_gib is {min_memory_gib:g}"))
            elif len(chosen) < count:
                chosen.append((g, m))
    return Placement(count, (), tuple(over), tuple(chosen), profile)


def _age(seconds: int) -> str:
    return f"{seconds // 3600} h" if seconds >= 3600 else f"{seconds // 60} min"


def _gib(n: int | None) -> str:
    return "unknown memory" if n is None else f"{n / GiB:.1f} GiB"
