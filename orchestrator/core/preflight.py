"""The preflight: a pure function of (spec, lock, host facts, compatibility data) -> verdict.

    verdict = preflight(spec, lock, facts, load_compat())
    verdict.status          # Status.PASS | WARN | FAIL: the worst of its checks
    verdict.checks          # every check, in a fixed order, each with a precise message

Checks, by name: python, framework, driver, gpu-present, gpu-count, gpu-memory, cpu-build,
cuda-driver, compute-capability, kernels, cuda-libraries, disk. Every check is always reported:
- with `gpu.required: false` the GPU checks pass with "skipped: gpu.required is false";
- a check that needs a fact the host could not give (no driver, no GPU) fails with
  "not checked: ..." so no host passes on facts nobody saw.
Unknown TensorFlow versions warn (the checks that need the build's data cannot be made) instead
of failing: the data is easy to extend (orchestrator/data/compat.json).

No I/O here: the spec, the lock and the facts come in as values (see `Requirements`, `LockLike`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from packaging.markers import InvalidMarker, Marker

from orchestrator.core.compat import (
    CompatData,
    RequiredLibrary,
    TfBuild,
    TfPackage,
    cc_tuple,
    parse_version,
)
from orchestrator.core.facts import Gpu, HostFacts
from orchestrator.core.lockfile import normalize_name, target_environment


class Status(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


_RANK = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}


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
        return max((c.status for c in self.checks), key=_RANK.__getitem__, default=Status.PASS)

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

    python: str  # "3.11"
    gpu_required: bool = False
    gpu_count: int = 1
    min_memory_gib: float = 0.0
    min_cc: str | None = None  # "7.0"


class LockedLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...


class LockLike(Protocol):
    """What the preflight reads from a lock file: orchestrator.core.lockfile.Lock satisfies it."""

    @property
    def packages(self) -> Sequence[LockedLike]: ...


def requirements_from_spec(spec: Any) -> Requirements:
    """The one place that knows the Spec's shape (DESIGN.md): environment.python, gpu.*."""
    gpu = getattr(spec, "gpu", None)
    if gpu is None or not gpu.required:
        return Requirements(python=str(spec.environment.python))
    min_cc = gpu.min_compute_capability
    return Requirements(
        python=str(spec.environment.python),
        gpu_required=True,
        gpu_count=int(gpu.count),
        min_memory_gib=float(gpu.min_memory_gib or 0),
        min_cc=None if min_cc is None else str(min_cc),
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
    spec: Any, lock: LockLike, facts: HostFacts, data: CompatData,
) -> HostVerdict:
    """Every check for one host; `spec` is a Spec or already `Requirements`."""
    req = spec if isinstance(spec, Requirements) else requirements_from_spec(spec)
    versions = locked_versions(lock, facts)
    ctx = Context(req, versions, facts, data, find_framework(versions, data))
    checks: list[Check] = [
        _python(req, facts),
        _framework(ctx.framework, facts),
    ]
    for name, fn in GPU_CHECKS:
        if not req.gpu_required:
            checks.append(Check(name, Status.PASS, "skipped: gpu.required is false"))
            continue
        checks.append(fn(ctx))
    checks.append(_disk(versions, facts, data))
    return HostVerdict(facts.host, tuple(checks))


def _python(req: Requirements, facts: HostFacts) -> Check:
    if facts.python_minor == req.python:
        return Check("python", Status.PASS, f"python {facts.python_version} matches "
                     f"environment.python {req.python}")
    return Check("python", Status.FAIL, f"host python3 is {facts.python_version} "
                 f"({facts.python_executable}); the spec's environment.python is {req.python}")


