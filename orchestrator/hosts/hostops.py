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
    -> push_wheels (wheels_missing + wheels-receive's stream) -> push_uv (file-receive)
    -> venv_ensure(app=, release_id=) -> stage_commit -> write_manifest -> [warmup]
    -> switch -> [check] -> prune
    failure before switch: abort_stage;  at/after switch: rollback(from_release=new, mark_bad=True)

(The pipeline's steps, deploy/steps/, send the same ops in fewer calls: probe + state in one batch;
stage-begin, the lock and a small model as `write-file`s, verify-model and wheels-missing in
one; venv-ensure with `need_uv`, uv pushed only when a venv must be built; after the warmup,
write-manifest + stage-commit in one.)

Upload the lock before the wheels: prune's wheel GC keeps what some release's lock lists.

Every op is built by its one builder in `orchestrator.hosts.ops` (an `OpCall`: name, typed
arguments, reply parser); `run(call)` runs one, `batch(calls)` several; the methods below are
thin (build + run + parse) and stay for their callers. The replies' dataclasses, `OpKind` and
`HostOpFailed` live in `orchestrator.hosts.opresults` (re-exported here).

Each call is one SSH command and one interpreter start on the host, which on a busy host is
most of what a small op costs; `batch` runs several ops back to back in one process (stopping
at the first failure, which raises exactly what that op alone would have raised), so a
pipeline step that needs three small ops pays for one. Within `agent.serving` (a deployment
on one host) a call is one request line to the host agent instead (orchestrator/hosts/agent.py).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.core.release import Manifest
from orchestrator.errors import BadHostOutput
from orchestrator.hosts import agent, layout, ops, shipfile
from orchestrator.hosts.modelfiles import model_files
from orchestrator.hosts.opresults import (
    AppState,
    HostOpFailed,
    OpKind,
    PruneResult,
    ReleaseInfo,
    StagedRelease,
    SwitchResult,
    VenvResult,
    app_state,
    parse_batch_reply,
    parse_reply,
    staged_release,
)
from orchestrator.hosts.ops import OpCall
from orchestrator.hosts.shipping import RemoteTools, ensure_tools
from orchestrator.hosts.transport import CommandResult, FileStreamer, Transport

# Re-exported: the step modules and tests import these names from here.
__all__ = ["DEFAULT_TIMEOUT_S", "VENV_TIMEOUT_S",
           "AppState", "HostOpFailed", "HostOps", "OpKind", "PruneResult", "ReleaseInfo",
           "StagedRelease", "SwitchResult", "VenvResult", "app_state",
           "parse_batch_reply", "parse_reply", "staged_release"]

T = TypeVar("T")
#: Progress of a transfer of several files: given the byte at which a file starts, the put
#: callback `(sent, size)` for that file (orchestrator/deploy/progress.py's `Meter.file`).
FileProgress = Callable[[int], Callable[[int, int], None]]

DEFAULT_TIMEOUT_S = 120.0
VENV_TIMEOUT_S = 1800.0
#: How `push_wheels` moves a wheel: `stream` (one exec channel for all, hashed on arrival by
#: `wheels-receive`) or `sftp` (a put each, then `wheels-verify`). A transport that cannot
#: stream (a test's fake) gets the puts.
SHIP_METHODS = ("stream", "sftp")


class HostOps:
    """The release operations of one host, under one deploy_root, over one transport."""

    def __init__(self, transport: Transport, deploy_root: str, *, python: str = "python3",
                 fence: Mapping[str, Any] | None = None) -> None:
        if not posixpath.isabs(deploy_root):
            raise ValueError(f"deploy_root must be absolute: {deploy_root!r}")
        self.transport, self.root, self.python = transport, posixpath.normpath(deploy_root), python
        # Every call's arguments: root, and {deployment, token}, the daemon's lease, checked
        # by the host at every op that changes the app (remote/hostops_host.py `check_fence`).
        self.common: dict[str, Any] = {"root": self.root, **({"fence": dict(fence)} if fence
                                                             else {})}
        self._tools: RemoteTools | None = None

    @property
    def host(self) -> str:
        return self.transport.host

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

    def run(self, call: OpCall[T], *, timeout: float = DEFAULT_TIMEOUT_S,
            max_output: int | None = None) -> T:
        """Run one op (built by `orchestrator.hosts.ops`) and parse its reply; the arguments
        travel on stdin (no argv length limit, nothing in `ps`)."""
        op = str(call.op)
        args = {**self.common, **call.args}
        result = self._by_agent(op, args, timeout, max_output) or self.transport.run(
            self._argv(op), timeout=timeout, stdin=json.dumps(args).encode("utf-8"),
            check=False, max_output=max_output)
        return self.parsed(call, self._checked(
            lambda: parse_reply(self.host, op, result.exit_code, result.stdout, result.stderr)))

    def _by_agent(self, op: str, args: Mapping[str, Any], timeout: float,
                  max_output: int | None) -> CommandResult | None:
        """The op's result through the host's agent, or None: then the caller execs it."""
        serving = agent.current(self.transport, self.root, self.python)
        if serving is None:
            return None
        return serving.call({"op": op, "args": args}, timeout=timeout, max_output=max_output)

    def _checked(self, parse: Callable[[], T]) -> T:
        """`parse()`; a garbage reply also ends the host's agent (not asked again)."""
        try:
            return parse()
        except BadHostOutput:
            serving = agent.current(self.transport, self.root, self.python)
            if serving is not None:
                serving.discard(kill=True)
            raise

    def batch(self, calls: Sequence[OpCall[Any]], *,
              timeout: float = DEFAULT_TIMEOUT_S,
              max_output: int | None = None) -> list[dict[str, Any]]:
        """Run calls in order in one host process; each op's raw reply (`call.parse(reply)`
        types it), or the HostOpFailed of the first that failed (the later ones did not run).
        Every reply is checked against its call's parser here, so a reply missing what its op
        promises is a BadHostOutput now, never a KeyError in the step that reads it."""
        args = {**self.common, "ops": [c.wire() for c in calls]}
        op = str(ops.Op.BATCH)
        result = self._by_agent(op, args, timeout, max_output) or self.transport.run(
            self._argv(op), timeout=timeout, stdin=json.dumps(args).encode("utf-8"),
            check=False, max_output=max_output)
        replies = self._checked(lambda: parse_batch_reply(
            self.host, [str(c.op) for c in calls], result.exit_code, result.stdout,
            result.stderr))
        if len(replies) != len(calls):
            raise BadHostOutput(self.host, f"host sent {len(replies)} replies to a batch of "
                                           f"{len(calls)} ops")
        for call, reply in zip(calls, replies, strict=True):
            self.parsed(call, reply)
        return replies

    def parsed(self, call: OpCall[T], reply: Mapping[str, Any]) -> T:
        """The reply as its call's value. A host is untrusted input: a reply without the fields
        its op promises, or of the wrong types, is the host's error, attributed to it."""
        try:
            return call.parse(reply)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"missing field {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
            raise BadHostOutput(self.host, f"host sent an invalid reply to {call.op}: "
                                           f"{what}") from None

    # -- stage ---------------------------------------------------------------------------------

    def stage_begin(self, app: str, release_id: str, *, deployment: str | None = None,
                    force: bool = False, lock_sha256: str | None = None,
                    timeout: float = DEFAULT_TIMEOUT_S) -> StagedRelease:
        """Create or resume releases/<id>.staging; HostOpFailed(BUSY) while another release of
        the app is being staged (one deployment per app and host at a time). With
        `lock_sha256`, the host copies that lock file from a release that has it
        (`lock_present`): then it need not be uploaded."""
        return self.run(ops.stage_begin(app, release_id, deployment=deployment, force=force,
                                        lock_sha256=lock_sha256), timeout=timeout)

    def verify_model(self, app: str, release_id: str, sha256: str, *, path: str = layout.MODEL,
                     timeout: float = DEFAULT_TIMEOUT_S) -> str:
        """Recompute the model hash on the host (tree hash of a directory, sha256 of a file;
        `path` relative to the release dir). HostOpFailed(HASH_MISMATCH) names both."""
        return self.run(ops.verify_model(app, release_id, sha256, path=path), timeout=timeout)

    def stage_commit(self, app: str, release_id: str, *,
                     timeout: float = DEFAULT_TIMEOUT_S) -> str:
        return self.run(ops.stage_commit(app, release_id), timeout=timeout)

    def write_manifest(self, app: str, release_id: str, manifest: Manifest | Mapping[str, Any],
                       *, timeout: float = DEFAULT_TIMEOUT_S) -> str:
        return self.run(ops.write_manifest(app, release_id, manifest), timeout=timeout)

    def upload_model(self, local: Path, staged: StagedRelease, *,
                     timeout: float = DEFAULT_TIMEOUT_S, follow: bool = False,
                     progress: FileProgress | None = None) -> str:
        """Put a model file (as model/<name>) or directory (as model/...) into the staged
        release; returns the `path` to give verify_model. A directory ships exactly the files
        its tree hash covers (`core.hashing.tree_files`): a symlink or special file inside is
        a SpecError naming it, raised before anything is sent; with `follow`
        (`model.follow_symlinks`) a symlink is shipped as a plain copy of its target.
        `progress(base)`: the put callback of the file that starts at byte `base` of the model
        (tree_files' order)."""
        files = model_files(local, follow=follow)
        if isinstance(self.transport, FileStreamer):  # one channel for every file
            sizes = {rel: path.stat().st_size for rel, path in files.items()}
            call = ops.model_receive(staged.app, staged.release_id, sizes)
            self.stream(call, [(files[rel], size) for rel, size in sizes.items()], timeout,
                         progress)
        else:
            base = 0
            for rel, path in files.items():  # put makes parent dirs
                self.transport.put(path, layout.in_release(staged.path, rel), 0o644,
                                   None if progress is None else progress(base))
                base += path.stat().st_size
        return layout.model_rel(local.name, is_dir=local.is_dir())

    def abort_stage(self, app: str, release_id: str, *,
                    timeout: float = DEFAULT_TIMEOUT_S) -> tuple[str, ...]:
        return self.run(ops.abort_stage(app, release_id), timeout=timeout)

    # -- wheels and venvs ----------------------------------------------------------------------

    def wheels_missing(self, shas: Sequence[str], *,
                       timeout: float = DEFAULT_TIMEOUT_S) -> tuple[str, ...]:
        return self.run(ops.wheels_missing(shas), timeout=timeout)

    def wheels_verify(self, shas: Sequence[str], *,
                      timeout: float = DEFAULT_TIMEOUT_S) -> tuple[str, ...]:
        return self.run(ops.wheels_verify(shas), timeout=timeout)

    def push_wheels(self, wheels: Mapping[str, Path], *, missing: Sequence[str] | None = None,
                    method: str = "stream",
                    timeout: float = VENV_TIMEOUT_S,
                    progress: Callable[[int], FileProgress] | None = None) -> tuple[str, ...]:
        """Upload the wheels ({sha256: local file}) the host's cache lacks, each verified by
        sha256 on arrival; returns the shas uploaded. `missing`: what a `wheels-missing` in
        an earlier batch said the host lacks (else it is asked here). `progress(total)`, once
        the bytes to send are known: what gives each wheel's put callback (`upload_model`)."""
        if method not in SHIP_METHODS:
            raise ValueError(f"unknown wheel shipping method {method!r}")
        if missing is None:
            missing = self.wheels_missing(sorted(wheels), timeout=timeout)
        missing = tuple(missing)
        if not missing:
            return missing
        sizes = [wheels[sha].stat().st_size for sha in missing]
        callback = None if progress is None else progress(sum(sizes))
        if method == "stream" and isinstance(self.transport, FileStreamer):
            self.stream_wheels({sha: wheels[sha] for sha in missing}, timeout=timeout,
                               progress=callback)
            return missing
        base = 0
        for sha, size in zip(missing, sizes, strict=True):
            self.transport.put(wheels[sha], layout.wheel_upload(self.root, sha), 0o644,
                               None if callback is None else callback(base))
            base += size
        self.wheels_verify(missing, timeout=timeout)
        return missing

    def fetch_wheels(self, url: str, layout: str, wheels: Mapping[str, tuple[str, int]], *,
                     missing: Sequence[str] | None = None,
                     timeout: float = VENV_TIMEOUT_S) -> tuple[str, ...]:
        """The host downloads the wheels ({sha256: (filename, size)}) its cache lacks from the
        operator's mirror, each kept only if it hashes right (`wheels-fetch`); returns the
        shas it fetched. HostOpFailed MIRROR_UNREACHABLE names the URL and the status."""
        if missing is None:
            missing = self.wheels_missing(sorted(wheels), timeout=timeout)
        missing = tuple(missing)
        if missing:
            self.run(ops.wheels_fetch(url, layout, {sha: wheels[sha] for sha in missing},
                                      timeout_s=min(60.0, timeout)), timeout=timeout)
        return missing

    def stream_wheels(self, wheels: Mapping[str, Path], *, timeout: float = VENV_TIMEOUT_S,
                      progress: FileProgress | None = None) -> tuple[str, ...]:
        """Send these wheels ({sha256: local file}) on one channel to `wheels-receive`, which
        hashes each as it writes it and renames only a match into the cache (else
        HostOpFailed WHEEL_HASH_MISMATCH naming both hashes, nothing of that file kept)."""
        files = [(path, path.stat().st_size) for path in wheels.values()]
        call = ops.wheels_receive({sha: size for sha, (_, size) in zip(wheels, files,
                                                                      strict=True)})
        return self.stream(call, files, timeout, progress)

    def stream(self, call: OpCall[T], files: Sequence[tuple[Path, int]], timeout: float,
               progress: FileProgress | None = None) -> T:
        """Run a streaming op: its arguments as one JSON line, then the files' bytes
        (`progress(0)` is told the bytes sent so far, as a put callback would be)."""
        assert isinstance(self.transport, FileStreamer)
        header = json.dumps({"root": self.root, **call.args}).encode("utf-8") + b"\n"
        on_sent = None
        if progress is not None:
            total, callback = sum(size for _, size in files), progress(0)
            on_sent = lambda sent: callback(sent, total)  # noqa: E731 - one line, named
        result = self.transport.run_with_files(self._argv(str(call.op)), header, files,
                                               timeout=timeout, check=False, on_sent=on_sent)
        return self.parsed(call, parse_reply(self.host, str(call.op), result.exit_code,
                                             result.stdout, result.stderr))

    def push_uv(self, uv_binary: Path, *, timeout: float = DEFAULT_TIMEOUT_S) -> str:
        """Ship the controller's own uv binary once per host, content-addressed, by stream
        (orchestrator.hosts.shipfile); its path."""
        remote = self.uv_path(uv_binary)
        if not self.run(ops.file_exists(remote), timeout=timeout):
            shipfile.ship_uv(self, uv_binary, timeout=timeout)
        return remote

    def uv_path(self, uv_binary: Path) -> str:
        """Where this uv binary lives on the host (content-addressed; maybe not there yet)."""
        return shipfile.uv_path(self.root, uv_binary)

    def venv_ensure(self, env_hash: str, lock_path: str, wheels: Mapping[str, str], *,
                    installer: str = "uv", uv: str | None = None, python: str | None = None,
                    app: str | None = None, release_id: str | None = None,
                    compile_bytecode: bool = False, wait_s: float = VENV_TIMEOUT_S,
                    need_uv: bool = False, want_bytecode: bool = False,
                    bytecode: tuple[str, int] | None = None,
                    timeout: float = VENV_TIMEOUT_S) -> VenvResult:
        """Reuse or build venvs/<env_hash> (wheels: {sha256: real filename}) from the staged
        lock (a pylock: `name==version --hash` lines of exactly these wheels, each listed by it,
        else INSTALL_FAILED naming it); with app and release_id, link the release's `venv` under
        the venv's lock. A concurrent builder of the same env waits (wait_s), then reuses it. A
        build refuses with UV_MISSING (`need_uv`) or BYTECODE_MISSING (`want_bytecode`: the .pyc
        archive `bytecode`, (sha256, size)) until they are uploaded (a reuse needs neither)."""
        call = ops.venv_ensure(
            env_hash, lock_path, wheels, installer=installer, uv=uv,
            python=python or self.python, app=app, release_id=release_id,
            compile_bytecode=compile_bytecode, wait_s=min(wait_s, timeout),
            timeout_s=max(timeout - 30, 1),  # each installer run; the call has `timeout`
            need_uv=need_uv, want_bytecode=want_bytecode, bytecode=bytecode)
        return self.run(call, timeout=timeout)

    # -- switch, rollback, views ---------------------------------------------------------------

    def switch(self, app: str, release_id: str, generation: int, *,
               timeout: float = DEFAULT_TIMEOUT_S) -> SwitchResult:
        """Atomically point `current` at a committed release. HostOpFailed(STALE_GENERATION)
        when the host has seen a newer generation; the same generation again is a no-op."""
        return self.run(ops.switch(app, release_id, generation), timeout=timeout)

    def rollback(self, app: str, *, to: str = "previous", from_release: str | None = None,
                 generation: int | None = None, mark_bad: bool = False, forget: bool = False,
                 timeout: float = DEFAULT_TIMEOUT_S) -> SwitchResult:
        """Back to `to` (a release id or the previous good one), checked before anything
        changes (HostOpFailed NO_ROLLBACK_TARGET, BAD_RELEASE, NOT_FOUND). With `from_release`
        it is idempotent (nothing moves once `current` is not that release); `mark_bad` marks
        it bad, `forget` only drops it from the rollback targets. Without a generation the
        host's is bumped (a manual rollback outranks any deployment in flight)."""
        return self.run(ops.rollback(app, to=to, from_release=from_release,
                                     generation=generation, mark_bad=mark_bad, forget=forget),
                        timeout=timeout)

    def mark_bad(self, app: str, release_id: str, *,
                 timeout: float = DEFAULT_TIMEOUT_S) -> tuple[str, ...]:
        return self.run(ops.mark_bad(app, release_id), timeout=timeout)

    def unmark_bad(self, app: str, release_id: str, *,
                   timeout: float = DEFAULT_TIMEOUT_S) -> bool:
        """Clear the release's bad mark; whether it was marked."""
        return self.run(ops.unmark_bad(app, release_id), timeout=timeout)

    def releases(self, app: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> list[ReleaseInfo]:
        return self.run(ops.releases(app), timeout=timeout)

    def state(self, app: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> AppState:
        """The host's real state (readlink `current` first): what crash recovery starts from."""
        return self.run(ops.state(app), timeout=timeout)

    def prune(self, app: str, keep: int, *, grace_s: float = 600.0,
              timeout: float = DEFAULT_TIMEOUT_S) -> PruneResult:
        return self.run(ops.prune(app, keep, grace_s=grace_s), timeout=timeout)

