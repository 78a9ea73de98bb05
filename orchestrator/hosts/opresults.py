"""What host ops answer: their stable failure kinds (`OpKind`), the failure (`HostOpFailed`),
the reply envelope's parsing, and each reply's dataclass with the pure function that builds it.

Why apart from `orchestrator.hosts.ops` (the builders) and `hostops` (running them): replies are
pure data, tested from recorded JSON without a host, and both of the others read them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.core import hostjson
from orchestrator.core.gpuhealth import UUID as GPU_UUID
from orchestrator.errors import BadHostOutput, HostError
from orchestrator.hosts import layout


class OpKind(enum.StrEnum):
    """The script's stable failure kinds (its "kind" field): branch on these, never on text."""

    BAD_ARGS = "bad-args"
    NOT_FOUND = "not-found"
    BAD_MODEL = "bad-model"
    BAD_LOCK = "bad-lock"
    HASH_MISMATCH = "hash-mismatch"
    NOT_VERIFIED = "not-verified"
    WHEEL_HASH_MISMATCH = "wheel-hash-mismatch"
    MISSING_WHEEL = "missing-wheel"
    MISSING_FILE = "missing-file"    # model-receive: the stream ended inside a file
    TOO_LARGE = "too-large"          # file-receive: more bytes than announced or allowed
    MIRROR_UNREACHABLE = "mirror-unreachable"  # wheels-fetch: the host cannot get the mirror's
    VENV_FAILED = "venv-failed"
    INSTALL_FAILED = "install-failed"
    CHECK_FAILED = "check-failed"
    TIMEOUT = "timeout"
    BUSY = "busy"
    FENCED = "fenced"  # the deploy lock is another deployment's, or a later lease holder's
    STALE_GENERATION = "stale-generation"
    UV_MISSING = "uv-missing"
    BYTECODE_MISSING = "bytecode-missing"  # venv-ensure: ship the .pyc archive, call again
    BAD_BYTECODE = "bad-bytecode"  # venv-ensure: the archive holds what it may not write
    BAD_RELEASE = "bad-release"
    IS_CURRENT = "is-current"
    IS_ROLLBACK_TARGET = "is-rollback-target"
    NO_ROLLBACK_TARGET = "no-rollback-target"
    NO_CURRENT = "no-current"        # audit: the app has no current release
    BAD_MANIFEST = "bad-manifest"    # audit: the current release's manifest is unreadable
    ENGINE_FAILED = "engine-failed"  # image ops: docker/podman refused or failed
    IMAGE_MISMATCH = "image-mismatch"  # the loaded archive is not the image the spec names
    NOT_UPLOADED = "not-uploaded"    # image-ensure: the archive to load is not on the host
    OS_ERROR = "os-error"
    INTERNAL = "internal"
    UNKNOWN = "unknown"


class HostOpFailed(HostError):
    """The host-side script refused or failed an operation: `kind` says which way, `details`
    holds the rest of its JSON (e.g. `output` for an installer's full message)."""

    def __init__(self, host: str, op: str, kind: OpKind, message: str,
                 details: Mapping[str, Any]) -> None:
        self.op, self.kind, self.details = op, kind, dict(details)
        super().__init__(host, f"{op}: {message}")


@dataclass(frozen=True)
class StagedRelease:
    app: str
    release_id: str
    path: str            # releases/<id>.staging (or releases/<id> once committed)
    state: str           # "staging" | "committed"
    resumed: bool
    free_bytes: int | None
    lock_present: bool = False  # the host already put the lock file (same sha256) in place

    @property
    def model_path(self) -> str:
        return layout.in_release(self.path, layout.MODEL)

    @property
    def lock_path(self) -> str:
        return layout.in_release(self.path, layout.LOCK_FILE)


@dataclass(frozen=True)
class VenvResult:
    env_hash: str
    path: str
    reused: bool
    installer: str           # "uv" or "pip" (what really built it)
    fallback_reason: str | None
    freeze: tuple[str, ...]
    durations: Mapping[str, float]  # venv/install/check seconds; empty when reused
    waited_s: float              # time spent waiting for another builder of the same env
    # What the controller's .pyc archive did in this build ({"shipped", "files", "bytes",
    # "unpack_s"} or why not); None when reused or nothing was shipped.
    bytecode: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ImagePresence:
    present: bool       # the host's engine has the image (by id)
    upload_path: str    # where the archive goes when it has not


@dataclass(frozen=True)
class ImageResult:
    image_id: str       # sha256:<config digest>, as the engine names it
    reused: bool        # the engine had it: nothing was shipped or loaded
    launcher: str       # the staged release's `python`: python3 inside the image


