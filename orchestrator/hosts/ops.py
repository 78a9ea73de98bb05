"""The host contract on the controller: one typed builder per host op, and its reply's parser.

Every action on a host is an op of the shipped `remote/hostops.py` (the host side spells each
name once, in its `OPS` table); here each op has exactly one builder, a function whose typed
parameters become the op's JSON arguments, returning an `OpCall` that carries the op's name
(`Op`, spelled once on this side), its arguments and the parser of its reply:

    call = ops.state("fraud-detector")              # OpCall[AppState]
    app = hostops.run(call)                          # one SSH command -> AppState
    probe, state = ops.probe(), ops.state(app)       # or several in one host process:
    replies = hostops.batch([probe, state])          # raw replies, in order
    facts, app = probe.parse(replies[0]), state.parse(replies[1])

Why: an op's name and arguments were spelled in up to four places (the typed wrappers, raw
`("op", {...})` tuples in the pipeline, the tests, the script), so a changed argument was found
by a host refusing it. Now production, `HostOps`' wrappers and the tests all go through these
builders, and the replies become the dataclasses of `orchestrator.hosts.opresults`.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from orchestrator.core.release import Manifest
from orchestrator.hosts import layout
from orchestrator.hosts.opresults import (
    AppState,
    ContainerServed,
    ContainerStatus,
    ImagePresence,
    ImageResult,
    LockHeld,
    PruneResult,
    ReleaseInfo,
    StagedRelease,
    SwitchResult,
    VenvResult,
    app_state,
    container_report,
    container_served,
    image_presence,
    image_result,
    lock_held,
    prune_result,
    release_infos,
    staged_release,
    switch_result,
    venv_result,
)

T = TypeVar("T")


class Op(enum.StrEnum):
    """The ops of remote/hostops.py, by their wire names (the only place this side spells them)."""

    STAGE_BEGIN = "stage-begin"
    STAGE_VERIFY_MODEL = "stage-verify-model"
    STAGE_COMMIT = "stage-commit"
    WRITE_FILE = "write-file"
    WRITE_MANIFEST = "write-manifest"
    ABORT_STAGE = "abort-stage"
    WHEELS_MISSING = "wheels-missing"
    WHEELS_VERIFY = "wheels-verify"
    WHEELS_RECEIVE = "wheels-receive"
    WHEELS_FETCH = "wheels-fetch"
    MODEL_RECEIVE = "model-receive"
    FILE_RECEIVE = "file-receive"
    VENV_ENSURE = "venv-ensure"
    IMAGE_PRESENT = "image-present"
    IMAGE_ENSURE = "image-ensure"
    CONTAINER_SERVE = "container-serve"
    CONTAINER_REMOVE = "container-remove"
    CONTAINER_STATUS = "container-status"
    SWITCH = "switch"
    ROLLBACK = "rollback"
    MARK_BAD = "mark-bad"
    UNMARK_BAD = "unmark-bad"
    RELEASES = "releases"
    STATE = "state"
    PRUNE = "prune"
    PROBE = "probe"
    FREE_BYTES = "free-bytes"
    FILE_EXISTS = "file-exists"
    DEPLOY_LOCK = "deploy-lock"
    DEPLOY_UNLOCK = "deploy-unlock"
    AUDIT = "audit"
    KILL_GROUP = "kill-group"
    HEALTH = "health"
    WARMUP_RUN = "warmup-run"  # the host agent's: orchestrator/hosts/warmup.py `by_agent`
    BATCH = "batch"


def _raw(reply: Mapping[str, Any]) -> dict[str, Any]:
    return dict(reply)


@dataclass(frozen=True)
class OpCall(Generic[T]):
    """One op to run on a host: its name, its JSON arguments ("root" is added by HostOps), and
    how its reply becomes a value (`parse`)."""

    op: Op
    args: Mapping[str, Any]
    parser: Callable[[Mapping[str, Any]], T] = field(
        default=_raw, compare=False, repr=False)  # type: ignore[assignment]

    def parse(self, reply: Mapping[str, Any]) -> T:
        return self.parser(reply)

    def wire(self) -> dict[str, Any]:
        """The call as a `batch` entry."""
        return {"op": str(self.op), "args": dict(self.args)}


def _release(app: str, release_id: str) -> dict[str, Any]:
    return {"app": app, "release_id": release_id}


def _field(key: str, kind: Callable[[Any], T]) -> Callable[[Mapping[str, Any]], T]:
    return lambda reply: kind(reply[key])


def _tuple(key: str) -> Callable[[Mapping[str, Any]], tuple[str, ...]]:
    return lambda reply: tuple(reply[key])


# -- stage ------------------------------------------------------------------------------------

def stage_begin(app: str, release_id: str, *, deployment: str | None = None,
                force: bool = False, lock_sha256: str | None = None) -> OpCall[StagedRelease]:
    """Create or resume releases/<id>.staging (BUSY while another release of the app is being
    staged); with `lock_sha256` the host copies that lock from a release that has it."""
    args: dict[str, Any] = {**_release(app, release_id), "deployment": deployment,
                            "force": force}
    if lock_sha256 is not None:
        args["lock_sha256"] = lock_sha256
    return OpCall(Op.STAGE_BEGIN, args, lambda r: staged_release(app, release_id, r))


def verify_model(app: str, release_id: str, sha256: str, *,
                 path: str = layout.MODEL) -> OpCall[str]:
    """Recompute the model's hash on the host (`path` relative to the release dir); the reply
    is the hash kind ("tree" or "file"); HASH_MISMATCH names both hashes."""
    return OpCall(Op.STAGE_VERIFY_MODEL, {**_release(app, release_id), "sha256": sha256,
                                          "path": path}, _field("hash_kind", str))


def stage_commit(app: str, release_id: str) -> OpCall[str]:
    return OpCall(Op.STAGE_COMMIT, _release(app, release_id), _field("path", str))


def write_file(app: str, release_id: str, path: str, data: bytes) -> OpCall[str]:
    """Put a small file (inline, base64) at `path` inside the staged release."""
    return OpCall(Op.WRITE_FILE, {**_release(app, release_id), "path": path,
                                  "data": base64.b64encode(data).decode("ascii")},
                  _field("path", str))


def write_manifest(app: str, release_id: str,
                   manifest: Manifest | Mapping[str, Any]) -> OpCall[str]:
    data = manifest.to_json() if isinstance(manifest, Manifest) else dict(manifest)
    return OpCall(Op.WRITE_MANIFEST, {**_release(app, release_id), "manifest": data},
                  _field("path", str))


def abort_stage(app: str, release_id: str) -> OpCall[tuple[str, ...]]:
    return OpCall(Op.ABORT_STAGE, _release(app, release_id), _tuple("removed"))


# -- wheels and venvs -------------------------------------------------------------------------

def wheels_missing(shas: Sequence[str]) -> OpCall[tuple[str, ...]]:
    return OpCall(Op.WHEELS_MISSING, {"shas": list(shas)}, _tuple("missing"))


def wheels_verify(shas: Sequence[str]) -> OpCall[tuple[str, ...]]:
    return OpCall(Op.WHEELS_VERIFY, {"shas": list(shas)}, _tuple("verified"))


def wheels_receive(sizes: Mapping[str, int]) -> OpCall[tuple[str, ...]]:
    """The header of a stream of wheels ({sha256: size}, sent in this order): the host hashes
    each as it writes it (hostops_receive.py). Not for `batch`: its data follows on stdin."""
    return OpCall(Op.WHEELS_RECEIVE,
                  {"files": [{"sha": sha, "size": size} for sha, size in sizes.items()]},
                  _tuple("verified"))


def file_receive(what: str, sha256: str, size: int) -> OpCall[str]:
    """The header of one file sent whole ("uv" or "bytecode", hostops_receive.py TARGETS): the
    host hashes it as it writes it and keeps it only when it is `sha256`. Not for `batch`."""
    return OpCall(Op.FILE_RECEIVE, {"what": what, "sha": sha256, "size": size},
                  _field("path", str))


def model_receive(app: str, release_id: str,
                  sizes: Mapping[str, int]) -> OpCall[int]:
    """The header of a stream of a model's files ({path relative to the release: size}, sent in
    this order) into the release being staged (hostops_receive.py). Not for `batch`."""
    return OpCall(Op.MODEL_RECEIVE,
                  {**_release(app, release_id),
                   "files": [{"path": path, "size": size} for path, size in sizes.items()]},
                  _field("bytes", int))


def wheels_fetch(url: str, layout: str, wheels: Mapping[str, tuple[str, int]], *,
                 timeout_s: float = 60.0) -> OpCall[tuple[str, ...]]:
    """The host downloads these wheels ({sha256: (real filename, size)}) from the operator's
    mirror (`layout` "index": PEP 503/691, or "directory") or a peer host (`layout` "peer":
    <url>/<sha256>.whl, peerserve.py) and keeps only what hashes right
    (hostops_fetch.py)."""
    return OpCall(Op.WHEELS_FETCH,
                  {"url": url, "layout": layout, "timeout_s": timeout_s,
                   "wheels": [{"sha": sha, "filename": name, "size": size}
                              for sha, (name, size) in wheels.items()]},
                  _tuple("verified"))


def venv_ensure(env_hash: str, lock_path: str, wheels: Mapping[str, str], *,
                python: str, installer: str = "uv", uv: str | None = None,
                app: str | None = None, release_id: str | None = None,
                compile_bytecode: bool = False, wait_s: float, timeout_s: float,
                need_uv: bool = False, want_bytecode: bool = False,
                bytecode: tuple[str, int] | None = None) -> OpCall[VenvResult]:
    """Reuse or build venvs/<env_hash> (HostOps.venv_ensure says what each argument does)."""
    args: dict[str, Any] = {
        "env_hash": env_hash, "lock": lock_path, "wheels": dict(wheels),
        "installer": installer, "uv": uv, "python": python,
        "compile_bytecode": compile_bytecode, "wait_s": wait_s, "timeout_s": timeout_s,
    }
    if need_uv:
        args["need_uv"] = True
    if want_bytecode:
        args["want_bytecode"] = True
    if bytecode is not None:
        args["bytecode"] = {"sha256": bytecode[0], "size": bytecode[1]}
    if app is not None:
        args.update(app=app, release_id=release_id)
    return OpCall(Op.VENV_ENSURE, args, venv_result)


def image_present(image_id: str, archive_sha256: str, *,
                  engine: str) -> OpCall[ImagePresence]:
    """Whether the host's engine has the image, and where its archive would be uploaded."""
    return OpCall(Op.IMAGE_PRESENT, {"image_id": image_id, "archive_sha256": archive_sha256,
                                     "engine": engine}, image_presence)