def _framework(fw: Framework, facts: HostFacts) -> Check:
    if fw.package is None:
        return Check("framework", Status.PASS, "no TensorFlow in the lock")
    label = f"{fw.package} {fw.version}"
    if fw.build is None:
        return Check("framework", Status.WARN, f"{label} is not in the compatibility data "
                     "(orchestrator/data/compat.json): its Python, CUDA and compute capability "
                     "needs cannot be checked")
    b = fw.build
    if not b.supports_python(facts.python_version):
        return Check("framework", Status.FAIL, f"{label} supports Python {b.python_min}-"
                     f"{b.python_max}; host python3 is {facts.python_version}")
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


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def _join(items: Iterable[str]) -> str:
    return ", ".join(items) or "none"


# --- what the lock asks of the GPU stack ---------------------------------------------------


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


def find_framework(versions: dict[str, str], data: CompatData) -> Framework:
    for name, info in data.tf_packages.items():
        if name in versions:
            version = versions[name]
            return Framework(name, version, info, data.tf_build(version))
    return Framework(None, None, None, None)


def cuda_needs(ctx: Context) -> list[CudaNeed]:
    """CUDA versions the locked stack needs: the TF build's, and the newest nvidia-*-cuNN wheel's.

    The wheels count because `[and-cuda]` ranges (2.20+) let the resolver pick a newer CUDA
    runtime than TF was built with (the 2.21 lock has nvidia-cuda-runtime-cu12 12.9.79).
    """
    fw, needs = ctx.framework, []
    if fw.cuda_build and fw.build is not None:
        cuda = ".".join(str(p) for p in parse_version(fw.build.cuda)[:2])
        needs.append(CudaNeed(fw.label, cuda, parse_version(cuda)[0]))
    wheels: dict[int, tuple[tuple[int, ...], bool, CudaNeed]] = {}
    for name, version in sorted(ctx.versions.items()):
        found = ctx.data.cuda_of_wheel(name, version)
        if found is None:
            continue
        major, mm = found
        need = CudaNeed(f"{name} {version}", mm or str(major), major)
        key = (parse_version(need.cuda), "runtime" in name, need)
        if major not in wheels or key[:2] > wheels[major][:2]:
            wheels[major] = key
    needs.extend(entry[2] for _, entry in sorted(wheels.items()))
    return needs


# --- the GPU checks: each (Context) -> Check ------------------------------------------------

GiB = 1 << 30

NVML_REASONS = {
    "DriverNotLoaded": "NVIDIA driver not loaded (NVMLError_DriverNotLoaded): the kernel module "
                       "is not loaded; install the driver or load the nvidia module",
    "LibRmVersionMismatch": "driver/library version mismatch: reboot or reload the nvidia module "
                            "(NVMLError_LibRmVersionMismatch: the NVML library does not match "
                            "the loaded kernel module, as after a driver upgrade without reboot)",
    "LibraryNotFound": "no NVIDIA driver library (libnvidia-ml.so.1 not found, "
                       "NVMLError_LibraryNotFound): is the NVIDIA driver installed?",
    "GpuIsLost": "a GPU has fallen off the bus (NVMLError_GpuIsLost): the host needs a reset",
    "NoPermission": "no permission to query the GPUs (NVMLError_NoPermission)",
}


def nvml_reason(facts: HostFacts) -> str | None:
    err = facts.nvml_error
    if err is None:
        return None
    short = err.name.removeprefix("NVMLError_")
    return NVML_REASONS.get(short, f"NVML error {err.name} ({err.code}): {err.message}")


def _gpu_unknown(ctx: Context) -> str | None:
    """Why GPU facts are missing, for checks that need them (None: they are there)."""
    err = ctx.facts.nvml_error
    if err is not None:
        return f"not checked: NVML unavailable ({err.name}, see driver)"
    return None if ctx.facts.gpus else "not checked: no GPU found (see gpu-present)"


def _gpu_label(g: Gpu) -> str:
    return f"GPU {g.index} ({g.name}, compute capability {g.compute_capability})"


