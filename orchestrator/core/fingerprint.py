"""Environment fingerprints: where a golden file was recorded, against where a model now runs.

A fingerprint is the runner's `environment()` structure (orchestrator/hosts/remote/warmup_env.py):
    {"python", "implementation", "platform", "machine", "frameworks" {name: version, for each
     of FRAMEWORKS: the model formats' (formats.py)}, "packages" {name: version}, "gpu" {driver,
     cuda_driver, devices [{name, memory_total_bytes, compute_capability}], error},
     "tensorflow_build" {...}}
`golden record` stores it in the .npz under `__fingerprint__`; the warmup result carries the
host's as `environment`. `diff` lists what differs; plan and verify report it (it never gates:
a different driver is worth knowing, not necessarily wrong; the golden comparison decides).

Reading it needs no numpy: an .npz is a zip of .npy files, and a 0-d unicode array is a small
header plus UTF-32-LE text, so the daemon can read fingerprints without the ML stack.
"""

from __future__ import annotations

import ast
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.facts import HostFacts
from orchestrator.core.lockfile import Lock
from orchestrator.errors import InvalidInput
from orchestrator.hosts.remote.formats import FRAMEWORKS as FRAMEWORKS

FINGERPRINT_KEY = "__fingerprint__"
GOLDEN_META_KEY = "__golden__"
NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class Difference:
    key: str  # "python", "framework:tensorflow", "package:protobuf", "gpu:driver", ...
    golden: str | None
    host: str | None

    @property
    def message(self) -> str:
        return f"{self.key}: recorded with {self.golden or 'none'}, host has {self.host or 'none'}"


def read_npz_text(path: Path, key: str) -> str | None:
    """The text of a 0-d unicode array `key` inside an .npz, or None when absent."""
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                data = zf.read(f"{key}.npy")
            except KeyError:
                return None
    except (OSError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"{path}: not a readable .npz file: {exc}") from exc
    return _npy_text(data, path, key)


def _npy_text(data: bytes, path: Path, key: str) -> str:
    if not data.startswith(NPY_MAGIC):
        raise InvalidInput(f"{path}: {key} is not an .npy array")
    major = data[6]
    size_len = 2 if major == 1 else 4
    header_len = int.from_bytes(data[8 : 8 + size_len], "little")
    start = 8 + size_len
    header = ast.literal_eval(data[start : start + header_len].decode("latin1"))
    descr = header.get("descr", "") if isinstance(header, dict) else ""
    if not (isinstance(descr, str) and descr.startswith("<U")) or header.get("shape") != ():
        raise InvalidInput(f"{path}: {key} is not a text scalar (descr {descr!r})")
    raw = data[start + header_len :]
    return raw.decode("utf-32-le").rstrip("\x00")


def read_fingerprint(golden_path: Path) -> dict[str, Any] | None:
    text = read_npz_text(golden_path, FINGERPRINT_KEY)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{golden_path}: {FINGERPRINT_KEY} is not JSON: {exc}") from exc
    return value if isinstance(value, dict) else None


def _s(value: Any) -> str | None:
    return None if value is None else str(value)


def _gpu_names(env: dict[str, Any]) -> str | None:
    devices = (env.get("gpu") or {}).get("devices") or []
    names = [str(d.get("name")) for d in devices if isinstance(d, dict)]
    return ", ".join(names) if names else None


def diff(golden: dict[str, Any], host: dict[str, Any]) -> list[Difference]:
    """What differs between the recording environment and the host's, most important first."""
    out: list[Difference] = []

    def check(key: str, a: Any, b: Any) -> None:
        if _s(a) != _s(b):
            out.append(Difference(key, _s(a), _s(b)))

    check("python", golden.get("python"), host.get("python"))
    gf, hf = golden.get("frameworks") or {}, host.get("frameworks") or {}
    for name in FRAMEWORKS:
        if gf.get(name) is not None:  # a framework the model was not recorded with is noise
            check(f"framework:{name}", gf.get(name), hf.get(name))
    gg, hg = golden.get("gpu") or {}, host.get("gpu") or {}
    check("gpu:driver", gg.get("driver"), hg.get("driver"))
    check("gpu:cuda_driver", gg.get("cuda_driver"), hg.get("cuda_driver"))
    check("gpu:devices", _gpu_names(golden), _gpu_names(host))
    gb, hb = golden.get("tensorflow_build") or {}, host.get("tensorflow_build") or {}
    for key in ("cuda_version", "cudnn_version"):
        if gb.get(key) or hb.get(key):
            check(f"tensorflow_build:{key}", gb.get(key), hb.get(key))
    check("machine", golden.get("machine"), host.get("machine"))
    gp, hp = golden.get("packages") or {}, host.get("packages") or {}
    for name in sorted(set(gp) & set(hp)):
        if name not in FRAMEWORKS:
            check(f"package:{name}", gp[name], hp[name])
    return out


def _framework(packages: dict[str, str], name: str) -> str | None:
    if name in packages:
        return packages[name]
    if name == "tensorflow":  # tensorflow-cpu, tensorflow-gpu, tensorflow-intel ...
        return next((v for k, v in sorted(packages.items()) if k.startswith("tensorflow-")
                     and k.split("-", 1)[1] in ("cpu", "gpu", "intel", "macos")), None)
    return None


def planned_environment(facts: HostFacts, lock: Lock | None) -> dict[str, Any]:
    """The host's environment as far as it is known before installing (for `plan`): Python,
    driver and GPUs from the probe, package versions from the lock; shaped like a fingerprint."""
    packages = {p.name: p.version for p in lock.packages} if lock else {}
    return {
        "python": facts.python_version, "machine": facts.os.get("machine"),
        "frameworks": {name: _framework(packages, name) for name in FRAMEWORKS},
        "packages": packages,
        "gpu": {"driver": facts.driver_version, "cuda_driver": facts.cuda_driver_version,
                "devices": [{"name": g.name, "compute_capability": g.compute_capability}
                            for g in facts.gpus]},
    }


def report(golden: dict[str, Any] | None, host: dict[str, Any] | None) -> list[str]:
    """One line per difference; a line saying why nothing can be compared when a side is absent."""
    if not golden:
        return ["the golden file carries no fingerprint: nothing to compare"]
    if not host:
        return ["the host reported no environment: nothing to compare"]
    return [d.message for d in diff(golden, host)]