def image_ensure(app: str, release_id: str, image_id: str, archive_sha256: str, *,
                 engine: str, gpu_args: Sequence[str], wait_s: float) -> OpCall[ImageResult]:
    """Load the uploaded archive unless the engine has the image (sha256 checked first), and
    write the staged release's launcher (remote/hostops_image.py)."""
    return OpCall(Op.IMAGE_ENSURE, {**_release(app, release_id), "image_id": image_id,
                                    "archive_sha256": archive_sha256, "engine": engine,
                                    "gpu_args": list(gpu_args), "wait_s": wait_s},
                  image_result)


def container_serve(app: str, name: str, command: Sequence[str], ready_command: str, *,
                    budget_s: float, stop_timeout_s: float) -> OpCall[ContainerServed]:
    """Make container `name` serve the app's current release in its image, the old one
    serving until the new one is ready (remote/hostops_container.py)."""
    return OpCall(Op.CONTAINER_SERVE, {"app": app, "name": name, "command": list(command),
                                       "ready_command": ready_command, "budget_s": budget_s,
                                       "stop_timeout_s": stop_timeout_s}, container_served)


def container_remove(app: str, name: str, release_id: str, *,
                     stop_timeout_s: float) -> OpCall[bool]:
    """Stop and remove container `name`, run by the engine of `release_id`'s image.json;
    True when there was one."""
    return OpCall(Op.CONTAINER_REMOVE, {**_release(app, release_id), "name": name,
                                        "stop_timeout_s": stop_timeout_s},
                  _field("removed", bool))


