"""The container engines of a host, for the probe (`probe.py` puts `engines()` in its facts as
"engines"): shipped to hosts, Python 3.9+ standard library only.

Each engine found on PATH (docker, podman) is one entry:
    {"name": "podman", "path": "/usr/bin/podman", "version": "4.3.1" | null,
     "nvidia_runtime": bool,   the engine has an `nvidia` runtime (docker info's Runtimes) or the
                               NVIDIA OCI hook / runtime is installed for it
     "cdi_devices": [str],     nvidia.com/gpu devices in the host's CDI specs (/etc/cdi,
                               /var/run/cdi): what `--device nvidia.com/gpu=all` can use
     "error": str | null}      why the engine did not answer (a docker daemon not running)
A missing engine is no entry; an engine that fails is an entry with its error: facts, never a
crash. Podman reads its configuration from the environment (CONTAINERS_CONF,
CONTAINERS_STORAGE_CONF), as every command of the image environment runs it.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import re
import shutil
import subprocess
from typing import Any

ENGINES = ("docker", "podman")
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
MAX_CDI_BYTES = 1 << 20
TIMEOUT_S = 15
_VERSION = {"docker": ["version", "--format", "{{json .}}"],
            "podman": ["version", "--format", "json"]}
_HOOKS = ("/usr/share/containers/oci/hooks.d/oci-nvidia-hook.json",
          "/etc/containers/oci/hooks.d/oci-nvidia-hook.json")


def engines() -> list[dict[str, Any]]:
    cdi = cdi_devices()
    found: list[tuple[str, str]] = []
    for name in ENGINES:
        path = shutil.which(name)
        if path is not None:
            found.append((name, path))
    # Each engine's commands mostly wait (a Go binary starting, a daemon socket): both engines
    # are asked at once, which keeps the probe's wall time to the slower one.
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(ENGINES)) as pool:
        return list(pool.map(lambda engine: _engine(engine[0], engine[1], cdi), found))


def _engine(name: str, path: str, cdi: list[str]) -> dict[str, Any]:
    version, error = _version(name, path)
    return {"name": name, "path": path, "version": version,
            "nvidia_runtime": _nvidia_runtime(name, path) if error is None else False,
            "cdi_devices": cdi, "error": error}


def _run(argv: list[str]) -> tuple[int, str, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, "", str(exc)
    return done.returncode, done.stdout, done.stderr


def _version(name: str, path: str) -> tuple[str | None, str | None]:
    code, out, err = _run([path, *_VERSION[name]])
    if code != 0:
        last = (err.strip().splitlines() or [f"exit {code}"])[-1]
        return None, f"{name} version: {last[:300]}"
    try:
        data = json.loads(out)
    except ValueError:
        return None, f"{name} version printed no JSON"
    side = (data.get("Server") or data.get("Client")) if isinstance(data, dict) else None
    version = side.get("Version") if isinstance(side, dict) else None
    return (str(version), None) if version else (None, f"{name} version: no version field")


def _nvidia_runtime(name: str, path: str) -> bool:
    if name == "docker":
        code, out, _ = _run([path, "info", "--format", "{{json .Runtimes}}"])
        try:
            return code == 0 and "nvidia" in (json.loads(out) or {})
        except ValueError:
            return False
    return any(os.path.isfile(h) for h in _HOOKS) or \
        shutil.which("nvidia-container-runtime") is not None


def cdi_devices() -> list[str]:
    """`nvidia.com/gpu=NAME` of every device in the host's CDI specs of that kind. The specs are
    YAML or JSON; without a YAML parser here, a spec's kind and its devices' names are found by
    pattern (`kind: nvidia.com/gpu`, `name: 0`), which both spellings share."""
    found: list[str] = []
    for d in CDI_DIRS:
        for path in sorted(glob.glob(os.path.join(d, "*.yaml")) +
                           glob.glob(os.path.join(d, "*.json"))):
            try:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    text = fh.read(MAX_CDI_BYTES)
            except OSError:
                continue
            kind = re.search(r'"?kind"?\s*:\s*"?([A-Za-z0-9./_-]+)', text)
            if kind is None or kind.group(1) != "nvidia.com/gpu":
                continue
            for m in re.finditer(r'(?<![A-Za-z])"?name"?\s*:\s*"?([A-Za-z0-9_.:-]+)', text):
                device = f"nvidia.com/gpu={m.group(1)}"
                if device not in found:
                    found.append(device)
    return found
