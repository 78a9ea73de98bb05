"""Typed calls of the host-side release script (`orchestrator/hosts/remote/hostops.py`) over a
transport.

`HostOps(transport, deploy_root)` ships the script with the other host-side scripts
(orchestrator.hosts.shipping: one content-addressed bundle per host), then runs

    python3 -E <tools>/hostops.py <op> --json-args -   (the arguments: one JSON object on stdin)

and turns its one JSON object into a dataclass, or into `HostOpFailed` (a `HostError`) carrying
the script's stable `kind` (`OpKind`) and details. The pipeline's stage/install/switch steps are
sequences of these calls; every call is idempotent on the host, so a step re-run after a crash
finishes or cleans its own half-done work. The order a deploy uses:

    stage_begin -> upload_model + put the lock to .lock_path -> verify_model
    -> push_wheels (wheels_missing + put + wheels_verify) -> push_uv
    -> venv_ensure(app=, release_id=) -> stage_commit -> write_manifest -> [warmup]
    -> switch -> [check] -> prune
    failure before switch: abort_stage;  at/after switch: rollback(from_release=new, mark_bad=True)

(The pipeline, steps/host.py, sends the same ops in fewer calls: probe + state in one batch;
stage-begin, the lock and a small model as `write-file`s, verify-model and wheels-missing in
one; venv-ensure with `need_uv`, uv pushed only when a venv must be built; after the warmup,
write-manifest + stage-commit in one.)

Upload the lock before the wheels: prune's wheel GC keeps what some release's lock lists.

Each call is one SSH command and one interpreter start on the host, which on a busy host is
most of what a small op costs; `batch` runs several ops back to back in one process (stopping
at the first failure, which raises exactly what that op alone would have raised), so a
pipeline step that needs three small ops pays for one.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from orchestrator.core.release import Manifest
from orchestrator.errors import BadHostOutput, HostError
from orchestrator.hosts import layout
from orchestrator.hosts.shipping import RemoteTools, ensure_tools
from orchestrator.hosts.transport import Transport

DEFAULT_TIMEOUT_S = 120.0
VENV_TIMEOUT_S = 1800.0
#: A model this small (in this few files) travels inside the stage step's one batch call
#: (base64 in its JSON arguments) instead of one SFTP upload per file.
INLINE_MAX_BYTES = 4 << 20
INLINE_MAX_FILES = 16


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
    VENV_FAILED = "venv-failed"
    INSTALL_FAILED = "install-failed"
    CHECK_FAILED = "check-failed"
    TIMEOUT = "timeout"
    BUSY = "busy"
    STALE_GENERATION = "stale-generation"
    UV_MISSING = "uv-missing"
    BAD_RELEASE = "bad-release"
    IS_CURRENT = "is-current"
    IS_ROLLBACK_TARGET = "is-rollback-target"
    NO_ROLLBACK_TARGET = "no-rollback-target"
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
class SmallModel:
    verify_path: str                       # what verify_model takes ("model" or model/<file>)
    files: tuple[tuple[str, bytes], ...]   # (path relative to the release dir, content)

    def write_calls(self, app: str, release_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The `write-file` calls that put it into the staged release."""
        return [("write-file", {"app": app, "release_id": release_id, "path": path,
                                "data": base64.b64encode(data).decode("ascii")})
                for path, data in self.files]


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
        reply = json.loads(lines[-1]) if lines else None
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


