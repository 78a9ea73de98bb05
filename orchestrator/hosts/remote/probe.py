"""Host probe, shipped to a host and run there: prints the host's facts as one JSON object.

Self-contained: Python 3.9+ standard library plus the `pynvml.py` module file shipped next to it.
Schema 1 is documented in orchestrator/core/facts.py. Missing driver, missing library, no GPU: each
is
a fact (`nvml.error`), never a crash; every section is read independently so one failure cannot
hide the others.

Usage: python3 probe.py --deploy-root DIR
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ctypes
import glob
import json
import os
import platform
import re
import shutil
import site
import subprocess
import sys
from collections.abc import Callable
from typing import Any

# hostlayout is shipped beside this file (the tools bundle is flat). Run as a script, this
# directory is sys.path[0] already; imported otherwise (hostops' probe op loads it by path, tests
# import it as a package module) it may not be, so it goes first here.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import hostlayout  # noqa: E402
import probe_engine  # noqa: E402
import probe_gpu  # noqa: E402

SCHEMA = 1
# How far back the kernel log is searched for Xid events; the preflight judges their age.
XID_WINDOW_S = 7 * 86400
# Exact library names only: cuDNN 9 also ships libcudnn_ops.so.9 etc., which are not the version.
LIBRARY_NAMES = {"cudnn": re.compile(r"^libcudnn\.so(\.\d+)*$"),
                 "cudart": re.compile(r"^libcudart\.so(\.\d+)*$")}


def os_facts() -> dict[str, str]:
    release: dict[str, str] = {}
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    key, sep, value = line.strip().partition("=")
                    if sep:
                        release[key] = value.strip().strip('"')
            break
        except OSError:
            continue
    libc, libc_version = platform.libc_ver()
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "id": release.get("ID", ""),
        "version_id": release.get("VERSION_ID", ""),
        "pretty_name": release.get("PRETTY_NAME", ""),
        "libc": f"{libc} {libc_version}".strip(),
    }


def disk_facts(deploy_root: str) -> dict[str, Any]:
    # The deploy root may not exist before the first deployment: measure where it will be.
    path = os.path.abspath(deploy_root)
    while not os.path.exists(path) and path != os.path.dirname(path):
        path = os.path.dirname(path)
    usage = shutil.disk_usage(path)
    return {"path": path, "free_bytes": usage.free, "total_bytes": usage.total}


def nvml_error(exc: BaseException) -> dict[str, Any]:
    code = getattr(exc, "value", -1)
    return {"code": code if isinstance(code, int) else -1,
            "name": type(exc).__name__, "message": str(exc)}


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def nvml_facts() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(nvml section, gpus): NVML errors become the section's `error`, never an exception."""
    section: dict[str, Any] = {"error": None, "driver_version": None, "cuda_driver_version": None}
    gpus: list[dict[str, Any]] = []
    try:
        import pynvml  # the shipped module file
    except Exception as exc:  # the shipped module itself failed: still a fact about this host
        section["error"] = nvml_error(exc)
        return section, gpus
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        section["error"] = nvml_error(exc)
        return section, gpus
    try:
        section["driver_version"] = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = cuda_driver_version(pynvml)
        section["cuda_driver_version"] = f"{cuda // 1000}.{(cuda % 1000) // 10}"
        for index in range(pynvml.nvmlDeviceGetCount()):
            gpus.append(gpu_facts(pynvml, index))
    except pynvml.NVMLError as exc:
        section["error"] = nvml_error(exc)
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    return section, gpus


def cuda_driver_version(pynvml: Any) -> int:
    """1000*major + 10*minor; the _v2 call is missing from older drivers' libraries."""
    try:
        return int(pynvml.nvmlSystemGetCudaDriverVersion_v2())
    except pynvml.NVMLError_FunctionNotFound:
        return int(pynvml.nvmlSystemGetCudaDriverVersion())


def gpu_facts(pynvml: Any, index: int) -> dict[str, Any]:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    return {
        "index": index,
        "name": _text(pynvml.nvmlDeviceGetName(handle)),
        "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
        "memory_total_bytes": int(memory.total),
        "memory_free_bytes": int(memory.free),
        "compute_capability": f"{major}.{minor}",
        "health": probe_gpu.health(pynvml, handle),
    }


def library_dirs() -> list[str]:
    """Where the dynamic loader and frameworks look for CUDA libraries, in that order."""
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    dirs += sorted(glob.glob("/usr/local/cuda*/lib64"))
    packages = list(getattr(site, "getsitepackages", lambda: [])())
    packages.append(site.getusersitepackages())
    for base in packages:
        dirs += sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib")))
    return dirs


