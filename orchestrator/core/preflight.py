"""The preflight: a pure function of (spec, lock, host facts, compatibility data) -> verdict.

    verdict = preflight(spec, lock, facts, load_compat())
    verdict.status          # Status.PASS | WARN | FAIL: the worst of its checks
    verdict.checks          # every check, in a fixed order, each with a precise message

Checks, by name: python, framework, driver, gpu-present, gpu-count, gpu-memory, gpu-health,
gpu-conditions, cpu-build, cuda-driver, compute-capability, kernels, cuda-libraries, disk; and
for an image environment (the "lock" is then the image's `ImageInfo`, its installed
distributions judged like a lock's) engine after python and image-cuda after cuda-driver,
with python and disk judged on the image (orchestrator/core/imagechecks.py). Every check is
always reported:
- with `gpu.required: false` the GPU checks pass with "skipped: gpu.required is false";
- a check that needs a fact the host could not give (no driver, no GPU) fails with
  "not checked: ..." so no host passes on facts nobody saw.
Unknown TensorFlow versions warn (the checks that need the build's data cannot be made) instead
of failing: the data is easy to extend (orchestrator/data/compat.json).

No I/O here: the spec, the lock and the facts come in as values (see `Requirements`, `LockLike`).
"""


from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from packaging.markers import InvalidMarker, Marker

from orchestrator.core import imagechecks
from orchestrator.core.compat import CompatData
from orchestrator.core.facts import HostFacts
from orchestrator.core.gpuchecks import GPU_CHECKS, nvml_reason
from orchestrator.core.lockfile import normalize_name, target_environment
from orchestrator.core.ociimage import ImageInfo
from orchestrator.core.spec import Spec
from orchestrator.core.spec_gpu import GpuHealth
from orchestrator.core.verdict import (
    Check,
    Context,
    Framework,
    HostVerdict,
    Requirements,
    Status,
    find_framework,
)
from orchestrator.core.verdict import gib as _gib
from orchestrator.core.verdict import join_or_none as _join

__all__ = ["GPU_CHECKS", "Check", "Context", "Framework", "HostVerdict", "LockLike",
           "Requirements", "Status", "find_framework", "locked_versions", "nvml_reason",
           "preflight", "requirements_from_spec"]


class LockedLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...


class LockLike(Protocol):
    """What the preflight reads from a lock file: orchestrator.core.lockfile.Lock satisfies it."""

    @property
    def packages(self) -> Sequence[LockedLike]: ...


def requirements_from_spec(spec: Spec) -> Requirements:
    """The one place that knows the Spec's shape (DESIGN.md): environment.python, gpu.*."""
    gpu = getattr(spec, "gpu", None)
    python = spec.environment.python
    if gpu is None or not gpu.required:
        return Requirements(python=python)
    min_cc = gpu.min_compute_capability
    return Requirements(
        python=python,
        gpu_required=True,
        gpu_count=int(gpu.count),
        min_memory_gib=float(gpu.min_memory_gib or 0),
        min_cc=None if min_cc is None else str(min_cc),
        # A duck-typed spec without the section gets the safe defaults.
        health=getattr(gpu, "health", None) or GpuHealth(),
        mig_profile=getattr(gpu, "mig_profile", None),
    )


def locked_versions(lock: LockLike, facts: HostFacts | None = None) -> dict[str, str]:
    """name -> version of the packages that install on this host: a package whose environment
    marker does not hold for the host's Python and machine is left out (universal locks list
    one package several times under exclusive markers)."""
    env = None if facts is None else target_environment(facts.python_minor, facts.machine or
                                                        "x86_64")
    out: dict[str, str] = {}
    for p in lock.packages:
        marker = getattr(p, "marker", None)
        if env is not None and marker and not _marker_holds(str(marker), env):
            continue
        out[normalize_name(p.name)] = p.version
    return out


def _marker_holds(marker: str, env: dict[str, str]) -> bool:
    try:
        return bool(Marker(marker).evaluate(env))
    except InvalidMarker:
        return True  # the lock linter refuses bad markers; here, keep the package in view


def preflight(
    spec: Spec | Requirements, lock: LockLike, facts: HostFacts, data: CompatData,
) -> HostVerdict:
    """Every check for one host; `spec` is a Spec or already `Requirements`; `lock` is the
    lock, or the `ImageInfo` of an image environment."""
    req = spec if isinstance(spec, Requirements) else requirements_from_spec(spec)
    image = lock if isinstance(lock, ImageInfo) else None
    versions = locked_versions(lock, facts)
    declared = imagechecks.cuda_need(image) if image is not None else None
    ctx = Context(req, versions, facts, data, find_framework(versions, data),
                  declared_cuda=(declared,) if declared else ())
    checks: list[Check] = [
        imagechecks.python_check(req, image) if image else _python(req, facts),
        *([imagechecks.engine_check(req, facts)] if image else []),
        _framework(ctx.framework, facts, image),
    ]
    for name, fn in GPU_CHECKS:
        if not req.gpu_required:
            checks.append(Check(name, Status.PASS, "skipped: gpu.required is false"))
        else:
            checks.append(fn(ctx))
        if name == "cuda-driver" and image is not None:
            checks.append(imagechecks.cuda_check(req, image, facts, data))
    checks.append(imagechecks.disk_check(image, facts) if image else
                  _disk(versions, facts, data))
    return HostVerdict(facts.host, tuple(checks))


def _python(req: Requirements, facts: HostFacts) -> Check:
    if facts.python_minor == req.python:
        return Check("python", Status.PASS, f"python {facts.python_version} matches "
                     f"environment.python {req.python}")
    return Check("python", Status.FAIL, f"host python3 is {facts.python_version} "
                 f"({facts.python_executable}); the spec's environment.python is {req.python}")


def _framework(fw: Framework, facts: HostFacts, image: ImageInfo | None = None) -> Check:
    if fw.package is None:
        return Check("framework", Status.PASS,
                     "no TensorFlow in the image" if image else "no TensorFlow in the lock")
    label = f"{fw.package} {fw.version}"
    python = facts.python_version if image is None else (image.python or "")
    if fw.build is None:
        return Check("framework", Status.WARN, f"{label} is not in the compatibility data "
                     "(orchestrator/data/compat.json): its Python, CUDA and compute capability "
                     "needs cannot be checked")
    b = fw.build
    if python and not b.supports_python(python):
        where = "host python3" if image is None else "the image's Python"
        return Check("framework", Status.FAIL, f"{label} supports Python {b.python_min}-"
                     f"{b.python_max}; {where} is {python}")
    row = "" if b.version == fw.version else f" (data of {b.version})"
    return Check("framework", Status.PASS, f"{label}{row}: Python {b.python_min}-{b.python_max}, "
                 f"built with CUDA {b.cuda}, cuDNN {b.cudnn}, kernels for compute capability "
                 f"{_join(b.sass)} + PTX {_join(b.ptx)}")


def _disk(versions: dict[str, str], facts: HostFacts, data: CompatData) -> Check:
    need = data.disk.for_packages(sorted(versions))
    free = facts.disk_free_bytes
    text = (f"about {_gib(need)} needed for the environment (estimate for {len(versions)} "
            f"locked packages); {_gib(free)} free at {facts.disk_path}")
    if free < need:
        return Check("disk", Status.FAIL, f"not enough disk: {text}")
    if free < need * data.disk.margin_ratio:
        return Check("disk", Status.WARN, f"disk nearly full: {text}")
    return Check("disk", Status.PASS, text)




