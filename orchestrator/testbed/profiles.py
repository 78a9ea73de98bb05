"""GPU profiles of testbed hosts: what a host's fake NVIDIA stack reports. Pure, apart from reading
the packaged profile templates.

A template is `orchestrator/testbed/profiles/<name>.json`; the profile of one host is its template
plus that host's name and a stable, distinct UUID per GPU, written to the host's `profile.json`,
which the fake `libnvidia-ml.so.1` reads at every `nvmlInit` (schema in `fake_nvml.c`):

    {"profile": "h100",                  template name (added per host)
     "host": "tb-01",                    host name (added per host)
     "description": str,                 for people
     "library": true,                    false: no libnvidia-ml.so.1 in the host's lib dir at all
     "init_error": 0,                    NVML code nvmlInit returns (9 no driver, 18 mismatch)
     "driver_version": "550.54.15", "nvml_version": "12.550.54.15",
     "cuda_driver_version": 12040,       1000*major + 10*minor
     "gpus": [{"name", "uuid" (added per host), "memory_total", "memory_used", "memory_reserved"
               (bytes), "cc_major", "cc_minor", "architecture" (NVML_DEVICE_ARCH_*)}],
     "libraries": [{"name": "cudart" | "cudnn", "soname": "libcudnn.so.9", "version": "9.3.0"}],
     "kernel_log": ["NVRM: Xid (PCI:0000:3b:00): 79, ..."]}   optional, see `kernel_log`

Each GPU may also carry health values (ECC counts, retired pages, remapped rows, throttle reasons,
temperature, power, persistence, MIG mode and MIG instances by profile, PCIe link, processes), all
defaulting to a healthy GPU; the keys are listed in `fake_nvml.c`. A MIG instance gets a stable
`MIG-...` UUID per host here, like a GPU. The health profiles: `ecc-uncorrectable`,
`row-remap-pending`, `xid-79`, `thermal-throttle`, `mig` (an A100 in MIG mode, 4 MIG devices
of 3 profiles), `busy` (foreign processes hold the memory) and `multi-gpu` (8 GPUs, 2 of them
sick).

`libraries` are fake CUDA runtime / cuDNN shared objects put in the host's lib dir with the version
compiled in (`fake_cuda.c`), so a probe reads them through ctypes as on a real host.
"""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any

from orchestrator.errors import InvalidInput

_TEMPLATES = resources.files("orchestrator.testbed").joinpath("profiles")

# Listing a package directory is the only import-time work: the names are what callers validate.
PROFILES: tuple[str, ...] = tuple(
    sorted(p.name[: -len(".json")] for p in _TEMPLATES.iterdir() if p.name.endswith(".json"))
)
DEFAULT_PROFILE = "h100"


@dataclass(frozen=True)
class FakeLibrary:
    """One fake CUDA library: its soname, and the C define that compiles its version in."""

    name: str
    soname: str
    version: str

    @property
    def define(self) -> tuple[str, int]:
        if self.name == "cudart":
            return "FAKE_CUDART_VERSION", encode_cudart(self.version)
        if self.name == "cudnn":
            return "FAKE_CUDNN_VERSION", encode_cudnn(self.version)
        raise InvalidInput(f"profile library {self.name!r}: only 'cudart' and 'cudnn' are faked")


def check_name(name: str) -> str:
    if name not in PROFILES:
        raise InvalidInput(f"unknown testbed profile {name!r}; known: {', '.join(PROFILES)}")
    return name


def load_template(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_TEMPLATES.joinpath(f"{check_name(name)}.json").read_text())
    return data


def cycle(profiles: list[str] | tuple[str, ...], hosts: int) -> list[str]:
    """The profile of each of `hosts` hosts: the list repeated as needed, default h100."""
    names = [check_name(p) for p in profiles] or [DEFAULT_PROFILE]
    return [names[i % len(names)] for i in range(hosts)]


def gpu_uuid(host: str, index: int, gpu_name: str) -> str:
    """Stable per (host, slot, model): a driver upgrade keeps it, a GPU swap changes it."""
    digest = hashlib.sha256(f"{host}\0{index}\0{gpu_name}".encode()).digest()
    return f"GPU-{uuid.UUID(bytes=digest[:16])}"


def render(name: str, host: str) -> dict[str, Any]:
    """The full profile of `host` under template `name`."""
    data = copy.deepcopy(load_template(name))
    data = {"profile": name, "host": host, **data}
    for index, gpu in enumerate(data["gpus"]):
        gpu["uuid"] = gpu_uuid(host, index, gpu["name"])
        for slot, mig in enumerate(gpu.get("mig_instances", [])):
            mig["uuid"] = mig_uuid(host, index, slot, str(mig["profile"]))
    return data


def mig_uuid(host: str, index: int, slot: int, profile: str) -> str:
    """A MIG device's UUID ("MIG-<uuid>", as drivers from R470 on name them): stable per
    (host, GPU slot, MIG slot, profile); re-creating the instance with another profile changes
    it, as destroying and creating one does on a real GPU."""
    digest = hashlib.sha256(f"{host}\0{index}\0mig\0{slot}\0{profile}".encode()).digest()
    return f"MIG-{uuid.UUID(bytes=digest[:16])}"


def libraries(profile: dict[str, Any]) -> list[FakeLibrary]:
    return [FakeLibrary(str(x["name"]), str(x["soname"]), str(x["version"]))
            for x in profile.get("libraries", [])]


def has_nvml(profile: dict[str, Any]) -> bool:
    return bool(profile.get("library", True))


def encode_cudart(version: str) -> int:
    """CUDART_VERSION: "12.5" -> 12050."""
    major, minor = _ints(version, 2)
    return major * 1000 + minor * 10


def encode_cudnn(version: str) -> int:
    """CUDNN_VERSION: major*10000 + minor*100 + patch from cuDNN 9, major*1000 + ... before."""
    major, minor, patch = _ints(version, 3)
    return major * (10000 if major >= 9 else 1000) + minor * 100 + patch


def _ints(version: str, n: int) -> list[int]:
    parts = version.split(".")
    if len(parts) != n or not all(p.isdigit() for p in parts):
        raise InvalidInput(f"library version {version!r}: expected {n} dot-separated numbers")
    return [int(p) for p in parts]


def kernel_log(profile: dict[str, Any], now: float) -> str:
    """The host's simulated kernel log: the profile's `kernel_log` lines in `journalctl -k -o
    short-unix` form ("<unix time> <host> kernel: <message>"), stamped `now`."""
    host = str(profile.get("host", "localhost"))
    return "".join(f"{now:.6f} {host} kernel: {line}\n" for line in profile.get("kernel_log", []))
