"""The preflight's checks of an OCI image environment (pure: `ImageInfo` and host facts in, a
`Check` out), called by orchestrator/core/preflight.py when the spec's environment is an image.

- `engine`: docker or podman answers on the host (the probe's `engines`), and with
  `gpu.required` it has the NVIDIA runtime or CDI nvidia.com/gpu devices.
- `python`: the image brings its own Python; the spec's `environment.python`, when given,
  must be the image's (from its config's PYTHON_VERSION or its lib/python3.N directory).
- `image-cuda`: an image declaring `NVIDIA_REQUIRE_CUDA` (CUDA base images do) is started by
  the NVIDIA Container Toolkit only when the driver satisfies it, and the toolkit compares the
  driver's own CUDA version (what NVML reports) with no minor-version compatibility: a
  `cuda>=12.8` image does not start on a 12.4 driver even though 12.x code would run there.
  So the check is strict, as the toolkit is, and names both versions. Grammar (the toolkit's):
  space-separated alternatives are ORed, comma-separated constraints in one are ANDed, each
  `key op version` with key cuda | driver | arch | brand. An alternative with `arch` or `brand`
  (forward compatibility on data-center GPUs) is not judged here: it cannot hold. Without the
  variable (or with `NVIDIA_DISABLE_REQUIRE` true) the image's `CUDA_VERSION` joins the CUDA
  needs of the `cuda-driver` check, judged like a venv's CUDA wheels (`cuda_need`).
- `disk`: the archive is shipped and loaded: about twice its layers' size must be free.
"""

from __future__ import annotations

import re

from orchestrator.core.compat import CompatData, parse_version
from orchestrator.core.facts import HostFacts
from orchestrator.core.ociimage import ImageInfo
from orchestrator.core.verdict import Check, CudaNeed, Requirements, Status
from orchestrator.core.verdict import gib as _gib

_TERM = re.compile(r"^(cuda|driver|arch|brand)(>=|<=|==|=|>|<)([A-Za-z0-9._-]+)$")
_TRUE = {"1", "true", "yes", "on"}
DISK_FACTOR = 2  # the archive on the host while it loads, and the loaded layers


def require_cuda(image: ImageInfo) -> str | None:
    """The image's NVIDIA_REQUIRE_CUDA, unless NVIDIA_DISABLE_REQUIRE turns it off."""
    if image.env.get("NVIDIA_DISABLE_REQUIRE", "").strip().lower() in _TRUE:
        return None
    value = image.env.get("NVIDIA_REQUIRE_CUDA", "").strip()
    return value or None


def cuda_need(image: ImageInfo) -> CudaNeed | None:
    """The image's CUDA_VERSION as a CUDA need judged like a venv's (minor-version
    compatibility applies), when no NVIDIA_REQUIRE_CUDA makes the toolkit judge it strictly."""
    if require_cuda(image) is not None:
        return None
    declared = image.env.get("CUDA_VERSION", "")
    parts = parse_version(declared)
    if not parts:
        return None
    cuda = ".".join(str(p) for p in parts[:2])
    return CudaNeed(f"the image's CUDA_VERSION={declared}", cuda, parts[0])


def python_check(req: Requirements, image: ImageInfo) -> Check:
    have = image.python
    found = f"the image's Python is {have}" if have else (
        "the image's Python is not known (no PYTHON_VERSION, lib/python3.N directories: "
        f"{', '.join(image.pythons) or 'none'})")
    if req.python is None:
        return Check("python", Status.PASS if have else Status.WARN,
                     f"{found}; the spec names none (environment.python)")
    if have == req.python:
        return Check("python", Status.PASS, f"{found}, matching environment.python "
                                            f"{req.python}")
    if have is None and req.python in image.pythons:
        return Check("python", Status.PASS, f"the image holds Python {req.python} "
                                            "(environment.python) among others")
    return Check("python", Status.FAIL if have else Status.WARN,
                 f"{found}; the spec's environment.python is {req.python}")


def engine_check(req: Requirements, facts: HostFacts) -> Check:
    """`engine`: a container engine answers on the host and, for a GPU deployment, can give
    the container the host's GPUs (an NVIDIA runtime, or CDI nvidia.com/gpu devices)."""
    engine = facts.engine
    if engine is None:
        seen = "; ".join(f"{e.name}: {e.error}" for e in facts.engines)
        return Check("engine", Status.FAIL, "no container engine answers on the host (docker "
                     f"or podman is needed to run an image){': ' + seen if seen else ''}")
    gpu = (f"NVIDIA runtime {'configured' if engine.nvidia_runtime else 'not configured'}, "
           f"CDI devices: {', '.join(engine.cdi_devices) or 'none'}")
    if req.gpu_required and not engine.gpu_ready:
        return Check("engine", Status.FAIL, f"{engine.label}: {gpu}: the container would get "
                     "no GPU (install the NVIDIA Container Toolkit and run `nvidia-ctk cdi "
                     "generate`, or configure its runtime)")
    return Check("engine", Status.PASS, f"{engine.label} at {engine.path}; {gpu}")


