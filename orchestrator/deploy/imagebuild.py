"""`orchestrator image build`: the image a venv spec's lock makes on an operator's base image,
as an archive the image environment (`environment.image`) deploys.

    build_image(spec, base_archive, out, engine=["podman"])

The base image archive (Debian/Ubuntu with python3 and python3-venv: the spec's
`environment.python`) is loaded into the engine; a container of it, without network, gets the
lock's wheels (from the spec's wheelhouse, or the daemon's wheel cache, hashes checked) and the
lock mounted read-only, makes the venv /opt/venv and installs the lock into it with pip
`--require-hashes --no-index`; the container is committed with /opt/venv/bin first on PATH
(so `python3` is the venv's) and saved as a docker-archive at `out`, whose sha256 is
returned for the spec. The model stays outside the image: the image environment mounts it.
Nothing is pulled from a registry.

`deploy_time_image(spec)` is the same build for a spec that asks for it at deploy time
(`environment.image_base` beside `requirements`): built once per (base archive, lock, Python)
into the controller's image cache, then the spec is deployed as an image release of that
archive (`deploy/batch.py` `prepare`). `pack_layout(spec)` turns an OCI layout directory
(`environment.image.archive` naming one) into an archive the same way, without a build. Each
new archive in that cache prunes it (`prune_image_cache`: the most recently used are kept).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from orchestrator.core.envinputs import lock_path
from orchestrator.core.hashing import hash_file, hash_path
from orchestrator.core.sink import EventSink
from orchestrator.core.spec import Spec
from orchestrator.core.spec_env import ImageArchive
from orchestrator.deploy.wheelcache import Wheel, WheelCache, from_wheelhouse, platform_tags
from orchestrator.errors import InvalidInput
from orchestrator.xdg import user_dir

VENV = "/opt/venv"
PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT_S = 1800
# The controller's image cache: the archives kept besides the one in use (most recently used
# first), and how long any archive is kept after its last use whatever their number.
CACHE_KEEP = 4
CACHE_MIN_AGE_S = 24 * 3600.0
CACHED = re.compile(r"(built|layout)-[0-9a-f]{32}\.tar")


class ImageBuildFailed(InvalidInput):
    """The engine refused a step of the build (exit 2: the inputs or the engine's setup)."""


def build_image(spec: Spec, base_archive: Path, out: Path, *, engine: Sequence[str],
                wheel_cache: Path | None = None, env: Mapping[str, str] | None = None,
                libc: str = "glibc 2.36", machine: str = "x86_64") -> str:
    """Build, save to `out`, return the archive's sha256 (module docstring)."""
    lock = lock_path(spec)
    python = spec.environment.python
    if python is None:
        raise InvalidInput(f"{spec.file}: environment.python is needed to pick the wheels")
    if spec.paths.wheelhouse is not None:
        wheels = from_wheelhouse(lock, spec.paths.wheelhouse, python_version=python,
                                 machine=machine)
    else:
        from orchestrator.deploy.steps.wheels import default_cache_dir

        wheels = WheelCache(wheel_cache or default_cache_dir()).fill(
            lock, python, platform_tags(machine, libc), machine=machine)
    tag = f"localhost/orchestrator-build:{uuid.uuid4().hex[:12]}"
    name = f"orchestrator-build-{uuid.uuid4().hex[:12]}"
    run = _Runner(engine, env)
    with tempfile.TemporaryDirectory(prefix="orchestrator-image-") as tmp:
        wheel_dir = _named_wheels(Path(tmp) / "wheels", wheels)
        base_id = _loaded_id(run.out("load", "-i", str(base_archive)))
        try:
            run.out("run", "--name", name, "--network=none",
                    "-v", f"{wheel_dir}:/wheels:ro", "-v", f"{lock.resolve()}:/lock.txt:ro",
                    base_id, "sh", "-c",
                    f"python3 -m venv {VENV} && {VENV}/bin/pip install --no-index "
                    "--no-cache-dir --disable-pip-version-check --require-hashes "
                    "--find-links /wheels -r /lock.txt")
            run.out("commit", "--change", f"ENV PATH={PATH}", "--change",
                    f"LABEL org.orchestrator.lock-sha256={hash_file(lock)}", name, tag)
            part = out.with_name(out.name + ".part")
            run.out("save", "-o", str(part), tag)
            part.replace(out)
        finally:
            run.quiet("rm", "-f", name)
            run.quiet("rmi", "-f", tag)
    return hash_file(out)


def default_image_cache() -> Path:
    """$ORCHESTRATOR_IMAGE_CACHE, else $XDG_CACHE_HOME/orchestrator/images."""
    return user_dir("CACHE", "images", override="ORCHESTRATOR_IMAGE_CACHE")


def deploy_time_image(spec: Spec, *, cache_dir: Path | None = None,
                      wheel_cache: Path | None = None, engine: Sequence[str] = ("podman",),
                      env: Mapping[str, str] | None = None,
                      sink: EventSink | None = None) -> Spec:
    """For a spec with `environment.image_base`: the same spec as an image release of the
    image its lock makes on that base (built by `build_image` unless the cache has it; the
    base archive must hash to `image_base.sha256` first, else a SpecError at that line).
    Any other spec is returned as it is. A build is told to `sink` (event `image.build`:
    started, then finished with its duration and archive, or failed with why): it takes
    minutes before the rollout's first event."""
    base, base_path = spec.environment.image_base, spec.paths.image_base
    if base is None or base_path is None:
        return spec
    out = built_archive_path(spec, cache_dir)
    if not _used(out):
        actual = hash_file(base_path)
        if actual != base.sha256:
            raise spec.error(("environment", "image_base", "sha256"),
                             f"mismatch: the spec says {base.sha256} but "
                             f"{base.archive} hashes to {actual}")
        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        if sink is not None:
            sink.emit("image.build", status="started", base=base.archive,
                      lock=spec.environment.requirements, archive=str(out))
        try:
            sha = build_image(spec, base_path, out, engine=engine, wheel_cache=wheel_cache,
                              env=env)
        except InvalidInput as exc:
            if sink is not None:
                sink.emit("image.build", status="failed", level="error", reason=str(exc),
                          duration_ms=(time.monotonic() - started) * 1000)
            raise
        if sink is not None:
            sink.emit("image.build", status="finished", sha256=sha,
                      bytes=out.stat().st_size, duration_ms=(time.monotonic() - started) * 1000)
        prune_image_cache(out.parent, keep=out)
    image = ImageArchive(archive=out.name, sha256=hash_file(out))
    environment = spec.environment.model_copy(
        update={"requirements": None, "wheelhouse": None, "image_base": None, "image": image})
    built = spec.model_copy(update={"environment": environment})
    built._paths = replace(spec.paths, requirements=None, wheelhouse=None, image=out,
                           image_base=None)
    return built


def built_archive_path(spec: Spec, cache_dir: Path | None = None) -> Path:
    """Where the image of a spec with `environment.image_base` is cached: keyed by the base's
    sha256, the lock's and `environment.python` (what the build depends on)."""
    base = spec.environment.image_base
    if base is None:
        raise InvalidInput(f"{spec.file}: the spec gives no environment.image_base")
    key = hashlib.sha256(f"{base.sha256} {hash_file(lock_path(spec))} {spec.environment.python}"
                         .encode()).hexdigest()[:32]
    return (cache_dir or default_image_cache()) / f"built-{key}.tar"


def prune_image_cache(cache_dir: Path, *, keep: Path | None = None, newest: int = CACHE_KEEP,
                      min_age_s: float = CACHE_MIN_AGE_S, now: float | None = None) -> list[Path]:
    """Delete the cached archives (built-*.tar, layout-*.tar) beyond the `newest` most recently
    used that were last used more than `min_age_s` ago, never `keep` (the one in use), and the
    partial files of builds dead for longer than a build may take. Runs after each build and
    each pack; a cache hit marks its archive used (its mtime), so an archive a deployment still
    ships was used recently and stays. A cache is only a cache: a pruned image is built again
    from the bundle's base and lock when a later deployment (or rollback) needs it. Returns
    what was deleted."""
    now = time.time() if now is None else now
    archives: list[tuple[float, Path]] = []
    removed: list[Path] = []
    for path in cache_dir.iterdir():
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:  # another build's part, just renamed or removed
            continue
        if path.name.endswith(".part"):
            if now - mtime > 2 * TIMEOUT_S:  # no build runs this long: a dead one's leftover
                removed.append(path)
        elif CACHED.fullmatch(path.name) and path != keep:
            archives.append((mtime, path))
    archives.sort(reverse=True)
    removed += [p for mtime, p in archives[newest:]
                if now - mtime > min_age_s]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _used(out: Path) -> bool:
    """Whether the cache has `out`; if so it is marked used now (what pruning keeps)."""
    try:
        os.utime(out)
    except FileNotFoundError:
        return False
    return out.is_file()


def pack_layout(spec: Spec, *, cache_dir: Path | None = None) -> Spec:
    """For a spec whose `environment.image.archive` is an OCI layout directory (oci-layout,
    index.json, blobs/sha256/): the directory, checked against `image.sha256` as a tree hash
    (`orchestrator hash DIR`; a mismatch is a SpecError at that line, nothing packed), packed
    into an oci-archive in the image cache, the same bytes for the same tree (sorted, owners
    and times zeroed), and the spec as an image release of that archive. Any other spec is
    returned as it is. Everything after (reader, shipping, host check) sees an archive."""
    image, path = spec.environment.image, spec.paths.image
    if image is None or path is None or not path.is_dir():
        return spec
    actual = hash_path(path)  # refuses symlinks and special files inside, naming them
    if actual != image.sha256:
        raise spec.error(("environment", "image", "sha256"),
                         f"mismatch: the spec says {image.sha256} but the OCI layout "
                         f"{image.archive} hashes to {actual} (a tree hash): refused")
    out = (cache_dir or default_image_cache()) / f"layout-{actual[:32]}.tar"
    if not _used(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(f"{out.name}.{uuid.uuid4().hex[:8]}.part")
        with tarfile.open(part, "w", format=tarfile.PAX_FORMAT) as tar:
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                info = tarfile.TarInfo(file.relative_to(path).as_posix())
                info.size, info.mode, info.mtime = file.stat().st_size, 0o644, 0
                with file.open("rb") as fh:
                    tar.addfile(info, fh)
        part.replace(out)
        prune_image_cache(out.parent, keep=out)
    archived = ImageArchive(archive=out.name, sha256=hash_file(out))
    packed = spec.model_copy(update={"environment": spec.environment.model_copy(
        update={"image": archived})})
    packed._paths = replace(spec.paths, image=out)
    return packed


def _named_wheels(directory: Path, wheels: Mapping[str, Wheel]) -> Path:
    """pip finds wheels by file name: the cache keeps them by sha256, so link them by name."""
    directory.mkdir(parents=True)
    for wheel in wheels.values():
        shutil.copyfile(wheel.path, directory / wheel.filename)
    return directory


def _loaded_id(output: str) -> str:
    """The image `load` printed ("Loaded image: NAME" or "Loaded image(s): sha256:ID")."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith("Loaded image"):
            return line.split(":", 1)[1].strip().split(",")[0]
    raise ImageBuildFailed(f"the engine loaded the base image but did not name it: {output!r}")


class _Runner:
    def __init__(self, engine: Sequence[str], env: Mapping[str, str] | None) -> None:
        if not engine:
            raise InvalidInput("no container engine command given")
        self.engine, self.env = list(engine), None if env is None else dict(env)

    def out(self, *args: str) -> str:
        try:
            done = subprocess.run([*self.engine, *args], capture_output=True, text=True,
                                  env=self.env, timeout=TIMEOUT_S, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ImageBuildFailed(f"{self.engine[0]} {args[0]}: {exc}") from exc
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-5:])
            raise ImageBuildFailed(f"{self.engine[0]} {args[0]} exited {done.returncode}: "
                                   f"{tail}")
        return done.stdout

    def quiet(self, *args: str) -> None:
        subprocess.run([*self.engine, *args], capture_output=True, env=self.env,
                       timeout=120, check=False)


__all__ = ["ImageBuildFailed", "build_image", "built_archive_path", "default_image_cache",
           "deploy_time_image", "pack_layout", "prune_image_cache"]
