"""Real Podman for the tests, as this machine runs it: rootful, `runc`, the `cgroupfs` cgroup
manager and `default_ulimits = []` (crun and the default ulimits fail here), each caller with
its own storage (`--root`/`--runroot`) so tests and testbed hosts do not see each other's
images. No registry is reachable: images are made with `podman import` from a directory.

    engine = Podman(tmp_path / "podman")
    docker_tar, oci_tar = engine.archives(rootfs_dir, env={"CUDA_VERSION": "12.4.1"})
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from orchestrator.testbed.podman import CONTAINERS_CONF, runroot


def available() -> str | None:
    """Why Podman cannot be used here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (make system-deps installs it)"
    if shutil.which("runc") is None:
        return "runc is not installed (make system-deps installs it)"
    return None


class Podman:
    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.conf = home / "containers.conf"
        self.conf.write_text(CONTAINERS_CONF)  # as the testbed's hosts run it
        self.env = {"CONTAINERS_CONF": str(self.conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        self.runroot = str(runroot(home, "test"))

    def run(self, *args: str, stdin: bytes | None = None) -> str:
        cmd = ["podman", "--root", str(self.home / "root"), "--runroot", self.runroot, *args]
        done = subprocess.run(cmd, input=stdin, capture_output=True, env=self.env, timeout=300,
                              check=False)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)}: exit {done.returncode}: "
                                 f"{done.stderr.decode(errors='replace')[-2000:]}")
        return done.stdout.decode()

    def import_dir(self, rootfs: Path, name: str, env: dict[str, str] | None = None) -> str:
        """`podman import` of a directory as image `name`; its image id."""
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True,
                             check=True).stdout
        changes = [a for k, v in (env or {}).items() for a in ("--change", f"ENV {k}={v}")]
        return self.run("import", *changes, "-", name, stdin=tar).strip().splitlines()[-1]

    def archives(self, rootfs: Path, name: str = "localhost/t:1",
                 env: dict[str, str] | None = None) -> tuple[Path, Path]:
        """The image as `podman save` writes it: a docker-archive and an oci-archive."""
        self.import_dir(rootfs, name, env)
        docker, oci = self.home / "image.docker.tar", self.home / "image.oci.tar"
        self.run("save", "-o", str(docker), name)
        self.run("save", "--format", "oci-archive", "-o", str(oci), name)
        return docker, oci
