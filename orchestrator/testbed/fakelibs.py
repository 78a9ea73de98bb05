"""The fake NVIDIA libraries: compiled on demand from the C sources in this package, cached, and
linked into a host's lib dir according to its profile.

Cache: `~/.cache/orchestrator/fakelibs/<sha256 of source and compiler flags>/<soname>` (or under
$XDG_CACHE_HOME, or $ORCHESTRATOR_CACHE_DIR). A library is compiled to a temporary name and renamed
into place, so concurrent builders (the demo and a test run) never see half a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from orchestrator.errors import TestbedError
from orchestrator.testbed import profiles
from orchestrator.xdg import user_dir

NVML_SONAME = "libnvidia-ml.so.1"
_SOURCES = resources.files("orchestrator.testbed")


def cache_root() -> Path:
    explicit = os.environ.get("ORCHESTRATOR_CACHE_DIR")
    if explicit:
        return Path(explicit) / "fakelibs"
    return user_dir("CACHE", "fakelibs")


def compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise TestbedError(
            "no C compiler (cc) to build the fake libnvidia-ml.so.1: "
            "install the Debian packages gcc and libc6-dev"
        )
    return cc


def build(source: str, soname: str, defines: dict[str, int] | None = None) -> Path:
    """The cached shared object built from `source` with `defines`; compiled if missing."""
    code = _SOURCES.joinpath(source).read_bytes()
    flags = [
        "-shared", "-fPIC", "-O2", "-fvisibility=hidden", f"-Wl,-soname,{soname}",
        *(f"-D{k}={v}" for k, v in sorted((defines or {}).items())),
    ]
    key = hashlib.sha256(code + b"\0" + "\0".join(flags).encode()).hexdigest()
    target = cache_root() / key / soname
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _compile(code, source, flags, target)
    return target


def _compile(code: bytes, source: str, flags: list[str], target: Path) -> None:
    cc = compiler()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        src = Path(tmp) / source
        src.write_bytes(code)
        out = Path(tmp) / target.name
        proc = subprocess.run(
            [cc, *flags, "-o", str(out), str(src)],
            capture_output=True, text=True, check=False, timeout=120,
        )
        if proc.returncode != 0:
            raise TestbedError(f"compiling {source} failed ({cc}): {proc.stderr.strip()[-2000:]}")
        os.replace(out, target)


def nvml_library() -> Path:
    return build("fake_nvml.c", NVML_SONAME)


def cuda_library(lib: profiles.FakeLibrary) -> Path:
    name, value = lib.define
    return build("fake_cuda.c", lib.soname, {name: value})


def install(lib_dir: Path, profile: dict[str, Any]) -> None:
    """Make `lib_dir` hold exactly the libraries `profile` lists: symlinks into the cache.

    Each link is replaced by rename, so a process starting on the host meanwhile sees either the
    old library or the new one, never none (except when the profile removes it on purpose).
    """
    lib_dir.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, Path] = {}
    if profiles.has_nvml(profile):
        wanted[NVML_SONAME] = nvml_library()
    for lib in profiles.libraries(profile):
        wanted[lib.soname] = cuda_library(lib)
    for entry in lib_dir.iterdir():
        if entry.name not in wanted and entry.is_symlink():
            entry.unlink()
    for soname, target in wanted.items():
        _link(lib_dir / soname, target)


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)