def container_status(app: str, name: str) -> OpCall[ContainerStatus]:
    """What container `name` runs, against the image the app's current release names."""
    return OpCall(Op.CONTAINER_STATUS, {"app": app, "name": name}, container_report)


# -- switch, rollback, views ------------------------------------------------------------------

def switch(app: str, release_id: str, generation: int) -> OpCall[SwitchResult]:
    return OpCall(Op.SWITCH, {**_release(app, release_id), "generation": generation},
                  switch_result)


def rollback(app: str, *, to: str = "previous", from_release: str | None = None,
             generation: int | None = None, mark_bad: bool = False,
             forget: bool = False) -> OpCall[SwitchResult]:
    args: dict[str, Any] = {"app": app, "to": to, "mark_bad": mark_bad}
    if forget:
        args["forget"] = True
    if from_release is not None:
        args["from"] = from_release
    if generation is not None:
        args["generation"] = generation
    return OpCall(Op.ROLLBACK, args, switch_result)


def mark_bad(app: str, release_id: str) -> OpCall[tuple[str, ...]]:
    return OpCall(Op.MARK_BAD, _release(app, release_id), _tuple("bad"))


def unmark_bad(app: str, release_id: str) -> OpCall[bool]:
    """Clear the release's bad mark; the reply says whether it was marked."""
    return OpCall(Op.UNMARK_BAD, _release(app, release_id), _field("changed", bool))


