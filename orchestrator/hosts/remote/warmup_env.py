"""Warmup runner, where the model runs: the environment fingerprint, NVML facts, GPU memory.

`environment()` is the result's `environment` and the golden file's `__fingerprint__` (its
`frameworks` are the format registry's, formats.py); `NvmlSampler` samples the `gpu_memory`
figure while the model runs. The `gpu` verdict is each format's own (formats_*.py). Part of the
warmup runner (warmup.py). Top level is stdlib-only and Python 3.9+; `pynvml` is the shipped
pynvml.py in the tools dir, imported lazily.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sys
import threading

if __package__:
    from .formats import FRAMEWORKS
else:
    from formats import FRAMEWORKS  # type: ignore[no-redef]


def environment():
    """Where the model runs: Python, every installed distribution, GPU/driver as NVML sees them.

    The same structure is the golden file's fingerprint (recorded where the model was trained),
    so the two can be diffed key by key.
    """
    try:
        from importlib import metadata
        packages = {}
        for dist in metadata.distributions():
            name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()  # PEP 503
            if name:
                packages[name] = dist.version
    except Exception as exc:
        packages = {"<error>": str(exc)}
    frameworks = {name: packages.get(name) for name in FRAMEWORKS}
    if frameworks["tensorflow"] is None:  # tensorflow-cpu, -gpu, -intel, -macos builds
        frameworks["tensorflow"] = next((v for k, v in sorted(packages.items())
                                         if k.startswith("tensorflow-") and k.split("-", 1)[1]
                                         in ("cpu", "gpu", "intel", "macos")), None)
    env = {"python": platform.python_version(), "implementation": platform.python_implementation(),
           "executable": sys.executable, "platform": platform.platform(),
           "machine": platform.machine(), "frameworks": frameworks, "packages": packages,
           "gpu": nvml_facts()}
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        with contextlib.suppress(Exception):
            build = dict(tf.sysconfig.get_build_info())
            env["tensorflow_build"] = {k: str(v) for k, v in build.items()}
    return env


def nvml_facts():
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:
        return {"driver": None, "cuda_driver": None, "devices": [],
                "error": f"{type(exc).__name__}: {exc}"}
    try:
        def text(v):
            return v.decode() if isinstance(v, bytes) else str(v)

        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            devices.append({"name": text(pynvml.nvmlDeviceGetName(h)),
                            "memory_total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                            "compute_capability": f"{major}.{minor}"})
        return {"driver": text(pynvml.nvmlSystemGetDriverVersion()),
                "cuda_driver": f"{cuda // 1000}.{(cuda % 1000) // 10}",
                "devices": devices, "error": None}
    except Exception as exc:
        return {"driver": None, "cuda_driver": None, "devices": [],
                "error": f"{type(exc).__name__}: {exc}"}
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


class NvmlSampler(threading.Thread):
    """Peak used GPU memory (bytes, per device) sampled every 20 ms while the model runs."""

    def __init__(self):
        threading.Thread.__init__(self, daemon=True)
        self.stop_event = threading.Event()
        self.error, self.before, self.peak, self.handles, self.nvml = None, [], [], [], None
        self.uuids = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = _visible_handles(pynvml)
            self.uuids = [_text(pynvml.nvmlDeviceGetUUID(h)) for h in self.handles]
            self.before = self._used()
            self.peak = list(self.before)
        except Exception as exc:  # no pynvml, no driver: the figure is null, with the reason
            self.error = f"{type(exc).__name__}: {exc}"

    def _used(self):
        nvml = self.nvml
        assert nvml is not None  # only called once NVML answered
        return [int(nvml.nvmlDeviceGetMemoryInfo(h).used) for h in self.handles]

    def run(self):
        while self.nvml is not None and not self.stop_event.wait(0.02):
            try:
                self.peak = [max(a, b) for a, b in zip(self.peak, self._used())]
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                return

    def report(self):
        self.stop_event.set()
        if self.nvml is None or not self.handles:
            return {"peak_used_bytes": None, "before_used_bytes": None, "devices": [],
                    "error": self.error or "no GPU"}
        return {"peak_used_bytes": max(self.peak), "before_used_bytes": max(self.before),
                "devices": self.peak, "uuids": self.uuids, "error": self.error}


def _text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def _visible_handles(pynvml):
    """The GPUs this process may use: those CUDA_VISIBLE_DEVICES names by UUID (placement sets
    it, orchestrator/core/gpuhealth.py), else all. NVML itself ignores the variable, so without
    this the peak memory would count GPUs the model never touched."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if v.strip()]
    if visible and all(v.startswith(("GPU-", "MIG-")) for v in visible):
        return [pynvml.nvmlDeviceGetHandleByUUID(v) for v in visible]
    return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
