"""The deployment spec (DESIGN.md "Spec"): strict pydantic models and `load_spec`.

Strict means: unknown keys are errors, no type coercion ("22" is not a port, `true` is not a
count), numbers are finite and bounded, names match `NAME_PATTERN` (they become paths on hosts),
and every file the spec names is relative, free of `..`, made of characters no shell or path join
can misread, and still inside the spec's folder once symlinks are resolved.

`load_spec(path)` returns a `Spec`: the validated model (`spec.verify.rtol`, ...) plus what the
rest of the program needs about the file itself: `spec.file`, `spec.dir`, `spec.digest` (sha256 of
the file's bytes) and `spec.paths` (absolute, resolved paths of model, requirements, golden,
wheelhouse; relative to the directory of the file the spec path resolves to, so a symlinked spec
reads the same files as its target). Only a regular file is read as a spec (yamlio.read_limited:
a FIFO or device is refused, never waited on). Every error is a `SpecError` naming file, line and
field. Whether the referenced
files exist and match their hashes is checked by `orchestrator validate` (commands/validate.py).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.core.hashing import hash_path
from orchestrator.core.spec_container import Container
from orchestrator.core.spec_env import Environment
from orchestrator.core.spec_gpu import GpuHealth
from orchestrator.core.specfields import (
    _CC,
    _SIGNATURE,
    _UNITS,
    _URL,
    METHOD_PATTERN,
    PATTERN_HINTS,
    Command,
    Duration,
    MigProfile,
    Name,
    RelPath,
    Sha256,
    Target,
    _d,
    _f,
    _i,
    _no_dotdot,
    _Strict,
)
from orchestrator.core.yamlio import (
    DEFAULT_MAX_BYTES,
    YamlDocument,
    format_path,
    parse_yaml,
    read_limited,
    validation_error,
)
from orchestrator.errors import SpecError
from orchestrator.hosts.remote import formats

API_VERSION = "orchestrator/v1"
#: The model formats `model.format` accepts: the registry's (orchestrator/hosts/remote/formats.py).
FORMATS = formats.NAMES
if TYPE_CHECKING:
    FormatName = str
else:  # a Literal of the registry's names: the schema's enum and pydantic's error list them
    FormatName = Literal[FORMATS]


class ModelSection(_Strict):
    """The model to deploy and the hash it must have."""

    path: RelPath = Field(description="Model file or directory, relative to the spec file.")
    format: FormatName = Field(description=f"How the model is loaded: {formats.summary()}.")
    sha256: Sha256 = Field(description="sha256 of the file, or tree hash of the directory, as "
                                       "printed by `orchestrator hash PATH` (lowercase hex).")
    follow_symlinks: bool = Field(
        False, description="A directory model's symlinks count as the files or directories "
                           "they point to (hashed and shipped as their content; `orchestrator "
                           "hash --follow-symlinks PATH`). Default false: a symlink inside is "
                           "refused, naming it.")
    _check_path = field_validator("path")(_no_dotdot)


class GpuSection(_Strict):
    """What the host's GPUs must offer; checked by the preflight and by verify."""

    required: bool = _d(False, "false: CPU deployment, GPU checks skipped.")
    count: int = _i(1, 1, 64, "Healthy GPUs the model gets (by UUID, CUDA_VISIBLE_DEVICES).")
    min_memory_gib: float | None = _f(None, 0, 4096, "Free memory each GPU must have, GiB.")
    min_compute_capability: Annotated[str, StringConstraints(pattern=_CC)] \
        | None = _d(None, 'Minimum compute capability, quoted: "7.0".')
    mig_profile: MigProfile | None = _d(None, "gpu.count MIG instances of this profile, by UUID.")
    health: GpuHealth = GpuHealth()


class Rollout(_Strict):
    """How the fleet is updated: canaries, then batches, with a failure budget."""

    canary: int = _i(1, 0, 10_000, "Hosts deployed first, alone; 0 for no canary.")
    batch_size: int = _i(1, 1, 10_000, "Hosts per batch after the canaries.")
    max_parallel: int = _i(16, 1, 256, "At most this many SSH sessions at once.")
    max_failed_hosts: int = _i(0, 0, 10_000, "More failed hosts than this stop the rollout.")
    on_failure: Literal["rollback", "pause"] = _d(
        "rollback", "When the rollout stops: roll back the hosts already switched, or leave "
                    "them (pause).")
    pause_s: float = _f(0, 0, 86_400, "Seconds to wait between batches.")


