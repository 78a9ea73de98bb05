"""GPU health facts for the host probe (shipped beside probe.py, Python 3.9+ stdlib + pynvml).

Per GPU (`health(pynvml, handle)`): ECC mode and counts, retired pages, remapped rows, clock
throttle reasons, temperature and slowdown threshold, power draw and limit, persistence mode, MIG
mode and MIG devices (UUID, profile, memory), running compute processes, PCIe link, PCI bus id.
Every NVML call is guarded on its own: Not Supported (a GeForce has no ECC, pre-Ampere GPUs no
row remapping) is a null value, any other NVML error a null value plus its name under `errors`;
nothing here raises.

Per host (`xid_facts(window_s)`): the NVRM Xid lines of the kernel log of the last `window_s`
seconds, from `journalctl -k`, else `/dev/kmsg`; $ORCHESTRATOR_KERNEL_LOG names a file in
`journalctl -o short-unix` form to read instead (the testbed's simulated kernel log: NVML events
cannot be faked without a kernel). Not readable is a fact (`source` null, `error` says why).
"""

from __future__ import annotations

import errno
import functools
import os
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

MAX_PROCESSES = 16
MAX_MIG = 16  # a GPU has at most 7 MIG devices today
MAX_XID_EVENTS = 64
MAX_LOG_BYTES = 4 << 20
MAX_TEXT = 200
XID = re.compile(r"NVRM: Xid \(PCI:([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2})[^)]*\): (\d+)")

# (field, errorType, counterType) of nvmlDeviceGetTotalEccErrors: 0 corrected / 1 uncorrected,
# 0 volatile (since the last driver load or reset) / 1 aggregate (lifetime).
ECC_COUNTERS = (("ecc_volatile_corrected", 0, 0), ("ecc_volatile_uncorrected", 1, 0),
                ("ecc_aggregate_corrected", 0, 1), ("ecc_aggregate_uncorrected", 1, 1))


def health(pynvml: Any, handle: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"errors": {}}

    def get(field: str, call: Callable[[], Any]) -> Any:
        try:
            value = call()
        except pynvml.NVMLError as exc:
            if not isinstance(exc, pynvml.NVMLError_NotSupported):
                out["errors"][field] = type(exc).__name__
            value = None
        except Exception as exc:  # a pynvml too old for the call: still a fact, not a crash
            out["errors"][field] = type(exc).__name__
            value = None
        out[field] = value
        return value

    mode = get("ecc_mode", lambda: bool(pynvml.nvmlDeviceGetEccMode(handle)[0]))
    for field, error_type, counter in ECC_COUNTERS:
        if mode:
            get(field, functools.partial(_ecc_count, pynvml, handle, error_type, counter))
        else:
            out[field] = None
    get("retired_sbe", lambda: len(pynvml.nvmlDeviceGetRetiredPages(handle, 0)))
    get("retired_dbe", lambda: len(pynvml.nvmlDeviceGetRetiredPages(handle, 1)))
    get("retired_pending", lambda: bool(pynvml.nvmlDeviceGetRetiredPagesPendingStatus(handle)))
    rows = get("remapped_rows", lambda: [int(x) for x in pynvml.nvmlDeviceGetRemappedRows(handle)])
    del out["remapped_rows"]
    for i, field in enumerate(("remap_correctable", "remap_uncorrectable")):
        out[field] = rows[i] if rows else None
    for i, field in ((2, "remap_pending"), (3, "remap_failure")):
        out[field] = bool(rows[i]) if rows else None
    get("throttle_reasons", lambda: int(_throttle(pynvml, handle)))
    get("temperature_c", lambda: int(pynvml.nvmlDeviceGetTemperature(handle, 0)))
    get("slowdown_temp_c", lambda: int(pynvml.nvmlDeviceGetTemperatureThreshold(handle, 1)))
    get("power_mw", lambda: int(pynvml.nvmlDeviceGetPowerUsage(handle)))
    get("power_limit_mw", lambda: int(pynvml.nvmlDeviceGetEnforcedPowerLimit(handle)))
    get("persistence", lambda: bool(pynvml.nvmlDeviceGetPersistenceMode(handle)))
    mig = get("mig_mode", lambda: bool(pynvml.nvmlDeviceGetMigMode(handle)[0]))
    if mig:
        migs = get("mig_instances", lambda: _mig_instances(pynvml, handle))
        out["mig_devices"] = None if migs is None else len(migs)
        out["mig_instances"] = migs or []
    else:
        out["mig_devices"], out["mig_instances"] = None, []
    procs = get("processes", lambda: list(pynvml.nvmlDeviceGetComputeRunningProcesses(handle)))
    out["process_count"] = None if procs is None else len(procs)
    if procs is not None:
        out["processes"] = [{"pid": int(p.pid), "used_memory_bytes": _opt_int(p.usedGpuMemory)}
                            for p in procs[:MAX_PROCESSES]]
    get("pcie_gen", lambda: int(pynvml.nvmlDeviceGetCurrPcieLinkGeneration(handle)))
    get("pcie_max_gen", lambda: int(pynvml.nvmlDeviceGetMaxPcieLinkGeneration(handle)))
    get("pcie_width", lambda: int(pynvml.nvmlDeviceGetCurrPcieLinkWidth(handle)))
    get("pcie_max_width", lambda: int(pynvml.nvmlDeviceGetMaxPcieLinkWidth(handle)))
    get("pci_bus_id", lambda: _text(pynvml.nvmlDeviceGetPciInfo(handle).busId)[:32])
    return out


