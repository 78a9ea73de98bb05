"""GPU compatibility facts as data: TensorFlow builds, CUDA drivers, disk estimates.

The facts live in `orchestrator/data/compat.json`, one row per TensorFlow release and per CUDA
toolkit release, each table with its source (../shared/compat/FACTS.md has the evidence). This
module loads them into frozen dataclasses and answers the few questions the preflight asks:

    data = load_compat()
    data.tf_build("2.21.0")              -> TfBuild (CUDA 12.5.1, cuDNN 9.3, SASS/PTX archs, ...)
    data.min_driver_for_cuda("12.5")     -> "525.60.13"   (minor-version compatibility, Table 2)
    data.min_driver_for_cuda("12.5.1", minor_compat=False) -> "555.42.06"  (its toolkit, Table 3)
    data.max_cuda_for_driver("470.82.01") -> "11.4"

Unknown versions give None, never an exception: the preflight turns that into a warning.
Nothing here does I/O except `load_compat`, which reads the packaged file once.

Extending the data (no code change): a new TensorFlow release is one more object in
`tensorflow.builds` (version, python_min/max, cuda as in its build_info.py, tested cudnn,
sass/ptx as compute capabilities read from the wheel, the [and-cuda] ranges, the libraries it
dlopens with the wheels that provide them, source); a new CUDA toolkit is one more row of
`cuda.toolkit_drivers` (Table 3); a new CUDA major one more `cuda.minor_version_compat` row
(Table 2); another TensorFlow distribution name one more `tensorflow.packages` entry; disk
estimates are bytes per package name. tests/test_compat.py checks every row names its source.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from orchestrator.errors import InvalidInput

DATA_FILE = "compat.json"


@functools.lru_cache(maxsize=4096)  # hot in the preflight: the same few strings, many hosts
def parse_version(text: str) -> tuple[int, ...]:
    """Dotted numeric prefix: "550.54.15" -> (550, 54, 15); "2.22.0.dev2026" -> (2, 22, 0)."""
    parts: list[int] = []
    for piece in text.split("."):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break  # "0rc1", "0dev": the numeric part counts, the rest ends the version
    return tuple(parts)


def major_minor(text: str) -> str:
    """ "12.5.1" -> "12.5"; "9" -> "9"."""
    return ".".join(str(p) for p in parse_version(text)[:2])


def cc_tuple(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


@dataclass(frozen=True)
class RequiredLibrary:
    """A CUDA user-space library a framework build dlopens, and the wheels that provide it."""

    name: str  # "cudnn", "cudart": the names the probe reports in `libraries`
    soname: str  # "libcudnn.so.9"
    major: int
    wheels: tuple[str, ...]  # e.g. ("nvidia-cudnn-cu12",)


@dataclass(frozen=True)
class TfBuild:
    """One TensorFlow release's Linux x86_64 GPU build."""

    version: str
    python_min: str
    python_max: str
    cuda: str  # what it was built with, e.g. "12.5.1"
    cudnn: str  # tested cuDNN major.minor, e.g. "9.3"
    sass: tuple[str, ...]  # native kernels, as compute capabilities "8.9"
    ptx: tuple[str, ...]  # PTX the driver can JIT for any CC >= it
    and_cuda: tuple[tuple[str, str], ...]  # (wheel, version specifier) pulled by [and-cuda]
    libraries: tuple[RequiredLibrary, ...]
    jit_unsupported_from_cc: str | None  # JIT from PTX is known to fail from this CC on
    source: str

    @property
    def min_cc(self) -> str:
        """The lowest compute capability the build has any code for (TF ignores GPUs below it)."""
        return min((*self.sass, *self.ptx), key=cc_tuple)

    def supports_python(self, version: str) -> bool:
        mm = parse_version(version)[:2]
        return parse_version(self.python_min) <= mm <= parse_version(self.python_max)


@dataclass(frozen=True)
class TfPackage:
    """A distribution name of TensorFlow, and whether it is a CUDA build at all."""

    name: str
    cuda_build: bool
    machines: tuple[str, ...]  # platform.machine() values the CUDA build exists for
    source: str


@dataclass(frozen=True)
class ToolkitDriver:
    """Table 3: the minimum Linux x86_64 driver of one CUDA toolkit release."""

    cuda: str
    release: str  # "GA", "Update 1", "GA (11.4.0)", ...
    min_driver: str
    source: str


@dataclass(frozen=True)
class MinorCompat:
    """Table 2: from CUDA 11 on, a CUDA x.* app runs on any driver >= min_driver of major x."""

    cuda_major: int
    min_driver: str | None  # None: no minor-version compatibility (CUDA <= 10)
    note: str
    source: str


@dataclass(frozen=True)
class DiskEstimates:
    default_package_bytes: int
    margin_ratio: float
    package_bytes: dict[str, int]
    source: str

    def for_packages(self, names: list[str]) -> int:
        return sum(self.package_bytes.get(n, self.default_package_bytes) for n in names)