def _driver(ctx: Context) -> Check:
    f = ctx.facts
    reason = nvml_reason(f)
    if reason is not None:
        return Check("driver", Status.FAIL, reason)
    if f.driver_version is None:
        return Check("driver", Status.FAIL, "NVML reported no driver version")
    cuda = f.cuda_driver_version or ctx.data.max_cuda_for_driver(f.driver_version) or "unknown"
    return Check("driver", Status.PASS,
                 f"NVIDIA driver {f.driver_version} loaded (supports CUDA up to {cuda})")


def _gpu_present(ctx: Context) -> Check:
    reason = nvml_reason(ctx.facts)
    if reason is not None:
        return Check("gpu-present", Status.FAIL, f"no GPU found: {reason}")
    gpus = ctx.facts.gpus
    if not gpus:
        return Check("gpu-present", Status.FAIL, "no GPU found: the NVIDIA driver reports 0 "
                     "devices, and the spec sets gpu.required: true")
    return Check("gpu-present", Status.PASS, f"{len(gpus)} GPU(s): "
                 + ", ".join(f"{g.index}: {g.name}" for g in gpus))


def _gpu_count(ctx: Context) -> Check:
    unknown = _gpu_unknown(ctx)
    if unknown is not None:
        return Check("gpu-count", Status.FAIL, unknown)
    have, want = len(ctx.facts.gpus), ctx.req.gpu_count
    status = Status.PASS if have >= want else Status.FAIL
    return Check("gpu-count", status, f"spec asks for {want} GPU(s) (gpu.count); host has {have}")


def _gpu_memory(ctx: Context) -> Check:
    unknown = _gpu_unknown(ctx)
    if unknown is not None:
        return Check("gpu-memory", Status.FAIL, unknown)
    want = ctx.req.min_memory_gib
    gpus = ctx.facts.gpus
    enough = [g for g in gpus if g.memory_free_bytes >= want * GiB]
    detail = "; ".join(f"GPU {g.index}: {_gib(g.memory_free_bytes)} free of "
                       f"{_gib(g.memory_total_bytes)}" for g in gpus)
    if len(enough) >= ctx.req.gpu_count:
        return Check("gpu-memory", Status.PASS, f"{detail} (gpu.min_memory_gib {want:g})")
    return Check("gpu-memory", Status.FAIL, f"{len(enough)} GPU(s) with >= {want:g} GiB free "
                 f"(gpu.min_memory_gib), {ctx.req.gpu_count} needed: {detail}")


def _cpu_build(ctx: Context) -> Check:
    fw = ctx.framework
    if fw.package is None or fw.info is None:
        return Check("cpu-build", Status.PASS, "no TensorFlow in the lock")
    if not fw.info.cuda_build:
        return Check("cpu-build", Status.FAIL, f"{fw.label} is a CPU-only build (no CUDA "
                     "kernels): it never uses a GPU, and the spec sets gpu.required: true; "
                     f"lock tensorflow[and-cuda]=={fw.version} instead")
    machine = ctx.facts.machine
    if machine not in fw.info.machines:
        return Check("cpu-build", Status.WARN, f"{fw.package} is a CUDA build only on "
                     f"{_join(fw.info.machines)}; this host is {machine or 'unknown'}")
    return Check("cpu-build", Status.PASS, f"{fw.label} is a CUDA build")