def ldconfig_paths() -> list[str]:
    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
        try:
            out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10,
                                 check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        return [line.split("=>", 1)[1].strip() for line in out.splitlines() if "=>" in line]
    return []


def library_candidates() -> list[tuple[str, str]]:
    found: list[str] = []
    for directory in library_dirs():
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        found += [os.path.join(directory, n) for n in names]
    found += ldconfig_paths()
    seen: set[str] = set()
    result: list[tuple[str, str]] = []
    for path in found:
        base = os.path.basename(path)
        for kind, pattern in LIBRARY_NAMES.items():
            if not pattern.match(base):
                continue
            # realpath only for a name that matches: `ldconfig -p` lists hundreds of libraries,
            # and resolving each was the probe's largest CPU cost (8 hosts on 2 cores, bench).
            real = os.path.realpath(path)
            if os.path.isfile(real) and real not in seen:
                seen.add(real)
                result.append((kind, path))
    return result


def cudnn_version(lib: ctypes.CDLL) -> str:
    lib.cudnnGetVersion.restype = ctypes.c_size_t
    value = int(lib.cudnnGetVersion())
    # cuDNN 9 encodes major*10000 + minor*100 + patch; cuDNN <= 8 major*1000 + minor*100 + patch.
    scale = 10000 if value >= 90000 else 1000
    major, rest = value // scale, value % scale
    return f"{major}.{rest // 100}.{rest % 100}"


def cudart_version(lib: ctypes.CDLL) -> str:
    value = ctypes.c_int(0)
    if lib.cudaRuntimeGetVersion(ctypes.byref(value)) != 0:
        raise OSError("cudaRuntimeGetVersion failed")
    return f"{value.value // 1000}.{(value.value % 1000) // 10}"


def soname_version(path: str) -> str | None:
    match = re.search(r"\.so\.([\d.]+)$", os.path.basename(os.path.realpath(path)))
    return match.group(1) if match else None


def library_facts() -> list[dict[str, Any]]:
    readers: dict[str, Callable[[ctypes.CDLL], str]] = {
        "cudnn": cudnn_version, "cudart": cudart_version,
    }
    libraries = []
    for kind, path in library_candidates():
        try:
            version: str | None = readers[kind](ctypes.CDLL(path))
        except (OSError, AttributeError, ValueError):
            version = soname_version(path)  # cannot load it here (missing deps): trust its name
        libraries.append({"name": kind, "path": path, "version": version})
    return libraries


def release_facts(deploy_root: str) -> dict[str, dict[str, str | None]]:
    releases: dict[str, dict[str, str | None]] = {}
    try:
        apps = sorted(os.listdir(deploy_root))
    except OSError:
        return releases
    for app in apps:
        app_dir = hostlayout.app_dir(deploy_root, app)
        current = hostlayout.current_link(app_dir)
        if app.startswith(".") or not os.path.isdir(app_dir):
            continue
        if os.path.islink(current):
            releases[app] = {"current": os.path.basename(os.readlink(current).rstrip("/"))}
        elif os.path.isdir(hostlayout.releases_dir(app_dir)):
            releases[app] = {"current": None}
    return releases


def collect(deploy_root: str, engines: bool = True) -> dict[str, Any]:
    """The facts. `engines=False` leaves the container engines out ("engines": null, not
    asked): asking podman costs ~50 ms of the host's CPU, and only image releases need it."""
    # The sections that wait on other programs (the container engines' `version`, journalctl)
    # run beside the NVML and library reading instead of after them: their time is mostly
    # waiting (podman's version: ~0.17 s wall for ~0.04 s CPU), which then overlaps.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as waiting:
        found = waiting.submit(probe_engine.engines) if engines else None
        xid = waiting.submit(probe_gpu.xid_facts, XID_WINDOW_S)
        nvml, gpus = nvml_facts()
        libraries = library_facts()
        return {
            "schema": SCHEMA,
            "hostname": os.uname().nodename,  # gethostname(), without importing socket
            "os": os_facts(),
            "python": {"version": platform.python_version(), "executable": sys.executable},
            "disk": disk_facts(deploy_root),
            "nvml": nvml,
            "gpus": gpus,
            "libraries": libraries,
            "releases": release_facts(deploy_root),
            "xid": xid.result(),
            "engines": None if found is None else found.result(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print this host's facts as JSON.")
    parser.add_argument("--deploy-root", required=True)
    parser.add_argument("--no-engines", action="store_true",
                        help="leave the container engines out (\"engines\": null)")
    args = parser.parse_args(argv)
    sys.stdout.write(json.dumps(collect(args.deploy_root, not args.no_engines),
                                sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
