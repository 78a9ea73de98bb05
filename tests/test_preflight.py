"""The preflight from data fixtures: facts per testbed profile x real lock files -> verdicts."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from orchestrator.core.compat import load_compat
from orchestrator.core.facts import HostFacts, Library, parse_facts
from orchestrator.core.lockfile import lint_requirements, load_lock
from orchestrator.core.preflight import (
    Check,
    HostVerdict,
    LockLike,
    Requirements,
    Status,
    locked_versions,
    preflight,
    requirements_from_spec,
)

FIXTURES = Path(__file__).parent / "fixtures"
GPU = Requirements(python="3.11", gpu_required=True, gpu_count=1, min_memory_gib=8, min_cc="7.0")
CPU = Requirements(python="3.11")


@dataclass(frozen=True)
class Pkg:
    name: str
    version: str


@dataclass(frozen=True)
class Lock:
    packages: tuple[Pkg, ...]


def lock(name: str) -> LockLike:
    """A real lock fixture, through the real lock-file linter."""
    return load_lock(FIXTURES / "locks" / name)


def pins(**versions: str) -> Lock:
    return Lock(tuple(Pkg(n.replace("_", "-"), v) for n, v in versions.items()))


def facts(profile: str) -> HostFacts:
    return parse_facts(f"gpu-{profile}", (FIXTURES / "facts" / f"{profile}.json").read_text())


def run(profile: str, lock_: LockLike, req: Requirements = GPU) -> HostVerdict:
    return preflight(req, lock_, facts(profile), load_compat())


def check(verdict: HostVerdict, name: str) -> Check:
    return next(c for c in verdict.checks if c.name == name)


TF_GPU = "tensorflow-2.21-gpu.lock"
TF_CPU = "tensorflow-cpu-2.21.lock"
NAMES = ["python", "framework", "driver", "gpu-present", "gpu-count", "gpu-memory", "gpu-health",
         "gpu-conditions", "cpu-build", "cuda-driver", "compute-capability", "kernels",
         "cuda-libraries", "disk"]


def test_h100_passes_for_the_tensorflow_2_21_gpu_lock() -> None:
    v = run("h100", lock(TF_GPU))
    assert [c.name for c in v.checks] == NAMES
    assert v.ok, v.reasons()
    # the [and-cuda] wheels provide cuDNN and cudart: nothing is needed on the host
    assert "libcudnn.so.9 9.28.0.42 from nvidia-cudnn-cu12" in check(v, "cuda-libraries").message
    assert check(v, "kernels").status is Status.PASS and "sm_90" in check(v, "kernels").message
    # the lock resolved CUDA runtime 12.9 > the driver's 12.4: minor-version compat, with a warning
    cd = check(v, "cuda-driver")
    assert cd.status is Status.WARN
    assert "driver 550.54.15 supports CUDA up to 12.4" in cd.message
    assert "nvidia-cuda-runtime-cu12 12.9.79 needs CUDA 12.9" in cd.message
    assert "575.51.03" in cd.message


def test_old_driver_fails_naming_driver_and_cuda_versions() -> None:
    v = run("old-driver", lock(TF_GPU))
    assert not v.ok
    assert check(v, "cuda-driver").message.startswith(
        "driver 470.82.01 supports CUDA up to 11.4; tensorflow 2.21.0 needs CUDA 12.5 "
        "(driver >= 525.60.13)")
    assert "gpu-old-driver: driver 470.82.01 supports CUDA up to 11.4" in v.reasons()[0]


def test_t4_passes_with_native_sm70_kernels() -> None:
    v = run("t4", lock(TF_GPU))
    assert v.ok, v.reasons()
    assert "sm_70" in check(v, "kernels").message


@pytest.mark.parametrize(("profile", "reason"), [
    ("no-gpu", "no NVIDIA driver library"),
    ("no-driver", "NVIDIA driver not loaded"),
    ("mismatch", "driver/library version mismatch: reboot or reload the nvidia module"),
])
def test_nvml_errors_fail_with_their_reason(profile: str, reason: str) -> None:
    v = run(profile, lock(TF_GPU))
    assert check(v, "driver").status is Status.FAIL and reason in check(v, "driver").message
    assert reason in check(v, "gpu-present").message
    # checks that need GPU facts fail as "not checked", never pass on facts nobody saw
    for name in ("gpu-count", "gpu-memory", "compute-capability", "kernels", "cuda-driver"):
        assert check(v, name).status is Status.FAIL
        assert check(v, name).message.startswith("not checked")


def test_zero_gpus_fails_with_its_reason() -> None:
    v = run("zero-gpus", lock(TF_GPU))
    assert check(v, "driver").status is Status.PASS
    gp = check(v, "gpu-present")
    assert gp.status is Status.FAIL and "no GPU found" in gp.message


def test_cpu_only_tensorflow_for_a_gpu_spec_fails_naming_the_build() -> None:
    v = run("h100", lock(TF_CPU))
    c = check(v, "cpu-build")
    assert c.status is Status.FAIL
    assert "tensorflow-cpu 2.21.0 is a CPU-only build" in c.message
    assert "tensorflow[and-cuda]==2.21.0" in c.message


def test_cpu_spec_skips_gpu_checks_and_passes_on_a_host_without_gpu() -> None:
    v = run("zero-gpus", lock(TF_CPU), CPU)
    assert v.status is Status.PASS, v.reasons()
    assert check(v, "driver").message == "skipped: gpu.required is false"
    assert run("no-gpu", lock(TF_GPU), CPU).ok


def test_python_mismatch_fails_naming_both_versions() -> None:
    v = run("h100", lock(TF_GPU), replace(GPU, python="3.12"))
    c = check(v, "python")
    assert c.status is Status.FAIL and "3.11.2" in c.message and "3.12" in c.message


def test_python_outside_the_tensorflow_range_fails() -> None:
    v = run("old-python", lock(TF_GPU), replace(GPU, python="3.9"))
    assert check(v, "python").status is Status.PASS
    fw = check(v, "framework")
    assert fw.status is Status.FAIL and "Python 3.10-3.13" in fw.message and "3.9.2" in fw.message


def test_gpu_wheels_without_and_cuda_need_host_libraries() -> None:
    bare = Lock(tuple(Pkg(p.name, p.version) for p in lock(TF_GPU).packages
                      if not p.name.startswith("nvidia-")))
    c = check(run("h100", bare), "cuda-libraries")
    assert c.status is Status.FAIL
    assert "libcudnn.so.9" in c.message and "libcudart.so.12" in c.message
    host = check(run("h100-host-libs", bare), "cuda-libraries")
    assert host.status is Status.PASS and "/usr/lib/x86_64-linux-gnu/libcudnn.so.9" in host.message


def test_wrong_cudnn_major_in_the_lock_fails() -> None:
    c = check(run("h100", pins(tensorflow="2.21.0", nvidia_cudnn_cu12="8.9.7.29",
                               nvidia_cuda_runtime_cu12="12.5.82")), "cuda-libraries")
    assert c.status is Status.FAIL
    assert "cudnn 8.9.7.29 from nvidia-cudnn-cu12 is not 9.x (libcudnn.so.9)" in c.message


def test_host_cudnn_older_than_the_build_warns_and_wrong_major_is_missing() -> None:
    bare = Lock(tuple(Pkg(p.name, p.version) for p in lock(TF_GPU).packages
                      if not p.name.startswith("nvidia-")))
    base = facts("h100-host-libs")
    cudart = base.libraries[1]
    old = replace(base, libraries=(Library("cudnn", "/usr/lib/libcudnn.so.9", "9.1.0"), cudart))
    c = preflight(GPU, bare, old, load_compat()).checks
    lib = next(x for x in c if x.name == "cuda-libraries")
    assert lib.status is Status.WARN
    assert "libcudnn.so.9 9.1.0" in lib.message and "older than the cudnn 9.3" in lib.message
    eight = replace(base, libraries=(Library("cudnn", "/usr/lib/libcudnn.so.8", "8.9.7"), cudart))
    lib = next(x for x in preflight(GPU, bare, eight, load_compat()).checks
               if x.name == "cuda-libraries")
    assert lib.status is Status.FAIL and "needs libcudnn.so.9: neither in the lock" in lib.message


def test_h100_on_tensorflow_2_15_warns_about_ptx_jit() -> None:
    k = check(run("h100", pins(tensorflow="2.15.0", nvidia_cudnn_cu12="8.9.4.25",
                               nvidia_cuda_runtime_cu12="12.2.140")), "kernels")
    assert k.status is Status.WARN
    assert "JIT-compiled from PTX compute_80" in k.message and "30 minutes" in k.message


def test_blackwell_fails_for_ptx_only_tensorflow() -> None:
    k = check(run("blackwell", lock(TF_GPU)), "kernels")
    assert k.status is Status.FAIL and "compute capability 12.0" in k.message


def test_compute_capability_below_spec_minimum_fails() -> None:
    v = run("t4", lock(TF_GPU), replace(GPU, min_cc="8.0"))
    c = check(v, "compute-capability")
    assert c.status is Status.FAIL and "7.5" in c.message and "8.0 (gpu.min_compute_capability)" \
        in c.message


def test_gpu_count_and_memory() -> None:
    v = run("t4", lock(TF_GPU), replace(GPU, gpu_count=2, min_memory_gib=32))
    assert check(v, "gpu-count").status is Status.FAIL
    assert "asks for 2" in check(v, "gpu-count").message
    mem = check(v, "gpu-memory")
    assert mem.status is Status.FAIL and "15.0 GiB free of 16.0 GiB" in mem.message


def test_small_disk_fails_with_the_estimate() -> None:
    d = check(run("small-disk", lock(TF_GPU)), "disk")
    assert d.status is Status.FAIL and "2.0 GiB free at /srv/models" in d.message


def test_unknown_tensorflow_version_warns_instead_of_crashing() -> None:
    v = run("h100", pins(tf_nightly="2.23.0.dev20261101"))
    assert check(v, "framework").status is Status.WARN
    assert "not in the compatibility data" in check(v, "framework").message
    assert v.ok


def test_requirements_from_spec_reads_the_spec_shape() -> None:
    @dataclass
    class Env:
        python: str = "3.11"

    @dataclass
    class Gpu:
        required: bool = True
        count: int = 2
        min_memory_gib: float | None = None
        min_compute_capability: str | None = "8.0"

    @dataclass
    class Spec:
        environment: Env
        gpu: Gpu

    # Any object of the Spec's shape (requirements_from_spec reads environment and gpu only).
    gpu, cpu = Spec(Env(), Gpu()), Spec(Env(), Gpu(required=False))
    assert requirements_from_spec(gpu) == Requirements("3.11", True, 2, 0.0, "8.0")  # type: ignore[arg-type]
    assert requirements_from_spec(cpu) == Requirements("3.11")  # type: ignore[arg-type]


def test_verdict_to_dict_is_json_ready() -> None:
    d = run("old-driver", lock(TF_GPU)).to_dict()
    assert d["status"] == "fail" and d["host"] == "gpu-old-driver"
    assert {c["status"] for c in d["checks"]} <= {"pass", "warn", "fail"}


def test_packages_whose_marker_excludes_the_host_are_left_out() -> None:
    digest = "--hash=sha256:" + "a" * 64
    text = (f'tensorflow==2.21.0 ; python_version >= "3.10" {digest}\n'
            f'tensorflow==2.15.0 ; python_version < "3.10" {digest}\n'
            f'tensorflow-cpu==2.21.0 ; platform_machine == "aarch64" {digest}\n')
    locked = lint_requirements(text.encode(), "universal.lock").lock
    assert locked is not None
    v = run("h100", locked)
    assert check(v, "framework").message.startswith("tensorflow 2.21.0:")
    assert locked_versions(locked, facts("h100")) == {"tensorflow": "2.21.0"}
    assert locked_versions(locked)["tensorflow"] == "2.15.0"  # without a host: no filtering


RECORDED = {  # recorded testbed probe output -> (verdict, {failing check: words it must name})
    "h100": (Status.WARN, {}),
    "t4": (Status.WARN, {}),
    "old-driver": (Status.FAIL, {"cuda-driver": "driver 470.82.01 supports CUDA up to 11.4"}),
    "no-driver": (Status.FAIL, {"driver": "NVIDIA driver not loaded"}),
    "no-gpu": (Status.FAIL, {"driver": "no NVIDIA driver library"}),
    "mismatch": (Status.FAIL, {"driver": "driver/library version mismatch"}),
}


@pytest.mark.parametrize("profile", sorted(RECORDED))
def test_recorded_probe_outputs_give_their_verdicts(profile: str) -> None:
    text = (FIXTURES / "probe" / f"{profile}.json").read_text()
    req = replace(GPU, python=parse_facts(profile, text).python_minor)
    v = preflight(req, lock(TF_GPU), parse_facts(profile, text), load_compat())
    status, words = RECORDED[profile]
    assert v.status is status, v.reasons()
    for name, text_ in words.items():
        assert check(v, name).status is Status.FAIL and text_ in check(v, name).message