class LatencyMs(_Strict):
    """Latency limits of the benchmark in verify, in milliseconds (each optional)."""

    p50: float | None = _f(None, 0, 3_600_000, "Maximum median latency, ms.", gt=True)
    p95: float | None = _f(None, 0, 3_600_000, "Maximum 95th percentile latency, ms.", gt=True)
    p99: float | None = _f(None, 0, 3_600_000, "Maximum 99th percentile latency, ms.", gt=True)

    @model_validator(mode="after")
    def _ordered(self) -> LatencyMs:
        given = [v for v in (self.p50, self.p95, self.p99) if v is not None]
        if given != sorted(given):
            raise ValueError("limits must satisfy p50 <= p95 <= p99")
        return self


class Verify(_Strict):
    """The warmup run in the new environment before anything is switched."""

    golden: RelPath = Field(description="The .npz of inputs and expected outputs recorded where "
                                        "the model was trained (`orchestrator golden record`).")
    rtol: float = _f(1e-5, 0, 1, "Relative tolerance of the golden comparison.")
    atol: float = _f(1e-6, 0, 1e6, "Absolute tolerance of the golden comparison.")
    warmup_iterations: int = _i(20, 0, 100_000, "Benchmark iterations run first and discarded.")
    iterations: int = _i(200, 1, 1_000_000, "Benchmark iterations measured.")
    batch_size: int = _i(1, 1, 65_536, "Batch size of the benchmark.")
    latency_ms: LatencyMs | None = _d(None, "Latency limits; absent: none.")
    timeout_s: float = _f(600, 0, 86_400, "Deadline of the whole verify step, s.", gt=True)
    signature: Annotated[str, StringConstraints(pattern=_SIGNATURE)] = \
        _d("serving_default", "SavedModel signature called.")
    method: Annotated[str, StringConstraints(pattern=METHOD_PATTERN)] = _d(
        "predict", "joblib models: the method called with the inputs (`predict`, "
                   "`predict_proba`, `decision_function`, `transform`, ...; `__call__` for a "
                   "model that is itself callable).")
    allow_version_mismatch: bool = _d(
        False, "Accept a golden file recorded with other framework versions than the lock's.")
    min_throughput: float | None = _f(None, 0, 1e9, "Minimum samples per second.", gt=True)
    max_regression: float | None = _f(
        None, 1, 1000, "Re-verification fails when p95 latency exceeds this factor of the "
                       "baseline recorded at deploy time.")
    _check_path = field_validator("golden")(_no_dotdot)


class Release(_Strict):
    """Release retention on each host."""

    keep: int = _i(5, 1, 100, "Releases kept per app on each host (current and rollback target "
                              "always kept).")


class Service(_Strict):
    """The optional service restart after the switch, and its health check."""

    restart: Command | None = _d(None, "Shell command run on the host after the switch, e.g. "
                                       "`systemctl restart app`.")
    health_url: Annotated[str, StringConstraints(pattern=_URL)] \
        | None = _d(None, "HTTP URL that must answer 2xx after the switch.")
    health_command: Command | None = _d(None, "Shell command that must exit 0 after the switch.")
    health_timeout_s: float = _f(30, 0, 3600, "How long the health check may take, s.", gt=True)
    container: Container | None = _d(None, "An image release's serving container, replaced "
                                           "at each switch (instead of restart).")

    @model_validator(mode="after")
    def _one_health_check(self) -> Service:
        if self.health_url and self.health_command:
            raise ValueError("give health_url or health_command, not both")
        if self.container is not None and self.restart:
            raise ValueError("give restart or container, not both")
        return self


class Reverify(_Strict):
    """Periodic re-verification of deployed hosts (a driver upgrade can break a model)."""

    every: Duration = Field(description="Interval of re-verification: 30m, 6h, 1d (>= 1m).")
    on_failure: Literal["report", "rollback", "redeploy"] = _d(
        "report", "What a failed re-verification does.")

    @field_validator("every")
    @classmethod
    def _bounded(cls, value: str) -> str:
        if not 60 <= duration_seconds(value) <= 365 * 86_400:
            raise ValueError("must be between 1m and 365d")
        return value

    @property
    def every_s(self) -> int:
        return duration_seconds(self.every)


@dataclass(frozen=True)
class SpecPaths:
    """Absolute, symlink-resolved paths of the files a spec names."""

    dir: Path
    model: Path
    requirements: Path | None  # None for an image environment
    golden: Path
    wheelhouse: Path | None
    image: Path | None = None  # the image archive, for an image environment
    image_base: Path | None = None  # the base image archive, for an image built at deploy


