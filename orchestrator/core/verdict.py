"""What a preflight says, and what its checks read: the verdict types, the spec's requirements as
plain values, and the TensorFlow build the lock holds (orchestrator/core/preflight.py runs the
checks; orchestrator/core/gpuchecks.py holds the GPU ones)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from orchestrator.core.compat import CompatData, TfBuild, TfPackage
from orchestrator.core.facts import HostFacts
from orchestrator.core.spec_gpu import GpuHealth


class Status(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


RANK = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str


@dataclass(frozen=True)
class HostVerdict:
    host: str
    checks: tuple[Check, ...]

    @property
    def status(self) -> Status:
        return max((c.status for c in self.checks), key=RANK.__getitem__, default=Status.PASS)

    @property
    def ok(self) -> bool:
        """Warnings do not stop a rollout; failures do."""
        return self.status is not Status.FAIL

    def reasons(self, status: Status = Status.FAIL) -> list[str]:
        """ "gpu-03: driver 470.82.01 supports CUDA up to 11.4; ..." for each check of `status`."""
        return [f"{self.host}: {c.message}" for c in self.checks if c.status is status]

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "status": str(self.status),
            "checks": [{"name": c.name, "status": str(c.status), "message": c.message}
                       for c in self.checks],
        }


@dataclass(frozen=True)
class Requirements:
    """What a spec asks of a host, as plain values; `requirements_from_spec` builds it."""

    python: str | None  # "3.11"; None: an image spec that names none
    gpu_required: bool = False
    gpu_count: int = 1
    min_memory_gib: float = 0.0
    min_cc: str | None = None  # "7.0"
    health: GpuHealth = field(default_factory=GpuHealth)  # gpu.health
    mig_profile: str | None = None  # gpu.mig_profile: place on MIG instances of this profile


@dataclass(frozen=True)
class Framework:
    """The TensorFlow distribution in the lock (if any) and its data row (if known)."""

    package: str | None
    version: str | None
    info: TfPackage | None
    build: TfBuild | None

    @property
    def label(self) -> str:
        return f"{self.package} {self.version}"

    @property
    def cuda_build(self) -> bool:
        return self.info is not None and self.info.cuda_build


@dataclass(frozen=True)
class CudaNeed:
    why: str  # "tensorflow 2.21.0" or "nvidia-cuda-runtime-cu12 12.9.79"
    cuda: str  # "12.5", or "12" when only the major is known
    major: int


@dataclass(frozen=True)
class Context:
    req: Requirements
    versions: dict[str, str]
    facts: HostFacts
    data: CompatData
    framework: Framework
    # CUDA the environment declares beside its packages (an image's CUDA_VERSION)
    declared_cuda: tuple[CudaNeed, ...] = ()


def find_framework(versions: dict[str, str], data: CompatData) -> Framework:
    for name, info in data.tf_packages.items():
        if name in versions:
            version = versions[name]
            return Framework(name, version, info, data.tf_build(version))
    return Framework(None, None, None, None)



def join_or_none(items: Iterable[str]) -> str:
    return ", ".join(items) or "none"


def gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"