def _cuda_driver(ctx: Context) -> Check:
    needs = cuda_needs(ctx)
    driver = ctx.facts.driver_version
    if not needs:
        return Check("cuda-driver", Status.PASS, "nothing in the lock needs CUDA")
    if driver is None:
        return Check("cuda-driver", Status.FAIL, "not checked: no NVIDIA driver (see driver)")
    drv_cuda = ctx.facts.cuda_driver_version or ctx.data.max_cuda_for_driver(driver)
    head = f"driver {driver} supports CUDA up to {drv_cuda or 'unknown'}"
    fails, warns = [], []
    for need in needs:
        floor = ctx.data.min_driver_for_cuda(need.cuda)
        if floor is None:
            warns.append(f"{need.why} needs CUDA {need.cuda}, not in the driver table")
        elif parse_version(driver) < parse_version(floor) or (
                drv_cuda is not None and parse_version(drv_cuda)[0] < need.major):
            fails.append(f"{need.why} needs CUDA {need.cuda} (driver >= {floor})")
        elif drv_cuda is not None and parse_version(drv_cuda) < parse_version(need.cuda):
            own = ctx.data.toolkit_driver(need.cuda) or "unknown"
            warns.append(f"{need.why} needs CUDA {need.cuda}: it runs by minor-version "
                         f"compatibility (driver >= {floor}), but PTX JIT and XLA's ptxas "
                         f"need driver >= {own}")
    if fails:
        # Forward compatibility (cuda-compat) is the only route short of a driver upgrade, and
        # only on data-center GPUs (FACTS.md section 2c): say so rather than decide it here.
        hint = ("upgrade the NVIDIA driver (data-center GPUs may instead use NVIDIA's "
                "cuda-compat forward-compatibility package)")
        return Check("cuda-driver", Status.FAIL, "; ".join([head, *fails, hint]))
    if warns:
        return Check("cuda-driver", Status.WARN, "; ".join([head, *warns]))
    return Check("cuda-driver", Status.PASS, "; ".join(
        [head, *(f"{n.why} needs CUDA {n.cuda}" for n in needs)]))


def _compute_capability(ctx: Context) -> Check:
    unknown = _gpu_unknown(ctx)
    if unknown is not None:
        return Check("compute-capability", Status.FAIL, unknown)
    fw, mins = ctx.framework, []
    if fw.cuda_build and fw.build is not None:
        mins.append((fw.build.min_cc, f"minimum of {fw.label}"))
    if ctx.req.min_cc is not None:
        mins.append((ctx.req.min_cc, "gpu.min_compute_capability"))
    good, bad = [], []
    for g in ctx.facts.gpus:
        below = [f"{cc} ({why})" for cc, why in mins if g.cc < cc_tuple(cc)]
        if below:
            bad.append(f"{_gpu_label(g)} is below {' and '.join(below)}")
        else:
            good.append(g)
    wants = " and ".join(f">= {cc} ({why})" for cc, why in mins) or "no minimum"
    if len(good) < ctx.req.gpu_count:
        return Check("compute-capability", Status.FAIL, "; ".join(bad))
    if bad:
        return Check("compute-capability", Status.WARN, "; ".join(bad) + "; TensorFlow will "
                     f"ignore it, {len(good)} GPU(s) remain")
    return Check("compute-capability", Status.PASS, ", ".join(
        f"GPU {g.index} compute capability {g.compute_capability}" for g in good) + f" {wants}")


def _kernels(ctx: Context) -> Check:
    fw = ctx.framework
    if not fw.cuda_build:
        return Check("kernels", Status.PASS, "no TensorFlow CUDA build in the lock")
    if fw.build is None:
        return Check("kernels", Status.WARN, f"not checked: {fw.label} is not in the data")
    unknown = _gpu_unknown(ctx)
    if unknown is not None:
        return Check("kernels", Status.FAIL, unknown)
    b = fw.build
    verdicts = [_kernels_for(g, b, fw.label, ctx.data.jit_unsupported_source)
                for g in ctx.facts.gpus if g.cc >= cc_tuple(b.min_cc)]
    if not verdicts:
        return Check("kernels", Status.FAIL, f"no GPU at or above {b.min_cc} ({fw.label})")
    worst = max((s for s, _ in verdicts), key=_RANK.__getitem__)
    return Check("kernels", worst, "; ".join(m for _, m in verdicts))