class HostOps:
    """The release operations of one host, under one deploy_root, over one transport."""

    def __init__(self, transport: Transport, deploy_root: str, *, python: str = "python3") -> None:
        if not posixpath.isabs(deploy_root):
            raise ValueError(f"deploy_root must be absolute: {deploy_root!r}")
        self.transport, self.root, self.python = transport, posixpath.normpath(deploy_root), python
        self._tools: RemoteTools | None = None

    @property
    def host(self) -> str:
        return self.transport.host

    def ensure_file(self, data_or_path: bytes | Path, remote_path: str, *, mode: int,
                    timeout: float = DEFAULT_TIMEOUT_S) -> bool:
        """Upload unless the (content-addressed) remote path exists; True when uploaded."""
        if self.transport.run(["test", "-f", remote_path], timeout=timeout, check=False).ok:
            return False
        self.transport.put(data_or_path, remote_path, mode)
        return True

    def tools(self) -> RemoteTools:
        """The shipped scripts (orchestrator.hosts.shipping: one content-addressed bundle per
        host)."""
        if self._tools is None:
            self._tools = ensure_tools(self.transport, self.root)
        return self._tools

    def _argv(self, op: str) -> list[str]:
        # -S: the script is stdlib-only, and skipping `site` is a few ms of every call's
        # interpreter start (-E as RemoteTools.argv: the host's PYTHON* variables ignored).
        return [self.python, "-E", "-S", self.tools().script("hostops.py"), op,
                "--json-args", "-"]

    def call(self, op: str, args: Mapping[str, Any], *,
             timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """Run one op; the arguments travel on stdin (no argv length limit, nothing in `ps`)."""
        argv = self._argv(op)
        payload = json.dumps({"root": self.root, **args}).encode("utf-8")
        result = self.transport.run(argv, timeout=timeout, stdin=payload, check=False)
        return parse_reply(self.host, op, result.exit_code, result.stdout, result.stderr)

    def batch(self, calls: Sequence[tuple[str, Mapping[str, Any]]], *,
              timeout: float = DEFAULT_TIMEOUT_S,
              max_output: int | None = None) -> list[dict[str, Any]]:
        """Run (op, args) calls in order in one host process; each op's reply, or the
        HostOpFailed of the first that failed (the later ones did not run)."""
        argv = self._argv("batch")
        payload = json.dumps({"root": self.root,
                              "ops": [{"op": op, "args": dict(args)} for op, args in calls]})
        result = self.transport.run(argv, timeout=timeout, stdin=payload.encode("utf-8"),
                                    check=False, max_output=max_output)
        return parse_batch_reply(self.host, [op for op, _ in calls], result.exit_code,
                                 result.stdout, result.stderr)

    # -- stage ---------------------------------------------------------------------------------

    def stage_begin(self, app: str, release_id: str, *, deployment: str | None = None,
                    force: bool = False, lock_sha256: str | None = None,
                    timeout: float = DEFAULT_TIMEOUT_S) -> StagedRelease:
        """Create or resume releases/<id>.staging; HostOpFailed(BUSY) while another release of
        the app is being staged (one deployment per app and host at a time). With
        `lock_sha256`, the host copies that lock file from a release that has it
        (`lock_present`): then it need not be uploaded."""
        args: dict[str, Any] = {"app": app, "release_id": release_id,
                                "deployment": deployment, "force": force}
        if lock_sha256 is not None:
            args["lock_sha256"] = lock_sha256
        return staged_release(app, release_id, self.call("stage-begin", args, timeout=timeout))

    def verify_model(self, app: str, release_id: str, sha256: str, *, path: str = "model",
                     timeout: float = DEFAULT_TIMEOUT_S) -> str:
        """Recompute the model hash on the host (tree hash of a directory, sha256 of a file;
        `path` relative to the release dir). HostOpFailed(HASH_MISMATCH) names both."""
        r = self.call("stage-verify-model", {"app": app, "release_id": release_id,
                                             "sha256": sha256, "path": path}, timeout=timeout)
        return str(r["hash_kind"])

    def stage_commit(self, app: str, release_id: str, *,
                     timeout: float = DEFAULT_TIMEOUT_S) -> str:
        r = self.call("stage-commit", {"app": app, "release_id": release_id}, timeout=timeout)
        return str(r["path"])

    def write_manifest(self, app: str, release_id: str, manifest: Manifest | Mapping[str, Any],
                       *, timeout: float = DEFAULT_TIMEOUT_S) -> str:
        data = manifest.to_json() if isinstance(manifest, Manifest) else dict(manifest)
        r = self.call("write-manifest", {"app": app, "release_id": release_id,
                                         "manifest": data}, timeout=timeout)
        return str(r["path"])

    def upload_model(self, local: Path, staged: StagedRelease, *,
                     timeout: float = DEFAULT_TIMEOUT_S) -> str:
        """Put a model file (as model/<name>) or directory (as model/...) into the staged
        release; returns the `path` to give verify_model."""
        if local.is_file():
            self.transport.put(local, posixpath.join(staged.model_path, local.name), 0o644)
            return layout.model_rel(local.name, is_dir=False)
        for f in sorted(p for p in local.rglob("*") if p.is_file()):  # put makes parent dirs
            self.transport.put(f, posixpath.join(staged.model_path,
                                                 f.relative_to(local).as_posix()), 0o644)
        return layout.model_rel(local.name, is_dir=True)

    @staticmethod
    def small_model(local: Path, *, max_bytes: int = INLINE_MAX_BYTES,
                    max_files: int = INLINE_MAX_FILES) -> SmallModel | None:
        """A small model's files, placed as `upload_model` places them, for `write-file`
        calls in a batch; None when it is too big for that and goes by SFTP."""
        files = [local] if local.is_file() else sorted(
            p for p in local.rglob("*") if p.is_file())
        if not files or len(files) > max_files or sum(
                f.stat().st_size for f in files) > max_bytes:
            return None
        if local.is_file():
            rel = layout.model_rel(local.name, is_dir=False)
            return SmallModel(rel, ((rel, local.read_bytes()),))
        return SmallModel(layout.MODEL, tuple(
            (posixpath.join(layout.MODEL, f.relative_to(local).as_posix()), f.read_bytes())
            for f in files))

    def abort_stage(self, app: str, release_id: str, *,
                    timeout: float = DEFAULT_TIMEOUT_S) -> tuple[str, ...]:
        r = self.call("abort-stage", {"app": app, "release_id": release_id}, timeout=timeout)
        return tuple(r["removed"])

    # -- wheels and venvs ----------------------------------------------------------------------

    def wheels_missing(self, shas: Sequence[str], *,
                       timeout: float = DEFAULT_TIMEOUT_S) -> tuple[str, ...]:
        return tuple(self.call("wheels-missing", {"shas": list(shas)}, timeout=timeout)["missing"])

    def wheels_verify(self, shas: Sequence[str], *,
                      timeout: float = DEFAULT_TIMEOUT_S) -> tuple[str, ...]:
        return tuple(self.call("wheels-verify", {"shas": list(shas)}, timeout=timeout)["verified"])

    def push_wheels(self, wheels: Mapping[str, Path], *, missing: Sequence[str] | None = None,
                    timeout: float = VENV_TIMEOUT_S) -> tuple[str, ...]:
        """Upload the wheels ({sha256: local file}) the host's cache lacks, each verified by
        sha256 on arrival; returns the shas uploaded. `missing`: what a `wheels-missing` in
        an earlier batch said the host lacks (else it is asked here)."""
        if missing is None:
            missing = self.wheels_missing(sorted(wheels), timeout=timeout)
        missing = tuple(missing)
        for sha in missing:
            self.transport.put(wheels[sha], layout.wheel_upload(self.root, sha), 0o644)
        if missing:
            self.wheels_verify(missing, timeout=timeout)
        return missing

    def push_uv(self, uv_binary: Path, *, timeout: float = DEFAULT_TIMEOUT_S) -> str:
        """Ship the controller's own uv binary once per host, content-addressed; its path."""
        remote = self.uv_path(uv_binary)
        self.ensure_file(uv_binary, remote, mode=0o755, timeout=timeout)
        return remote

    def uv_path(self, uv_binary: Path) -> str:
        """Where this uv binary lives on the host (content-addressed; maybe not there yet)."""
        st = uv_binary.stat()
        digest = _file_digest(str(uv_binary), st.st_size, st.st_mtime_ns)
        return layout.uv_binary(self.root, digest)

    def venv_ensure(self, env_hash: str, lock_path: str, wheels: Mapping[str, str], *,
                    installer: str = "uv", uv: str | None = None, python: str | None = None,
                    app: str | None = None, release_id: str | None = None,
                    compile_bytecode: bool = False, wait_s: float = VENV_TIMEOUT_S,
                    need_uv: bool = False, timeout: float = VENV_TIMEOUT_S) -> VenvResult:
        """Reuse or build venvs/<env_hash> (wheels: {sha256: real filename}). `lock_path` is
        the staged requirements.lock in either format: for a PEP 751 pylock the host installs
        from `name==version --hash` lines of exactly these wheels, each of whose sha256 the
        pylock must list for that package (else INSTALL_FAILED naming it). With app and
        release_id the release's `venv` link is made under the venv's lock. A concurrent
        builder of the same env waits (up to wait_s) and then reuses it. With `need_uv`, a
        build refuses with HostOpFailed(UV_MISSING) while `uv` is not on the host (a reused
        venv never needs it: `uv_path` + upload + call again only when that happens)."""
        args: dict[str, Any] = {
            "env_hash": env_hash, "lock": lock_path, "wheels": dict(wheels),
            "installer": installer, "uv": uv, "python": python or self.python,
            "compile_bytecode": compile_bytecode, "wait_s": min(wait_s, timeout),
            "timeout_s": max(timeout - 30, 1),  # each installer run; the call has `timeout`
        }
        if need_uv:
            args["need_uv"] = True
        if app is not None:
            args.update(app=app, release_id=release_id)
        r = self.call("venv-ensure", args, timeout=timeout)
        return VenvResult(r["env_hash"], r["path"], bool(r["reused"]), str(r["installer"]),
                          r.get("fallback_reason"), tuple(r["freeze"]), dict(r["durations"]),
                          float(r["waited_s"]))

    # -- switch, rollback, views ---------------------------------------------------------------

    def switch(self, app: str, release_id: str, generation: int, *,
               timeout: float = DEFAULT_TIMEOUT_S) -> SwitchResult:
        """Atomically point `current` at a committed release. HostOpFailed(STALE_GENERATION)
        when the host has seen a newer generation; the same generation again is a no-op."""
        r = self.call("switch", {"app": app, "release_id": release_id,
                                 "generation": generation}, timeout=timeout)
        return _switch_result(r)

    def rollback(self, app: str, *, to: str = "previous", from_release: str | None = None,
                 generation: int | None = None, mark_bad: bool = False,
                 timeout: float = DEFAULT_TIMEOUT_S) -> SwitchResult:
        """Back to `to` (a release id or the previous good one). With `from_release` it is
        idempotent (nothing moves once `current` is not that release); `mark_bad` marks it
        bad first. Without a generation the host's is bumped (a manual rollback outranks any
        deployment in flight)."""
        args: dict[str, Any] = {"app": app, "to": to, "mark_bad": mark_bad}
        if from_release is not None:
            args["from"] = from_release
        if generation is not None:
            args["generation"] = generation
        return _switch_result(self.call("rollback", args, timeout=timeout))

    def mark_bad(self, app: str, release_id: str, *,
                 timeout: float = DEFAULT_TIMEOUT_S) -> tuple[str, ...]:
        r = self.call("mark-bad", {"app": app, "release_id": release_id}, timeout=timeout)
        return tuple(r["bad"])

    def releases(self, app: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> list[ReleaseInfo]:
        rows = self.call("releases", {"app": app}, timeout=timeout)["releases"]
        return [ReleaseInfo(r["release_id"], r["state"], r["path"], float(r["created"]),
                            r.get("env_hash"), r.get("manifest") or {}) for r in rows]

    def state(self, app: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> AppState:
        """The host's real state (readlink `current` first): what crash recovery starts from."""
        return app_state(self.call("state", {"app": app}, timeout=timeout))

    def prune(self, app: str, keep: int, *, grace_s: float = 600.0,
              timeout: float = DEFAULT_TIMEOUT_S) -> PruneResult:
        r = self.call("prune", {"app": app, "keep": keep, "grace_s": grace_s}, timeout=timeout)
        return PruneResult(tuple(r["removed_releases"]), tuple(r["removed_venvs"]),
                           tuple(r["removed_wheels"]), tuple(r["kept"]),
                           bool(r.get("uv_cache_cleared", False)))


@lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, remembered while its size and mtime stay (uv is ~40 MB)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def staged_release(app: str, release_id: str, r: Mapping[str, Any]) -> StagedRelease:
    """The `stage-begin` op's reply as a StagedRelease (also a `batch` result)."""
    return StagedRelease(app, release_id, r["path"], r["state"], bool(r["resumed"]),
                         r.get("free_bytes"), bool(r.get("lock_present", False)))


def app_state(r: Mapping[str, Any]) -> AppState:
    """The `state` op's reply as an AppState (also a `batch` result)."""
    return AppState(r["current"], bool(r["current_resolves"]), int(r["generation"]),
                    r["previous_good"], tuple(r["bad"]), tuple(r["history"]),
                    r["switching"], tuple(r["staging"]), tuple(r["committed"]))


def _switch_result(r: Mapping[str, Any]) -> SwitchResult:
    service = r.get("service")
    return SwitchResult(r["current"], r["before"], bool(r["changed"]), int(r["generation"]),
                        r.get("previous_good"), tuple(r.get("marked_bad", ())),
                        service if isinstance(service, Mapping) else None)