def _ecc_count(pynvml: Any, handle: Any, error_type: int, counter: int) -> int:
    return int(pynvml.nvmlDeviceGetTotalEccErrors(handle, error_type, counter))


def _throttle(pynvml: Any, handle: Any) -> int:
    """The "clocks event reasons" call of drivers >= 535, else its older name."""
    try:
        return int(pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle))
    except pynvml.NVMLError_FunctionNotFound:
        return int(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle))


def _mig_instances(pynvml: Any, handle: Any) -> list[dict[str, Any]]:
    """The GPU's MIG devices: UUID (what CUDA_VISIBLE_DEVICES names), profile (the driver names
    a MIG device "<GPU name> MIG <profile>"), memory, GPU and compute instance ids."""
    out = []
    for index in range(min(int(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)), MAX_MIG)):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, index)
        except pynvml.NVMLError_NotFound:
            continue
        name = _text(pynvml.nvmlDeviceGetName(mig))
        memory = pynvml.nvmlDeviceGetMemoryInfo(mig)
        out.append({"uuid": _text(pynvml.nvmlDeviceGetUUID(mig))[:96],
                    "profile": name.rpartition(" MIG ")[2][:32] if " MIG " in name else None,
                    "memory_total_bytes": int(memory.total),
                    "memory_free_bytes": int(memory.free),
                    "gi": _instance_id(pynvml.nvmlDeviceGetGpuInstanceId, mig),
                    "ci": _instance_id(pynvml.nvmlDeviceGetComputeInstanceId, mig)})
    return out


def _instance_id(call: Callable[[Any], Any], mig: Any) -> int | None:
    try:
        return int(call(mig))
    except Exception:  # an id is a detail: the device is still usable by its UUID
        return None


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# ---- Xid events from the kernel log ------------------------------------------------------------

def xid_facts(window_s: int) -> dict[str, Any]:
    now = time.time()
    since = now - window_s
    fake = os.environ.get("ORCHESTRATOR_KERNEL_LOG")
    if fake:
        try:
            with open(fake, "rb") as handle:
                text = handle.read(MAX_LOG_BYTES).decode("utf-8", "replace")
        except OSError as exc:
            return _xids(None, [], f"{fake}: {exc.strerror or exc}", now)
        return _xids("file", _unix_lines(text, since), None, now)
    problems: list[str] = []
    lines = _journal(since, problems)
    if lines is not None:
        return _xids("journalctl", lines, None, now)
    lines = _kmsg(now, since, problems)
    if lines is not None:
        return _xids("kmsg", lines, None, now)
    return _xids(None, [], "; ".join(problems), now)


def _xids(source: str | None, lines: list[tuple[float, str]], error: str | None,
          now: float) -> dict[str, Any]:
    """`age_s` is measured by the host's own clock, so a skewed controller clock cannot make an
    old Xid recent or a new one old."""
    events = []
    for stamp, message in lines:
        match = XID.search(message)
        if match:
            events.append({"time": round(stamp, 3), "age_s": max(0, int(now - stamp)),
                           "pci": match.group(1).lower()[-10:], "code": int(match.group(2)),
                           "text": message[:MAX_TEXT]})
    return {"source": source, "error": None if error is None else error[:MAX_TEXT],
            "events": events[-MAX_XID_EVENTS:]}


def _unix_lines(text: str, since: float) -> list[tuple[float, str]]:
    """`<unix time> <host> kernel: <message>` lines at or after `since`."""
    out = []
    for line in text.splitlines():
        stamp, _, rest = line.partition(" ")
        try:
            when = float(stamp)
        except ValueError:
            continue
        if when >= since and "NVRM: Xid" in rest:
            out.append((when, rest.split("kernel: ", 1)[-1]))
    return out


def _journal(since: float, problems: list[str]) -> list[tuple[float, str]] | None:
    argv = ["journalctl", "-k", "-q", "--no-pager", "-o", "short-unix", "--since",
            f"@{int(since)}"]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=2, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        problems.append(f"journalctl: {getattr(exc, 'strerror', None) or exc}")
        return None
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip()[:100]
        problems.append(f"journalctl: exit {proc.returncode} {detail}")
        return None
    return _unix_lines(proc.stdout[-MAX_LOG_BYTES:].decode("utf-8", "replace"), since)


def _kmsg(now: float, since: float, problems: list[str]) -> list[tuple[float, str]] | None:
    """/dev/kmsg records `prio,seq,usec,flags;message`, usec on the monotonic clock."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        problems.append(f"/dev/kmsg: {exc.strerror or exc}")
        return None
    mono = time.clock_gettime(time.CLOCK_MONOTONIC)
    out, total = [], 0
    try:
        while total < MAX_LOG_BYTES:
            try:
                record = os.read(fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten while reading: skip to the next
                    continue
                break  # EAGAIN: the end of the buffer
            if not record:
                break
            total += len(record)
            head, _, message = record.decode("utf-8", "replace").partition(";")
            fields = head.split(",")
            if len(fields) < 3 or "NVRM: Xid" not in message:
                continue
            try:
                when = now - (mono - int(fields[2]) / 1e6)
            except ValueError:
                continue
            if when >= since:
                out.append((when, message.splitlines()[0]))
    finally:
        os.close(fd)
    return out