def _kernels_for(g: Gpu, b: TfBuild, label: str, jit_source: str) -> tuple[Status, str]:
    native = [s for s in b.sass if cc_tuple(s)[0] == g.cc[0] and cc_tuple(s) <= g.cc]
    if native:
        arch = max(native, key=cc_tuple).replace(".", "")
        return Status.PASS, f"{_gpu_label(g)}: native kernels (sm_{arch}) in {label}"
    ptx = [p for p in b.ptx if cc_tuple(p) <= g.cc]
    if not ptx:
        return Status.FAIL, f"{_gpu_label(g)}: {label} has no kernels for it"
    arch = "compute_" + max(ptx, key=cc_tuple).replace(".", "")
    if b.jit_unsupported_from_cc is not None and g.cc >= cc_tuple(b.jit_unsupported_from_cc):
        return Status.FAIL, (f"{_gpu_label(g)}: {label} has no kernels for it, only PTX {arch}, "
                             f"and JIT from it is known to fail there ({jit_source})")
    return Status.WARN, (f"{_gpu_label(g)}: {label} has no native kernels for it (SASS "
                         f"{_join(b.sass)}); CUDA kernels will be JIT-compiled from PTX {arch} at "
                         "first load, which can take 30 minutes or longer")


def _cuda_libraries(ctx: Context) -> Check:
    """cuDNN and the CUDA runtime TF dlopens: from the lock's nvidia-* wheels, else the host's.
    Missing ones make TF fall back to the CPU silently; an older minor than TF was built with
    fails at the first convolution ("Loaded runtime CuDNN library: X but source was compiled
    with: Y", FACTS.md section 5)."""
    fw = ctx.framework
    if not fw.cuda_build:
        return Check("cuda-libraries", Status.PASS, "no TensorFlow CUDA build in the lock")
    if fw.build is None:
        return Check("cuda-libraries", Status.WARN, f"not checked: {fw.label} is not in the data")
    b = fw.build
    floors = {"cudnn": b.cudnn, "cudart": ".".join(str(p) for p in parse_version(b.cuda)[:2])}
    results = [_library(lib, floors.get(lib.name), ctx) for lib in b.libraries]
    missing = [lib for lib, (status, _) in zip(b.libraries, results, strict=True) if status is None]
    parts = [text for status, text in results if status is not None]
    if missing:
        parts.append(f"{fw.label} needs {_join(m.soname for m in missing)}: neither in the lock "
                     f"({_join(w for m in missing for w in m.wheels)}) nor on the host; lock "
                     f"tensorflow[and-cuda]=={fw.version} or install them on the host")
    statuses = [Status.FAIL if s is None else s for s, _ in results]
    worst = max(statuses, key=_RANK.__getitem__, default=Status.PASS)
    return Check("cuda-libraries", worst, "; ".join(parts))


def _library(lib: RequiredLibrary, floor: str | None,
             ctx: Context) -> tuple[Status | None, str]:
    """(status, text) for one library; status None: found nowhere."""
    label = ctx.framework.label
    wheel = next((w for w in lib.wheels if w in ctx.versions), None)
    if wheel is not None:
        version, where = ctx.versions[wheel], f"from {wheel}"
    else:
        host = [h for h in ctx.facts.libraries if h.name == lib.name]
        right = [h for h in host if h.path.endswith(lib.soname) or (
            h.version is not None and parse_version(h.version)[:1] == (lib.major,))]
        if not right:
            return None, ""
        version, where = right[0].version or "", f"on the host ({right[0].path})"
    if version and parse_version(version)[:1] != (lib.major,):
        return Status.FAIL, f"{lib.name} {version} {where} is not {lib.major}.x ({lib.soname})"
    text = f"{lib.soname} {version} {where}".replace("  ", " ")
    if version and floor and parse_version(version) < parse_version(floor):
        return Status.WARN, (f"{text} is older than the {lib.name} {floor} {label} was built "
                             "with: expect failures at first use")
    return Status.PASS, text


GPU_CHECKS: tuple[tuple[str, Callable[[Context], Check]], ...] = (
    ("driver", _driver),
    ("gpu-present", _gpu_present),
    ("gpu-count", _gpu_count),
    ("gpu-memory", _gpu_memory),
    ("cpu-build", _cpu_build),
    ("cuda-driver", _cuda_driver),
    ("compute-capability", _compute_capability),
    ("kernels", _kernels),
    ("cuda-libraries", _cuda_libraries),
)