@dataclass(frozen=True)
class ContainerServed:
    """container-serve: the serving container now runs the app's current release."""

    container: str      # its stable name
    release_id: str
    image_id: str
    reused: bool        # it already ran that release in that image: nothing was replaced
    replaced: str | None  # the release the replaced container ran (None: there was none)
    ready_s: float


@dataclass(frozen=True)
class ContainerStatus:
    """container-status: what the serving container runs against what the release names."""

    container: str
    running: bool
    image_id: str | None    # None: no such container
    release_id: str | None
    expected_image_id: str
    current: str


@dataclass(frozen=True)
class SwitchResult:
    current: str | None
    before: str | None
    changed: bool
    generation: int
    previous_good: str | None
    marked_bad: tuple[str, ...] = ()
    # rollback only: the `service` of the manifest of the release now current (None: unknown)
    service: Mapping[str, Any] | None = None
    # rollback only: the GPU UUIDs that release was placed on (its CUDA_VISIBLE_DEVICES)
    gpus: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReleaseInfo:
    release_id: str
    state: str   # current | previous-good | bad | staging | staged | old
    path: str
    created: float
    env_hash: str | None
    manifest: Mapping[str, Any]


@dataclass(frozen=True)
class AppState:
    current: str | None
    current_resolves: bool
    generation: int
    previous_good: str | None
    bad: tuple[str, ...]
    history: tuple[str, ...]
    switching: Mapping[str, Any] | None  # set: a switch was cut short (intent without outcome)
    staging: tuple[str, ...]
    committed: tuple[str, ...]


@dataclass(frozen=True)
class PruneResult:
    removed_releases: tuple[str, ...]
    removed_venvs: tuple[str, ...]
    removed_wheels: tuple[str, ...]
    kept: tuple[str, ...]
    uv_cache_cleared: bool = False  # dropped with the last venv using it (re-filled on demand)
    removed_images: tuple[str, ...] = ()  # engine images of removed releases no release names


def parse_reply(host: str, op: str, exit_code: int, stdout: str, stderr: str) -> dict[str, Any]:
    """The script's one JSON object, or the error it reports (pure: tested from data)."""
    reply = _json_reply(host, op, exit_code, stdout, stderr)
    if reply["ok"] is not True or exit_code != 0:
        raise _failed(host, op, reply)
    return reply


def parse_batch_reply(host: str, ops: Sequence[str], exit_code: int, stdout: str,
                      stderr: str) -> list[dict[str, Any]]:
    """Each op's reply of a `batch`, or the HostOpFailed of the first op that failed, named
    and shaped as if it had been called alone (pure: tested from data)."""
    reply = _json_reply(host, "batch", exit_code, stdout, stderr)
    results = reply.get("results")
    if not isinstance(results, list):  # the batch itself was refused (bad arguments, a bug)
        return [parse_reply(host, "batch", exit_code, stdout, stderr)]
    for name, result in zip(ops, results, strict=False):
        if not isinstance(result, dict) or result.get("ok") is not True:
            raise _failed(host, name, result if isinstance(result, dict) else {})
    if reply["ok"] is not True or exit_code != 0 or len(results) != len(ops):
        raise BadHostOutput(host, f"hostops batch exited {exit_code} with {len(results)} of "
                                  f"{len(ops)} results and no failure")
    return results


def _json_reply(host: str, op: str, exit_code: int, stdout: str, stderr: str) -> dict[str, Any]:
    lines = stdout.strip().splitlines()
    try:
        reply = hostjson.loads(lines[-1]) if lines else None
    except hostjson.HostJsonError as exc:
        raise BadHostOutput(host, f"host sent an invalid reply to {op}: {exc}") from None
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or "ok" not in reply:
        tail = " | ".join((stderr or stdout).strip().splitlines()[-5:])
        raise BadHostOutput(host, f"hostops {op} exited {exit_code} without a JSON reply: {tail}")
    return reply


def _failed(host: str, op: str, reply: Mapping[str, Any]) -> HostOpFailed:
    try:
        kind = OpKind(str(reply.get("kind")))
    except ValueError:
        kind = OpKind.UNKNOWN
    details = {k: v for k, v in reply.items() if k not in ("ok", "error", "kind")}
    return HostOpFailed(host, op, kind, str(reply.get("error", "failed")), details)


@dataclass(frozen=True)
class LockHeld:
    """The `deploy-lock` op's reply: the lock's path, and whether this deployment already held
    it (a resumed pipeline)."""

    lock: str
    resumed: bool


def staged_release(app: str, release_id: str, r: Mapping[str, Any]) -> StagedRelease:
    """The `stage-begin` op's reply as a StagedRelease (also a `batch` result)."""
    free = r.get("free_bytes")
    return StagedRelease(app, release_id, text(r, "path"), text(r, "state"), flag(r, "resumed"),
                         None if free is None else count(r, "free_bytes"),
                         bool(r.get("lock_present", False)))