class Spec(_Strict):
    """A deployment spec. Fields are the YAML's; `file`, `dir`, `paths`, `digest` are set by
    `load_spec` (they are not part of the YAML)."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, title="Orchestrator deployment spec",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"})

    apiVersion: Literal["orchestrator/v1"] = Field(description="Always orchestrator/v1.")
    kind: Literal["Deployment"] = Field(description="Always Deployment.")
    name: Name = Field(description="App name, ^[a-z0-9][a-z0-9-]{0,62}$; used in host paths.")
    model: ModelSection
    environment: Environment
    gpu: GpuSection = GpuSection()
    targets: list[Target] = Field(min_length=1, max_length=10_000, description=(
        "Host names, group names or label selectors (zone=a, gpu in (a100,h100), !draining) "
        "from the inventory."))
    rollout: Rollout = Rollout()
    verify: Verify
    release: Release = Release()
    service: Service | None = None
    reverify: Reverify | None = None

    @model_validator(mode="after")
    def _container_needs_image(self) -> Spec:
        if self.service and self.service.container and self.environment.image is None:
            raise ValueError("service.container needs environment.image (a venv release "
                             "has no image to run)")
        return self

    _file: str = PrivateAttr(default="<spec>")
    _paths: SpecPaths | None = PrivateAttr(default=None)
    _digest: str = PrivateAttr(default="")
    _doc: YamlDocument | None = PrivateAttr(default=None)

    @property
    def file(self) -> str:
        return self._file

    @property
    def paths(self) -> SpecPaths:
        if self._paths is None:
            raise RuntimeError("Spec.paths is only set by load_spec")
        return self._paths

    @property
    def dir(self) -> Path:
        return self.paths.dir

    @property
    def digest(self) -> str:
        """sha256 (hex) of the spec file's bytes."""
        return self._digest

    def error(self, path: tuple[str | int, ...], message: str) -> SpecError:
        """A `SpecError` at the line where `path` (e.g. ("model", "sha256")) was written."""
        if self._doc is None:
            return SpecError(message, file=self._file, field=format_path(path) or None)
        return self._doc.error(path, message)


def duration_seconds(text: str) -> int:
    """"6h" -> 21600."""
    match = re.fullmatch(r"([0-9]+)([smhd])", text)
    if match is None:
        raise ValueError(f"bad duration {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def load_spec(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> Spec:
    """Read and validate a spec file; any problem is a `SpecError` with file, line and field."""
    p = Path(path)
    data = read_limited(p, max_bytes)
    doc = parse_yaml(data, str(p), max_bytes=max_bytes)
    spec = spec_from_document(doc)
    spec._file = str(p)
    spec._doc = doc
    spec._digest = hashlib.sha256(data).hexdigest()
    # A symlinked spec resolves its files like the file it points to: next to the target.
    spec._paths = _resolve_paths(doc, spec, p.resolve().parent)
    return spec


def check_model_hash(spec: Spec) -> None:
    """The model must hash to `model.sha256` (else a SpecError at that line) and hold nothing
    without a defined tree hash (a symlink, FIFO, device or socket inside: a SpecError naming
    it). What the controller checks before it sends anything to a host: at submission to the
    daemon (daemon/bundle.py) and in `orchestrator deploy` (deploy/batch.py `prepare`)."""
    actual = hash_path(spec.paths.model, spec.model.follow_symlinks)
    if actual != spec.model.sha256:
        raise spec.error(("model", "sha256"),
                         f"mismatch: the spec says {spec.model.sha256} but {spec.model.path} "
                         f"hashes to {actual}")


def spec_from_document(doc: YamlDocument) -> Spec:
    if not isinstance(doc.data, dict):
        raise doc.error((), "a spec must be a mapping (apiVersion, kind, name, ...)")
    try:
        return Spec.model_validate(doc.data)
    except ValidationError as exc:
        raise validation_error(doc, exc, PATTERN_HINTS) from exc


def _resolve_paths(doc: YamlDocument, spec: Spec, spec_dir: Path) -> SpecPaths:
    root = spec_dir.resolve()

    def inside(field: tuple[str, ...], rel: str) -> Path:
        resolved = (root / rel).resolve()
        if not resolved.is_relative_to(root):
            raise doc.error(field, f"{rel!r} resolves to {resolved}, outside the spec's folder "
                                   f"{root}")
        return resolved

    env = spec.environment
    return SpecPaths(
        dir=root,
        model=inside(("model", "path"), spec.model.path),
        requirements=(inside(("environment", "requirements"), env.requirements)
                      if env.requirements else None),
        golden=inside(("verify", "golden"), spec.verify.golden),
        wheelhouse=inside(("environment", "wheelhouse"), env.wheelhouse) if env.wheelhouse
        else None,
        image=inside(("environment", "image", "archive"), env.image.archive) if env.image
        else None,
        image_base=inside(("environment", "image_base", "archive"), env.image_base.archive)
        if env.image_base else None,
    )


__all__ = ["API_VERSION", "FORMATS", "METHOD_PATTERN", "Spec", "SpecError", "SpecPaths",
           "check_model_hash", "duration_seconds", "load_spec"]
