"""The base image of the image-environment tests: Debian bookworm with python3 and
python3-venv, made with debootstrap from Debian's packages (no registry is reachable here) and
`podman import`, saved as a docker-archive. Made once (about 40 s, 275 MB) and cached under
~/.cache/orchestrator-tests/, keyed by its inputs (suite, variant, packages, mirror), written
complete before it is renamed into place.

    archive = base_archive()      # Path of the cached archive (`podman load`-able)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.podman import Podman

SUITE, VARIANT, INCLUDE = "bookworm", "minbase", ("python3", "python3-venv")
FALLBACK_MIRROR = "http://deb.debian.org/debian"


def mirror() -> str:
    """The Debian mirror this machine's apt uses (its sources.list.d), else Debian's."""
    for path in [*sorted(Path("/etc/apt/sources.list.d").glob("*")), Path("/etc/apt/sources.list")]:
        try:
            text = path.read_text()
        except OSError:
            continue
        m = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or \
            re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)\s+bookworm", text, re.M)
        if m:
            return m.group(1)
    return FALLBACK_MIRROR


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
        "orchestrator-tests"


def why_not() -> str | None:
    for tool in ("debootstrap", "podman", "runc"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (make system-deps installs it)"
    if os.geteuid() != 0:
        return "debootstrap and rootful podman need root"
    return None


def base_archive() -> Path:
    src = mirror()
    key = hashlib.sha256(f"{SUITE} {VARIANT} {','.join(INCLUDE)} {src}".encode()).hexdigest()
    out = cache_dir() / f"base-{SUITE}-{key[:16]}.tar"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", f"--variant={VARIANT}", f"--include={','.join(INCLUDE)}",
                        SUITE, str(rootfs), src], check=True, capture_output=True, timeout=1800)
        engine = Podman(Path(tmp) / "podman")
        name = f"localhost/orchestrator-test-base:{key[:12]}"
        engine.import_dir(rootfs, name, {"PYTHONDONTWRITEBYTECODE": "1"})
        part = out.with_suffix(".part")
        engine.run("save", "-o", str(part), name)
        engine.run("rmi", "-a", "-f")
        os.replace(part, out)
    return out