def cuda_check(req: Requirements, image: ImageInfo, facts: HostFacts,
               data: CompatData) -> Check:
    """`image-cuda`: NVIDIA_REQUIRE_CUDA against the host's driver, strictly (module doc)."""
    constraint = require_cuda(image)
    if constraint is None:
        return Check("image-cuda", Status.PASS, "the image declares no NVIDIA_REQUIRE_CUDA"
                     + (f"; CUDA_VERSION={image.env['CUDA_VERSION']} is judged in cuda-driver"
                        if image.env.get("CUDA_VERSION") else ""))
    if not req.gpu_required:
        return Check("image-cuda", Status.PASS, f"skipped: gpu.required is false (the container "
                     f"gets no GPU, so NVIDIA_REQUIRE_CUDA={constraint} is not checked)")
    driver = facts.driver_version
    if driver is None:
        return Check("image-cuda", Status.FAIL, f"not checked: no NVIDIA driver (see driver); "
                     f"the image requires {constraint}")
    cuda = facts.cuda_driver_version or data.max_cuda_for_driver(driver)
    try:
        ok, unjudged = satisfied(constraint, driver, cuda)
    except ValueError as exc:
        return Check("image-cuda", Status.FAIL, f"the image's NVIDIA_REQUIRE_CUDA="
                     f"{constraint!r} cannot be read: {exc}")
    head = f"driver {driver} supports CUDA {cuda or 'unknown'}"
    if ok:
        return Check("image-cuda", Status.PASS, f"{head}: the image's NVIDIA_REQUIRE_CUDA="
                     f"{constraint} holds")
    floor = _needed_cuda(constraint)
    upgrade = data.min_driver_for_cuda(floor, minor_compat=False) if floor else None
    return Check("image-cuda", Status.FAIL, "; ".join(filter(None, [
        f"the image requires {constraint} (NVIDIA_REQUIRE_CUDA) but {head}",
        "the NVIDIA Container Toolkit refuses to start it: this constraint is checked "
        "against the driver's CUDA version, without minor-version compatibility",
        f"upgrade the driver to >= {upgrade}" if upgrade else "upgrade the NVIDIA driver",
        f"not judged here: {', '.join(unjudged)}" if unjudged else ""])))


def satisfied(constraint: str, driver: str, cuda: str | None) -> tuple[bool, list[str]]:
    """Whether any alternative of `constraint` holds for (driver, CUDA), and the alternatives
    not judged (arch, brand). ValueError for a term that is not `key op version`."""
    unjudged: list[str] = []
    for alternative in constraint.split():
        terms = [_term(t) for t in alternative.split(",") if t]
        if any(key in ("arch", "brand") for key, _, _ in terms):
            unjudged.append(alternative)
            continue
        if all(_holds(key, op, want, driver, cuda) for key, op, want in terms):
            return True, unjudged
    return False, unjudged


def disk_check(image: ImageInfo, facts: HostFacts) -> Check:
    need = image.size_bytes * DISK_FACTOR
    text = (f"about {_gib(need)} needed to ship and load the image ({image.layers} layers, "
            f"{_gib(image.size_bytes)}); {_gib(facts.disk_free_bytes)} free at "
            f"{facts.disk_path}")
    if facts.disk_free_bytes < need:
        return Check("disk", Status.FAIL, f"not enough disk: {text}")
    return Check("disk", Status.PASS, text)


def _term(text: str) -> tuple[str, str, str]:
    m = _TERM.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not KEY OP VERSION (cuda, driver, arch, brand)")
    return m.group(1), m.group(2), m.group(3)


def _holds(key: str, op: str, want: str, driver: str, cuda: str | None) -> bool:
    have = driver if key == "driver" else cuda
    if have is None:
        return False
    a, b = _padded(parse_version(have), parse_version(want))
    return {">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b, "=": a == b,
            "==": a == b}[op]


def _padded(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    n = max(len(a), len(b))
    return a + (0,) * (n - len(a)), b + (0,) * (n - len(b))


def _needed_cuda(constraint: str) -> str | None:
    """The lowest CUDA version a `cuda>=X` term of the constraint asks for (for the hint)."""
    found = [m.group(1) for m in re.finditer(r"(?:^|[\s,])cuda>=?([0-9.]+)", constraint)]
    return min(found, key=parse_version) if found else None


__all__ = ["cuda_check", "cuda_need", "disk_check", "engine_check", "python_check", "require_cuda",
           "satisfied"]