def releases(app: str) -> OpCall[list[ReleaseInfo]]:
    return OpCall(Op.RELEASES, {"app": app}, release_infos)


def state(app: str) -> OpCall[AppState]:
    """The host's real state of an app (readlink `current` first): what recovery starts from."""
    return OpCall(Op.STATE, {"app": app}, app_state)


def prune(app: str, keep: int, *, grace_s: float = 600.0) -> OpCall[PruneResult]:
    return OpCall(Op.PRUNE, {"app": app, "keep": keep, "grace_s": grace_s}, prune_result)


def probe(*, engines: bool = True) -> OpCall[dict[str, Any]]:
    """The host's facts (remote/probe.py's object, unparsed: core.facts parses it); without
    `engines` the container engines are not asked (their "engines" is null)."""
    return OpCall(Op.PROBE, {} if engines else {"engines": False}, lambda r: dict(r["facts"]))


# -- host actions beside the release ops ------------------------------------------------------

def free_bytes(path: str | None = None) -> OpCall[int]:
    """Bytes free to an unprivileged user on the filesystem of `path` (default: the root)."""
    return OpCall(Op.FREE_BYTES, {} if path is None else {"path": path},
                  _field("free_bytes", int))


def file_exists(path: str) -> OpCall[bool]:
    """Whether a regular file is at `path` on the host (before a content-addressed upload)."""
    return OpCall(Op.FILE_EXISTS, {"path": path}, _field("exists", bool))


def deploy_lock(app: str, owner: Mapping[str, Any], *, force: bool = False) -> OpCall[LockHeld]:
    """Take the app's deploy lock (`layout.deploy_lock`) for `owner` ({"deployment",
    "started"}); BUSY with the holder's `owner` while another deployment holds it. `force`
    breaks a lock left by a dead controller first."""
    return OpCall(Op.DEPLOY_LOCK, {"app": app, "owner": dict(owner), "force": force},
                  lock_held)


def deploy_unlock(app: str, deployment: str) -> OpCall[bool]:
    """Drop the app's deploy lock if (and only if) `deployment` holds it; True when dropped."""
    return OpCall(Op.DEPLOY_UNLOCK, {"app": app, "deployment": deployment},
                  _field("released", bool))


def health(app: str, mode: str, target: str, budget_s: float) -> OpCall[dict[str, Any]]:
    """health.py's check in the host's process (the agent's): {healthy, attempts, error}."""
    def parse(reply: Mapping[str, Any]) -> dict[str, Any]:
        healthy, attempts, error = reply["healthy"], reply["attempts"], reply.get("error")
        if not (isinstance(healthy, bool) and isinstance(attempts, int)
                and (error is None or isinstance(error, str))):
            raise ValueError("healthy, attempts or error of the wrong type")
        return {"healthy": healthy, "attempts": attempts, "error": error}
    return OpCall(Op.HEALTH, {"app": app, "mode": mode, "target": target, "budget": budget_s},
                  parse)


def audit(app: str) -> OpCall[dict[str, Any]]:
    """remote/audit.py's report of the app's current release (NO_CURRENT when it has none)."""
    return OpCall(Op.AUDIT, {"app": app})


def kill_group(pid_file: str, *remove: str) -> OpCall[bool]:
    """SIGKILL the process group whose leader's pid is in `pid_file` (a runner cut off at its
    deadline), then remove `pid_file` and `remove`; True when a group was signalled."""
    return OpCall(Op.KILL_GROUP, {"pid_file": pid_file, "remove": list(remove)},
                  _field("killed", bool))