@dataclass(frozen=True)
class CompatData:
    tf_builds: tuple[TfBuild, ...]
    tf_packages: dict[str, TfPackage]
    toolkit_drivers: tuple[ToolkitDriver, ...]
    minor_compat: tuple[MinorCompat, ...]
    cuda_version_wheel: re.Pattern[str]  # wheels whose version *is* the CUDA version
    cuda_major_wheel: re.Pattern[str]  # any nvidia-*-cuNN wheel: names the CUDA major
    disk: DiskEstimates
    jit_unsupported_source: str
    sources: dict[str, str]

    def tf_build(self, version: str) -> TfBuild | None:
        """The build row of a release; a patch release without its own row uses its x.y row."""
        exact = {b.version: b for b in self.tf_builds}
        if version in exact:
            return exact[version]
        wanted = parse_version(version)[:2]
        same_minor = [b for b in self.tf_builds if parse_version(b.version)[:2] == wanted]
        return max(same_minor, key=lambda b: parse_version(b.version)) if same_minor else None

    def tf_package(self, name: str) -> TfPackage | None:
        return self.tf_packages.get(name)

    def toolkit_driver(self, cuda: str) -> str | None:
        """Table 3 driver of a toolkit release: "12.5.1" -> Update 1's, "12.5" -> GA's."""
        mm = major_minor(cuda)
        rows = [r for r in self.toolkit_drivers if r.cuda == mm]
        if not rows:
            return None
        patch = parse_version(cuda)[2:3]
        wanted = f"Update {patch[0]}" if patch and patch[0] > 0 else "GA"
        picked = [r for r in rows if r.release.startswith(wanted)] or rows
        return min((r.min_driver for r in picked), key=parse_version)

    def min_driver_for_cuda(self, cuda: str, minor_compat: bool = True) -> str | None:
        """The oldest Linux driver that runs code built with CUDA `cuda`.

        With minor-version compatibility (CUDA >= 11) that is the family's floor (525.60.13 for
        12.x), unless the toolkit's own driver is older (CUDA 11.0 apps run on 450.51.05).
        Caveat kept by the preflight: PTX JIT still needs the toolkit's own driver.
        """
        own = self.toolkit_driver(cuda)
        if not minor_compat:
            return own
        major = parse_version(cuda)[0] if parse_version(cuda) else -1
        family = next((m for m in self.minor_compat if m.cuda_major == major), None)
        if family is None or family.min_driver is None:
            return own
        if own is None:
            return family.min_driver
        return min(own, family.min_driver, key=parse_version)

    def max_cuda_for_driver(self, driver: str) -> str | None:
        """Newest CUDA x.y whose toolkit driver (Table 3) is <= `driver`: what nvidia-smi shows."""
        have = parse_version(driver)
        ok = [r.cuda for r in self.toolkit_drivers if parse_version(r.min_driver) <= have]
        return max(ok, key=parse_version) if ok else None

    def cuda_of_wheel(self, name: str, version: str) -> tuple[int, str | None] | None:
        """(CUDA major, CUDA x.y or None) that a locked nvidia-*-cuNN wheel implies, or None."""
        match = self.cuda_version_wheel.match(name)
        if match is not None:
            return int(match.group("major")), major_minor(version)
        match = self.cuda_major_wheel.match(name)
        return (int(match.group("major")), None) if match is not None else None


def load_compat(text: str | None = None) -> CompatData:
    """Parse the compatibility data; `text` overrides the packaged file (tests, extensions)."""
    if text is None:
        return _packaged()
    return _parse(text, DATA_FILE)


@functools.cache
def _packaged() -> CompatData:
    text = resources.files("orchestrator.core").joinpath("data", DATA_FILE).read_text("utf-8")
    return _parse(text, f"orchestrator/data/{DATA_FILE}")


def _parse(text: str, where: str) -> CompatData:
    try:
        raw = json.loads(text)
        return _build(raw)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"{where}: malformed compatibility data: {exc!r}") from exc


def _build(raw: dict[str, Any]) -> CompatData:
    tf, cuda, disk = raw["tensorflow"], raw["cuda"], raw["disk"]
    return CompatData(
        tf_builds=tuple(_tf_build(row) for row in tf["builds"]),
        tf_packages={
            name: TfPackage(name, bool(p["cuda_build"]), tuple(p["machines"]), str(p["source"]))
            for name, p in tf["packages"].items()
        },
        toolkit_drivers=tuple(
            ToolkitDriver(str(r["cuda"]), str(r["release"]), str(r["min_driver"]),
                          str(r["source"]))
            for r in cuda["toolkit_drivers"]
        ),
        minor_compat=tuple(
            MinorCompat(int(m["cuda_major"]), m["min_driver"], str(m.get("note") or ""),
                        str(m["source"]))
            for m in cuda["minor_version_compat"]
        ),
        cuda_version_wheel=re.compile(cuda["version_wheels"]["pattern"]),
        cuda_major_wheel=re.compile(cuda["major_wheels"]["pattern"]),
        disk=DiskEstimates(
            int(disk["default_package_bytes"]), float(disk["margin_ratio"]),
            {str(k): int(v) for k, v in disk["package_bytes"].items()}, str(disk["source"]),
        ),
        jit_unsupported_source=str(tf["jit_unsupported_source"]),
        sources={
            "tensorflow": str(tf["source"]),
            "cuda_table3": str(cuda["source_table3"]),
            "cuda_table2": str(cuda["source_table2"]),
            "disk": str(disk["source"]),
        },
    )


def _tf_build(row: dict[str, Any]) -> TfBuild:
    return TfBuild(
        version=str(row["version"]),
        python_min=str(row["python_min"]),
        python_max=str(row["python_max"]),
        cuda=str(row["cuda"]),
        cudnn=str(row["cudnn"]),
        sass=tuple(str(a) for a in row["sass"]),
        ptx=tuple(str(a) for a in row["ptx"]),
        and_cuda=tuple((str(k), str(v)) for k, v in (row.get("and_cuda") or {}).items()),
        libraries=tuple(
            RequiredLibrary(name, str(lib["soname"]), int(lib["major"]), tuple(lib["wheels"]))
            for name, lib in row["libraries"].items()
        ),
        jit_unsupported_from_cc=row.get("jit_unsupported_from_cc"),
        source=str(row["source"]),
    )
