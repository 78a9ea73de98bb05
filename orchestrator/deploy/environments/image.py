"""The `image` environment kind: an OCI image archive (`environment.image`), run by the host's
Docker or Podman with the release (model, golden) mounted read-only.

Keyed by the image's id (the sha256 of its config: what the engine calls it), so a host whose
engine already has the image gets nothing shipped. Else the archive is uploaded to
`<deploy_root>/.orchestrator/images/<archive sha256>.tar.part`, hashed on the host against the
spec's sha256 (a mismatch deletes it, nothing is loaded), loaded, checked to be the image the
controller read, and deleted (remote/hostops_image.py). The staged release gets a `python`
launcher (python3 inside the image, no network, the release and the shipped tools mounted
read-only at their own paths, the placed GPUs through CDI or the NVIDIA runtime when the spec
asks for them: orchestrator/core/enginegpu.py) and an `image.json`; verify runs the same
warmup runner through that launcher.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.core import enginegpu, gpuhealth
from orchestrator.core.facts import Engine, HostFacts
from orchestrator.core.ociimage import ImageInfo
from orchestrator.core.spec import Spec
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.environments.base import BuiltEnvironment
from orchestrator.errors import HostError, InvalidInput
from orchestrator.hosts import ops

if TYPE_CHECKING:  # the context imports base: import it for annotations only
    from orchestrator.deploy.steps.context import HostContext, Target
    from orchestrator.deploy.wheelcache import Wheel

LAUNCHER = "python"  # remote/hostops_image.py LAUNCHER


class ImageKind:
    """An OCI image archive run by the host's container engine."""

    name = "image"
    ships_wheels = False  # the image brings its packages
    needs_engines = True  # it runs with the host's engine (preflight: `engine`)

    def selects(self, spec: Spec) -> bool:
        return spec.environment.image is not None

    def key(self, spec: Spec, facts: HostFacts, lock_sha256: str) -> str:
        return lock_sha256  # the archive's sha256: the inputs' "lock" of an image spec

    def prepare(self, ctx: HostContext, wheels: Mapping[str, Wheel]) -> None:
        """Nothing to start early: the image brings its packages (no wheels are staged)."""

    def ensure(self, ctx: HostContext, deadline: Deadline) -> BuiltEnvironment:
        facts, staged, image = ctx.known_facts(), ctx.known_staged(), _image(ctx.inputs.lock)
        engine = _engine(ctx.host, facts)
        archive = ctx.spec.paths.image
        assert archive is not None  # selects() said the spec names an image
        presence = ctx.ops.run(ops.image_present(image.image_id, image.sha256,
                                                 engine=engine.path), timeout=deadline.timeout())
        if not presence.present:  # the engine lacks it: ship the archive, hashed on the host
            ctx.transport.put(archive, presence.upload_path, 0o600,
                              ctx.progress.upload("install", "image", archive))
        out = ctx.ops.run(ops.image_ensure(
            ctx.app_name, ctx.release_id, image.image_id, image.sha256, engine=engine.path,
            gpu_args=placed_gpu_args(ctx.host, ctx.spec, facts, engine),
            wait_s=max(1.0, deadline.timeout() - 5)), timeout=deadline.timeout())
        return BuiltEnvironment(
            kind=self.name, key=out.image_id, path=staged.path, interpreter=out.launcher,
            details={"image_id": out.image_id, "reused": out.reused,
                     "shipped_bytes": 0 if presence.present else image_bytes(archive),
                     "engine": engine.label},
            manifest={"env_hash": image.sha256, "python_version": image.python or "unknown",
                      "platform": image.platform or "unknown",
                      "pip_freeze": [f"{p.name}=={p.version}" for p in image.packages],
                      "image": {"image_id": out.image_id, "archive_sha256": image.sha256,
                                "engine": engine.name, "engine_version": engine.version}})

    def describe(self, spec: Spec, facts: HostFacts, target: Target) -> str:
        lock = target.lock
        image_id = lock.image_id if isinstance(lock, ImageInfo) else "<image id>"
        engine = facts.engine
        who = engine.label if engine else "the host's container engine (none found)"
        return (f"unless {who} has image {image_id[:19]}..., ship "
                f"{spec.environment.image.archive if spec.environment.image else 'the archive'}"
                ", check its sha256 on the host and load it; the release gets a launcher "
                "running python3 in the image (model read-only, no network)")

    def interpreter(self, release_path: str) -> str:
        return posixpath.join(release_path, LAUNCHER)

    def audited(self, audit: Mapping[str, Any]) -> bool:
        # The host's audit reports venvs only: an image release is re-verified by running its
        # launcher, which fails loudly when the engine lost the image.
        return True


def placed_gpu_args(host: str, spec: Spec, facts: HostFacts, engine: Engine) -> list[str]:
    """The engine's arguments for the GPUs placement gives the release: the same pure
    placement verify runs on the same facts (its CUDA_VISIBLE_DEVICES), here before it,
    since the launcher is written now. [] for a CPU deployment."""
    if not spec.gpu.required:
        return []
    placed = gpuhealth.place(facts, spec.gpu.count, spec.gpu.min_memory_gib or 0.0,
                             spec.gpu.health)
    if not placed.ok:  # the preflight refused this host first; verify says it too
        raise HostError(host, placed.describe())
    return list(enginegpu.gpu_args(host, engine, placed.chosen))


def image_bytes(path: Path) -> int:
    return path.stat().st_size


def _image(lock: object) -> ImageInfo:
    if not isinstance(lock, ImageInfo):
        raise InvalidInput("the image kind needs the image's metadata (load_environment)")
    return lock


def _engine(host: str, facts: HostFacts) -> Engine:
    engine = facts.engine
    if engine is None:  # the preflight's `engine` check refuses this host first
        raise HostError(host, "no container engine answers on the host (docker or podman)")
    return engine
