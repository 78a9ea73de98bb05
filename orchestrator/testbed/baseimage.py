"""The testbed's base image: Debian bookworm (minbase) with python3 and python3-venv, the base
an image release's lock is built onto (`environment.image_base`) in the demo and the tests.

    why = baseimage.why_not()      # None, or why it cannot be made here (no podman, not root...)
    archive = baseimage.base_archive()    # Path of the cached docker-archive (`podman load`-able)

No registry is reachable from the testbed's machine, so nothing is pulled: the root file system
is made with `debootstrap` from Debian's packages (the mirror this machine's apt uses) and turned
into an image with `podman import`, then saved. Made once (about 40 s, 275 MB) and cached under
the user's cache dir ($ORCHESTRATOR_BASEIMAGE_CACHE, else ~/.cache/orchestrator/baseimage),
named by a hash of its inputs (suite, variant, packages, mirror), written complete and then
renamed into place, so a build killed half-way never leaves an archive that looks finished.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import IO

from orchestrator.errors import TestbedError
from orchestrator.testbed import podman
from orchestrator.xdg import user_dir

SUITE, VARIANT, INCLUDE = "bookworm", "minbase", ("python3", "python3-venv")
FALLBACK_MIRROR = "http://deb.debian.org/debian"
TOOLS = ("debootstrap", "podman", "runc")
BUILD_TIMEOUT_S = 1800  # debootstrap downloads ~100 packages; a slow mirror takes minutes
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # debootstrap and runc live in sbin


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
    """$ORCHESTRATOR_BASEIMAGE_CACHE, else $XDG_CACHE_HOME/orchestrator/baseimage."""
    return user_dir("CACHE", "baseimage", override="ORCHESTRATOR_BASEIMAGE_CACHE")


def why_not() -> str | None:
    """Why the base image cannot be made (or used) on this machine, or None."""
    for tool in TOOLS:
        if shutil.which(tool, path=PATH) is None:
            return f"{tool} is not installed (make system-deps installs it)"
    if os.geteuid() != 0:
        return "debootstrap and rootful podman need root"
    return None


def archive_path(cache: Path | None = None) -> Path:
    """Where the archive of these inputs is (or will be) cached."""
    key = hashlib.sha256(f"{SUITE} {VARIANT} {','.join(INCLUDE)} {mirror()}".encode()).hexdigest()
    return (cache or cache_dir()) / f"base-{SUITE}-{key[:16]}.tar"


def base_archive(cache: Path | None = None) -> Path:
    """The cached archive, made first if missing (module docstring). TestbedError, naming the
    command and the end of its output, when a step fails."""
    out = archive_path(cache)
    if out.is_file():
        return out
    why = why_not()
    if why:
        raise TestbedError(f"cannot make the base image: {why}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        storage = Path(tmp) / "podman"  # a storage of its own: nothing left in anyone else's
        env = {"PATH": PATH, **podman.configure(storage, tag="base")}
        try:
            _build(Path(tmp) / "rootfs", out, env)
        finally:
            subprocess.run(["podman", "rmi", "-a", "-f"], env=env, capture_output=True,
                           timeout=120, check=False)
            podman.release(storage)
            shutil.rmtree(podman.runroot(storage, "base"), ignore_errors=True)
    return out


def _build(rootfs: Path, out: Path, env: dict[str, str]) -> None:
    _run(["debootstrap", f"--variant={VARIANT}", f"--include={','.join(INCLUDE)}", SUITE,
          str(rootfs), mirror()], env)
    name = f"localhost/orchestrator-testbed-base:{out.stem[-12:]}"
    # The root file system streamed into `podman import` (275 MB: not held in memory).
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    try:
        _run(["podman", "import", "--change", "ENV PYTHONDONTWRITEBYTECODE=1", "-", name], env,
             stdin=tar.stdout)
    finally:
        if tar.stdout is not None:
            tar.stdout.close()
        if tar.wait(timeout=BUILD_TIMEOUT_S) != 0:
            raise TestbedError(f"tar of {rootfs} exited {tar.returncode}")
    part = out.with_name(f"{out.name}.{uuid.uuid4().hex[:8]}.part")  # concurrent makers
    try:
        _run(["podman", "save", "-o", str(part), name], env)
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)


def _run(cmd: list[str], env: dict[str, str], stdin: IO[bytes] | None = None) -> None:
    try:
        done = subprocess.run(cmd, env=env, stdin=stdin, capture_output=True,
                              timeout=BUILD_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise TestbedError(f"{cmd[0]}: {exc}") from exc
    if done.returncode != 0:
        tail = " | ".join(done.stderr.decode(errors="replace").strip().splitlines()[-5:])
        raise TestbedError(f"{' '.join(cmd[:2])} exited {done.returncode}: {tail}")


__all__ = ["archive_path", "base_archive", "cache_dir", "mirror", "why_not"]