def app_state(r: Mapping[str, Any]) -> AppState:
    """The `state` op's reply as an AppState (also a `batch` result)."""
    switching = r["switching"]
    if switching is not None and not isinstance(switching, Mapping):
        raise ValueError("field 'switching' is not an object")
    return AppState(opt_text(r, "current"), flag(r, "current_resolves"), count(r, "generation"),
                    opt_text(r, "previous_good"), texts(r, "bad"), texts(r, "history"),
                    switching, texts(r, "staging"), texts(r, "committed"))


def switch_result(r: Mapping[str, Any]) -> SwitchResult:
    service = r.get("service")
    gpus = texts(r, "gpus") if r.get("gpus") is not None else ()
    if not all(GPU_UUID.match(g) for g in gpus):  # they become an environment variable
        raise ValueError("field 'gpus' holds a value that is not a GPU UUID")
    return SwitchResult(text(r, "current"), opt_text(r, "before"), flag(r, "changed"),
                        count(r, "generation"), opt_text(r, "previous_good"),
                        texts(r, "marked_bad") if "marked_bad" in r else (),
                        service if isinstance(service, Mapping) else None, gpus)


def venv_result(r: Mapping[str, Any]) -> VenvResult:
    durations = r["durations"]
    if not isinstance(durations, Mapping):
        raise ValueError("field 'durations' is not an object")
    return VenvResult(text(r, "env_hash"), text(r, "path"), flag(r, "reused"),
                      text(r, "installer"), opt_text(r, "fallback_reason"), texts(r, "freeze"),
                      dict(durations), number(r, "waited_s"), _opt_object(r, "bytecode"))


def _opt_object(r: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = r.get(key)
    if value is not None and not isinstance(value, Mapping):
        raise ValueError(f"field {key!r} is not an object")
    return value


def image_presence(r: Mapping[str, Any]) -> ImagePresence:
    return ImagePresence(flag(r, "present"), text(r, "upload_path"))


def image_result(r: Mapping[str, Any]) -> ImageResult:
    return ImageResult(text(r, "image_id"), flag(r, "reused"), text(r, "launcher"))


def container_served(r: Mapping[str, Any]) -> ContainerServed:
    return ContainerServed(text(r, "container"), text(r, "release_id"), text(r, "image_id"),
                           flag(r, "reused"), opt_text(r, "replaced"), number(r, "ready_s"))


def container_report(r: Mapping[str, Any]) -> ContainerStatus:
    return ContainerStatus(text(r, "container"), flag(r, "running"), opt_text(r, "image_id"),
                           opt_text(r, "release_id"), text(r, "expected_image_id"),
                           text(r, "current"))


def release_infos(r: Mapping[str, Any]) -> list[ReleaseInfo]:
    releases = r["releases"]
    if not isinstance(releases, list) or not all(isinstance(x, Mapping) for x in releases):
        raise ValueError("field 'releases' is not a list of objects")
    out = []
    for x in releases:
        manifest = x.get("manifest") or {}
        if not isinstance(manifest, Mapping):
            raise ValueError("a release's 'manifest' is not an object")
        out.append(ReleaseInfo(text(x, "release_id"), text(x, "state"), text(x, "path"),
                               number(x, "created"), opt_text(x, "env_hash"), manifest))
    return out


def prune_result(r: Mapping[str, Any]) -> PruneResult:
    return PruneResult(texts(r, "removed_releases"), texts(r, "removed_venvs"),
                       texts(r, "removed_wheels"), texts(r, "kept"),
                       bool(r.get("uv_cache_cleared", False)),
                       texts(r, "removed_images") if "removed_images" in r else ())


def lock_held(r: Mapping[str, Any]) -> LockHeld:
    return LockHeld(text(r, "lock"), flag(r, "resumed"))


# -- typed fields of a host's reply: a wrong type is the host's fault, said as ValueError -------

def text(r: Mapping[str, Any], key: str) -> str:
    value = r[key]
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} is not a string")
    return value


def opt_text(r: Mapping[str, Any], key: str) -> str | None:
    return None if r.get(key) is None else text(r, key)


def texts(r: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = r[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"field {key!r} is not a list of strings")
    return tuple(value)


def flag(r: Mapping[str, Any], key: str) -> bool:
    value = r[key]
    if not isinstance(value, bool):
        raise ValueError(f"field {key!r} is not true or false")
    return value


def count(r: Mapping[str, Any], key: str) -> int:
    value = r[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"field {key!r} is not a whole number >= 0")
    return value


def number(r: Mapping[str, Any], key: str) -> float:
    value = r[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"field {key!r} is not a number")
    return float(value)  # finite: hostjson refused the rest
