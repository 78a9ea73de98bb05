"""Podman as it runs on this kind of machine, with a storage of its own per user of it.

    env = podman.configure(directory)    # writes containers.conf + storage.conf; their env
    subprocess.run(["podman", ...], env={**os.environ, **env})
    podman.release(directory)            # unmount what the storage left mounted, before rm -rf

A container-in-container test machine runs Podman rootful with `runc`, the `cgroupfs` cgroup
manager and no default ulimits (crun and the default ulimits fail there). Each user of it (a
testbed host, the demo's daemon, the base image's build) gets its own storage, so that none
sees another's images: a host that "lacks the image" must really lack it.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from orchestrator.testbed import layout

CONTAINERS_CONF = """[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""

def configure(directory: Path, *, tag: str = "tb") -> dict[str, str]:
    """containers.conf and storage.conf in `directory` (storage under directory/storage), and
    the environment naming them. `tag` names the runroot: Podman refuses one longer than 50
    characters, so it is a short one under /tmp, unique per directory."""
    directory.mkdir(parents=True, exist_ok=True)
    conf, storage = directory / "containers.conf", directory / "storage.conf"
    layout.write_atomic(conf, CONTAINERS_CONF)
    layout.write_atomic(storage, f'[storage]\ndriver = "overlay"\n'
                                 f'graphroot = "{directory / "storage"}"\n'
                                 f'runroot = "{runroot(directory, tag)}"\n')
    return {"CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}


def runroot(directory: Path, tag: str = "tb") -> Path:
    """The runroot `configure` names for `directory`."""
    return Path(f"/tmp/orch-{tag}-{hashlib.sha256(str(directory).encode()).hexdigest()[:12]}")


def release(directory: Path) -> None:
    """Unmount what Podman left mounted under `directory` (the overlay driver keeps a bind
    mount of storage/overlay), deepest first, so the directory can be removed. Best effort: a
    mount that will not go is left, and the directory's removal says so."""
    d = str(directory) + "/"
    try:
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            points = [line.split()[1] for line in fh if len(line.split()) > 1]
    except OSError:
        return
    for point in sorted({p for p in points if p.startswith(d)}, key=len, reverse=True):
        subprocess.run(["umount", point], capture_output=True, timeout=30, check=False)


__all__ = ["CONTAINERS_CONF", "configure", "release", "runroot"]
