"""The GPU checks of the preflight, each a pure function (Context) -> Check, in one registry
(`GPU_CHECKS`, in the order they are reported): the driver and NVML state, the GPUs' presence,
count, memory and compute capability, the CUDA the locked build needs against what the driver
supports, its kernels, and the CUDA libraries it loads. A new GPU check is a function here and a
row of `GPU_CHECKS` (and its fixtures in tests/test_preflight.py)."""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.core import gpuhealth
from orchestrator.core.compat import RequiredLibrary, TfBuild, cc_tuple, parse_version
from orchestrator.core.facts import Gpu, HostFacts
from orchestrator.core.gpufacts import MigInstance
from orchestrator.core.verdict import RANK as _RANK
from orchestrator.core.verdict import Check, Context, CudaNeed, Status
from orchestrator.core.verdict import gib as _gib
from orchestrator.core.verdict import join_or_none as _join


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
    needs.extend(ctx.declared_cuda)
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
    profile = ctx.req.mig_profile
    if profile is not None:
        return _mig_count(ctx, profile)
    status = Status.PASS if have >= want else Status.FAIL
    return Check("gpu-count", status, f"spec asks for {want} GPU(s) (gpu.count); host has {have}")


def _mig_count(ctx: Context, profile: str) -> Check:
    """gpu.count MIG instances of gpu.mig_profile, whatever their health (gpu-health judges
    that); each GPU's partition named, so an operator sees what to create."""
    want = ctx.req.gpu_count
    have = len(_mig_instances(ctx.facts, profile))
    layout = "; ".join(f"GPU {g.index}: " + (gpuhealth.profiles_of(g) if g.health.mig_mode
                                             else "not in MIG mode") for g in ctx.facts.gpus)
    text = (f"spec asks for {want} MIG instance(s) of profile {profile} (gpu.count, "
            f"gpu.mig_profile); host has {have} ({layout})")
    if have < want:
        return Check("gpu-count", Status.FAIL, text + "; create them with nvidia-smi mig -cgi "
                     f"{profile} -C, or change gpu.mig_profile")
    if want > 1:  # NVIDIA's MIG user guide, "CUDA device enumeration"
        return Check("gpu-count", Status.WARN, text + "; a CUDA process enumerates only one "
                     "MIG device: the model's process uses the first of them")
    return Check("gpu-count", Status.PASS, text)


def _mig_instances(facts: HostFacts, profile: str) -> list[MigInstance]:
    return [m for g in facts.gpus for m in g.health.mig_instances if m.profile == profile]


def _gpu_memory(ctx: Context) -> Check:
    unknown = _gpu_unknown(ctx)
    if unknown is not None:
        return Check("gpu-memory", Status.FAIL, unknown)
    want = ctx.req.min_memory_gib
    gpus = ctx.facts.gpus
    if ctx.req.mig_profile is not None:
        migs = _mig_instances(ctx.facts, ctx.req.mig_profile)
        fits = [m for m in migs if m.memory_free_bytes >= want * GiB]
        detail = "; ".join(f"MIG {m.uuid} ({m.profile}): {_gib(m.memory_free_bytes)} free of "
                           f"{_gib(m.memory_total_bytes)}" for m in migs) or "no MIG instance"
        status = Status.PASS if len(fits) >= ctx.req.gpu_count else Status.FAIL
        return Check("gpu-memory", status, f"{len(fits)} MIG instance(s) with >= {want:g} GiB "
                     f"free (gpu.min_memory_gib), {ctx.req.gpu_count} needed: {detail}")
    enough = [g for g in gpus if g.memory_free_bytes >= want * GiB]
    detail = "; ".join(f"GPU {g.index}: {_gib(g.memory_free_bytes)} free of "
                       f"{_gib(g.memory_total_bytes)}" for g in gpus)
    if len(enough) >= ctx.req.gpu_count:
        return Check("gpu-memory", Status.PASS, f"{detail} (gpu.min_memory_gib {want:g})")
    return Check("gpu-memory", Status.FAIL, f"{len(enough)} GPU(s) with >= {want:g} GiB free "
                 f"(gpu.min_memory_gib), {ctx.req.gpu_count} needed: {detail}")


def _gpu_health(ctx: Context) -> Check:
    """Placement on healthy GPUs (orchestrator/core/gpuhealth.py): fail when fewer than gpu.count
    GPUs are healthy with enough free memory, warn when sick ones were passed over."""
    unknown = _gpu_unknown(ctx)
    if unknown is not None:
        return Check("gpu-health", Status.FAIL, unknown)
    req = ctx.req
    placed = gpuhealth.place(ctx.facts, req.gpu_count, req.min_memory_gib, req.health,
                             req.mig_profile)
    sick = [g for g, _ in placed.passed_over
            if gpuhealth.sick(ctx.facts, g, req.health, req.mig_profile)]
    status = Status.FAIL if not placed.ok else Status.WARN if sick else Status.PASS
    xid = ctx.facts.xid
    note = "" if not xid.reported or xid.source else f" (Xid events unknown: {xid.error})"
    return Check("gpu-health", status, placed.describe() + note)


def _gpu_conditions(ctx: Context) -> Check:
    """What slows a GPU down without making it sick: warn, or what gpu.health says."""
    unknown = _gpu_unknown(ctx)
    if unknown is not None:
        return Check("gpu-conditions", Status.FAIL, unknown)
    found = [a for g in ctx.facts.gpus for a in gpuhealth.advisories(g, ctx.req.health)]
    if not found:
        return Check("gpu-conditions", Status.PASS, "no throttling, ECC, persistence, PCIe or "
                     "foreign-process condition reported")
    status = Status.FAIL if any(a.advice == "fail" for a in found) else Status.WARN
    return Check("gpu-conditions", status, "; ".join(a.message for a in found))


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
    ("gpu-health", _gpu_health),
    ("gpu-conditions", _gpu_conditions),
    ("cpu-build", _cpu_build),
    ("cuda-driver", _cuda_driver),
    ("compute-capability", _compute_capability),
    ("kernels", _kernels),
    ("cuda-libraries", _cuda_libraries),
)
