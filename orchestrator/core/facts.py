"""Host facts: what the probe found on a host, as plain data, and the pure parser of its JSON.

The probe script (`orchestrator/hosts/remote/probe.py`) prints one JSON object; `parse_facts` turns
it
into `HostFacts` or raises `BadHostOutput` naming the host. Missing driver, missing library or
no GPU are facts (`nvml_error`, empty `gpus`), never errors.

Probe JSON, schema 1:
    {"schema": 1, "hostname": str,
     "os": {"system", "release", "machine", "id", "version_id", "pretty_name", "libc"},
     "python": {"version": "3.11.2", "executable": "/usr/bin/python3"},
     "disk": {"path": str, "free_bytes": int, "total_bytes": int},
     "nvml": {"error": null | {"code": int, "name": "NVMLError_DriverNotLoaded", "message": str},
              "driver_version": "550.54.15" | null, "cuda_driver_version": "12.4" | null},
     "gpus": [{"index", "name", "uuid", "memory_total_bytes", "memory_free_bytes",
               "compute_capability": "9.0", "health": {...} (orchestrator/core/gpufacts.py)}],
     "libraries": [{"name": "cudnn" | "cudart" | ..., "path": str, "version": str | null}],
     "releases": {"<app>": {"current": "<release_id>" | null}},
     "xid": {"source", "error", "events": [...]} (Xid lines of the kernel log, gpufacts.py),
     "engines": [{"name": "docker" | "podman", "path", "version": str | null,
                  "nvidia_runtime": bool, "cdi_devices": ["nvidia.com/gpu=0"],
                  "error": str | null}] | null}  (null: not asked, the probe of a release
                                                   that needs none; absent from older probes)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.core import hostjson
from orchestrator.core.gpufacts import GpuHealth, XidFacts, parse_health, parse_xid
from orchestrator.errors import BadHostOutput

SCHEMA = 1
MAX_FACTS_BYTES = 1 << 20


@dataclass(frozen=True)
class NvmlError:
    code: int
    name: str
    message: str


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str
    memory_total_bytes: int
    memory_free_bytes: int
    compute_capability: str  # "major.minor"
    health: GpuHealth = field(default_factory=GpuHealth)

    @property
    def cc(self) -> tuple[int, int]:
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)


@dataclass(frozen=True)
class Library:
    name: str
    path: str
    version: str | None


@dataclass(frozen=True)
class Engine:
    """A container engine on the host (hosts/remote/probe_engine.py)."""

    name: str                 # "docker" | "podman"
    path: str
    version: str | None
    nvidia_runtime: bool      # an `nvidia` runtime or the NVIDIA OCI hook is configured
    cdi_devices: tuple[str, ...]  # nvidia.com/gpu=... devices of the host's CDI specs
    error: str | None         # why it did not answer; None when it works

    @property
    def gpu_ready(self) -> bool:
        """Whether a container it starts can be given the host's GPUs."""
        return self.error is None and (self.nvidia_runtime or bool(self.cdi_devices))

    @property
    def label(self) -> str:
        return f"{self.name} {self.version or '(version unknown)'}"


@dataclass(frozen=True)
class HostFacts:
    host: str
    hostname: str
    os: dict[str, str]
    python_version: str
    python_executable: str
    disk_path: str
    disk_free_bytes: int
    disk_total_bytes: int
    nvml_error: NvmlError | None
    driver_version: str | None
    cuda_driver_version: str | None
    gpus: tuple[Gpu, ...] = ()
    libraries: tuple[Library, ...] = ()
    releases: dict[str, str | None] = field(default_factory=dict)
    xid: XidFacts = field(default_factory=XidFacts)
    engines: tuple[Engine, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def python_minor(self) -> str:
        """"3.11" from "3.11.2"."""
        return ".".join(self.python_version.split(".")[:2])

    @property
    def machine(self) -> str:
        return self.os.get("machine", "")

    @property
    def engine(self) -> Engine | None:
        """The engine image environments run with: the first that answers (docker, then
        podman, the probe's order)."""
        return next((e for e in self.engines if e.error is None), None)


def parse_facts(host: str, text: str) -> HostFacts:
    """Parse the probe's stdout; anything malformed is a `BadHostOutput` naming the host."""
    if len(text) > MAX_FACTS_BYTES:
        raise BadHostOutput(host, f"probe printed {len(text)} bytes, more than {MAX_FACTS_BYTES}")
    try:
        data = hostjson.loads(text)
    except ValueError as exc:
        raise BadHostOutput(host, f"probe output is not JSON ({exc}): {text[:200]!r}") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise BadHostOutput(
            host, f"probe output is not a schema-{SCHEMA} facts object: {text[:200]!r}"
        )
    try:
        return _facts_from(host, data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadHostOutput(host, f"probe output is malformed: {exc!r}") from exc


def _facts_from(host: str, data: dict[str, Any]) -> HostFacts:
    nvml = data["nvml"]
    err = nvml.get("error")
    return HostFacts(
        host=host,
        hostname=str(data["hostname"]),
        os={str(k): str(v) for k, v in data["os"].items()},
        python_version=str(data["python"]["version"]),
        python_executable=str(data["python"]["executable"]),
        disk_path=str(data["disk"]["path"]),
        disk_free_bytes=int(data["disk"]["free_bytes"]),
        disk_total_bytes=int(data["disk"]["total_bytes"]),
        nvml_error=_nvml_error(err),
        driver_version=_opt_str(nvml.get("driver_version")),
        cuda_driver_version=_opt_str(nvml.get("cuda_driver_version")),
        gpus=tuple(
            Gpu(
                index=int(g["index"]),
                name=str(g["name"]),
                uuid=str(g["uuid"]),
                memory_total_bytes=int(g["memory_total_bytes"]),
                memory_free_bytes=int(g["memory_free_bytes"]),
                compute_capability=_cc(g["compute_capability"]),
                health=parse_health(g.get("health")),
            )
            for g in data.get("gpus", [])
        ),
        libraries=tuple(
            Library(str(lib["name"]), str(lib["path"]), _opt_str(lib.get("version")))
            for lib in data.get("libraries", [])
        ),
        releases={
            str(app): _opt_str(rel.get("current")) for app, rel in data.get("releases", {}).items()
        },
        xid=parse_xid(data.get("xid")),
        engines=tuple(
            Engine(name=str(e["name"]), path=str(e["path"]),
                   version=_opt_str(e.get("version")),
                   nvidia_runtime=e.get("nvidia_runtime") is True,
                   cdi_devices=tuple(str(d) for d in e.get("cdi_devices") or ()),
                   error=_opt_str(e.get("error")))
            for e in data.get("engines") or ()
        ),
        raw=data,
    )


def _nvml_error(err: dict[str, Any] | None) -> NvmlError | None:
    return NvmlError(int(err["code"]), str(err["name"]), str(err["message"])) if err else None


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _cc(value: object) -> str:
    major, minor = str(value).split(".")
    return f"{int(major)}.{int(minor)}"
