"""`HostDeploy`: the playbook's steps, and the recovery actions, for one host.

It implements `orchestrator.deploy.pipeline.HostSteps`: the engine decides what runs; this class
only
does it, through one transport and the host-side scripts (hostops, probe, warmup). What it learns
(facts, the app's state on the host, the venv, the warmup result) it keeps for the later steps
and for the release's manifest.json.

Idempotent by construction: the release id is fixed for the deployment (a resumed pipeline passes
the same one), `stage-begin` resumes its own staging dir, a model already verified is not sent
twice, wheels already in the host's cache are not sent, `venv-ensure` reuses a complete venv and
removes an incomplete one, `switch` to the release already current changes nothing, `rollback`
names the release it undoes, so a second call after a crash moves nothing.

Few round trips: on a busy host each remote command is mostly sshd's session and an interpreter
start, so each step sends what it can in one hostops `batch` (probe + state; verify-model +
wheels-missing; write-manifest + stage-commit), the tools bundle is checked once per host and
deployment, the lock file is copied on the host from a release that has it (same sha256), and
uv is uploaded only when a venv must really be built. Every host-side check stays.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.core import release as rel
from orchestrator.core.compat import CompatData
from orchestrator.core.facts import MAX_FACTS_BYTES, HostFacts, parse_facts
from orchestrator.core.inventory import Host
from orchestrator.core.preflight import Status, preflight
from orchestrator.deploy.pipeline import Deadline
from orchestrator.deploy.steps import StepFailed
from orchestrator.deploy.steps.verify import verify_release
from orchestrator.deploy.steps.wheels import WheelResolver
from orchestrator.errors import BadHostOutput, HostError, HostUnreachable, OutputTooLarge
from orchestrator.hosts import serving as service
from orchestrator.hosts.hostops import (
    HostOpFailed,
    HostOps,
    OpKind,
    SmallModel,
    StagedRelease,
    VenvResult,
    app_state,
    staged_release,
)
from orchestrator.hosts.probe import PROBE_TIMEOUT_S
from orchestrator.hosts.shipping import RemoteTools
from orchestrator.hosts.transport import Transport


@dataclass(frozen=True)
class DeployInputs:
    """Everything one deployment needs, resolved once on the controller for all its hosts."""

    deployment: str
    spec: Any  # orchestrator.core.spec.Spec
    lock: Any  # orchestrator.core.lockfile.Lock (packages, sha256)
    release_id: str
    wheels_for: WheelResolver
    compat: CompatData
    installer: str = "uv"  # or "pip"
    # Off by default: compiling every module of the lock costs more than the first import
    # compiling only what the model uses, and that import happens in `verify`, before the
    # switch, writing the .pyc files the service then finds (measured in bench/deploy.py).
    compile_bytecode: bool = False


def new_inputs_release_id(spec: Any, lock_sha256: str, now: datetime | None = None) -> str:
    """The deployment's release id: UTC time + hash of what it deploys."""
    content = rel.content_hash(spec.digest, spec.model.sha256, lock_sha256)
    return rel.new_release_id(now or datetime.now(UTC), content)


@dataclass
class HostState:
    """What the steps learned about the host, in the order they learned it."""

    tools: RemoteTools | None = None
    facts: HostFacts | None = None
    app: dict[str, Any] = field(default_factory=dict)  # the app's state before we changed it
    staged: StagedRelease | None = None
    release_path: str | None = None
    venv: dict[str, Any] = field(default_factory=dict)
    warmup: dict[str, Any] | None = None
    switched: bool = False


#: Room for the `state` reply beside the facts in the probe's batch.
_STATE_BYTES = 1 << 20
_FREE_BYTES = "import os, sys; s = os.statvfs(sys.argv[1]); print(s.f_bavail * s.f_frsize)"
#: Below this, an upload failure is reported as a full disk.
_LOW_DISK_BYTES = 64 << 20


class HostDeploy:
    """The HostSteps of one host for one deployment."""

    def __init__(self, transport: Transport, host: Host, inputs: DeployInputs) -> None:
        self.transport, self.inv_host, self.inputs = transport, host, inputs
        self.host = host.name
        self.root = host.deploy_root
        self.app = str(inputs.spec.name)
        self.rid = inputs.release_id
        self.ops = HostOps(transport, self.root)
        self.state = HostState()
        # The service of the release `current` points at: the spec's, until a rollback puts back
        # a release deployed with its own (`service_of`).
        self.service: Any = inputs.spec.service

    # -- the engine's interface -------------------------------------------------------------

    def run(self, name: str, deadline: Deadline) -> Mapping[str, Any]:
        step: Callable[[Deadline], dict[str, Any]] = getattr(self, f"_{name}")
        return step(deadline)

    def has_previous(self) -> bool:
        app = self.state.app
        return bool(app.get("current") or app.get("previous_good"))

    def abort_stage(self, deadline: Deadline) -> Mapping[str, Any]:
        if self.state.staged is None:
            return {"removed": [], "note": "nothing was staged"}
        removed = self.ops.abort_stage(self.app, self.rid, timeout=deadline.timeout())
        return {"removed": list(removed)}

    def mark_bad(self, deadline: Deadline) -> Mapping[str, Any]:
        return {"bad": list(self.ops.mark_bad(self.app, self.rid, timeout=deadline.timeout()))}

    def rollback(self, deadline: Deadline) -> Mapping[str, Any]:
        out = self.ops.rollback(self.app, from_release=self.rid, mark_bad=True,
                                timeout=deadline.timeout())
        self.service = service_of(self.host, out.service, self.inputs.spec.service)
        return {"current": out.current, "changed": out.changed, **self.restart_service(deadline)}

    def recheck(self, deadline: Deadline) -> Mapping[str, Any]:
        return self._health(deadline)

    # -- the steps -------------------------------------------------------------------------

    def _probe(self, deadline: Deadline) -> dict[str, Any]:
        self.state.tools = self.ops.tools()  # ships the tools when missing; once per deployment
        try:
            probed, app = self.ops.batch([("probe", {}), ("state", {"app": self.app})],
                                         timeout=deadline.timeout(PROBE_TIMEOUT_S),
                                         max_output=MAX_FACTS_BYTES + _STATE_BYTES)
        except OutputTooLarge as exc:
            raise BadHostOutput(self.host, f"probe printed more than {MAX_FACTS_BYTES} bytes; "
                                           "refusing to parse it") from exc
        # The facts as probe.py alone prints them: one parser, one size limit.
        facts = parse_facts(self.host, json.dumps(probed.get("facts"), sort_keys=True))
        self.state.facts = facts
        self.state.app = asdict(app_state(app))
        return {"python": facts.python_version, "driver": facts.driver_version,
                "gpus": len(facts.gpus), "current": self.state.app["current"],
                "generation": self.state.app["generation"]}

    def _preflight(self, deadline: Deadline) -> dict[str, Any]:
        verdict = preflight(self.inputs.spec, self.inputs.lock, self._facts(), self.inputs.compat)
        if not verdict.ok:
            raise StepFailed(self.host, "preflight failed: " + "; ".join(
                c.message for c in verdict.checks if c.status is Status.FAIL))
        return {"verdict": str(verdict.status),
                "warnings": [c.message for c in verdict.checks if c.status is Status.WARN],
                "checks": verdict.to_dict()["checks"]}

    def _stage(self, deadline: Deadline) -> dict[str, Any]:
        spec = self.inputs.spec
        # Resolve the wheels first: a wheelhouse missing one fails here, before the host is
        # touched at all.
        wheels = self.inputs.wheels_for(self._facts())
        cleaned = self._clean_stale_staging(deadline)
        small = HostOps.small_model(spec.paths.model)
        missing: tuple[str, ...] | None
        try:
            if small is not None:
                details, missing = self._stage_in_one_call(small, sorted(wheels), deadline)
            else:
                details, missing = self._stage_by_sftp(sorted(wheels), deadline)
            pushed = self.ops.push_wheels({sha: w.path for sha, w in wheels.items()},
                                          missing=missing, timeout=deadline.timeout())
        except HostUnreachable:
            raise
        except HostError as exc:
            raise self._explain(exc, deadline) from exc
        details = {"release_id": self.rid, "resumed": details.pop("resumed"),
                   "cleaned_staging": cleaned, **details}
        details.update(wheels_total=len(wheels), wheels_pushed=len(pushed),
                       wheel_bytes=sum(wheels[s].path.stat().st_size for s in pushed))
        return details

    def _stage_in_one_call(self, small: SmallModel, shas: list[str],
                           deadline: Deadline) -> tuple[dict[str, Any], tuple[str, ...]]:
        """A small model: stage-begin, the lock and the model's files, the model's hash
        checked on the host, which wheels the host lacks: one batch, one host process."""
        spec, release = self.inputs.spec, {"app": self.app, "release_id": self.rid}
        # Set before the call: should it fail after stage-begin, abort-stage removes the dir.
        self.state.staged = StagedRelease(self.app, self.rid, "", "staging", False, None)
        lock = ("write-file", {**release, "path": "requirements.lock", "data": base64.b64encode(
            spec.paths.requirements.read_bytes()).decode("ascii")})
        try:
            replies = self.ops.batch([
                ("stage-begin", {**release, "deployment": self.inputs.deployment,
                                 "force": False}),
                lock, *small.write_calls(self.app, self.rid),  # the lock first, as by SFTP
                ("stage-verify-model", {**release, "sha256": spec.model.sha256,
                                        "path": small.verify_path}),
                ("wheels-missing", {"shas": shas})], timeout=deadline.timeout())
        except HostOpFailed as exc:
            if exc.op == "stage-begin":  # refused (busy): nothing of ours was staged
                self.state.staged = None
            raise
        staged = staged_release(self.app, self.rid, replies[0])
        self.state.staged, self.state.release_path = staged, staged.path
        details: dict[str, Any] = {"release_id": self.rid, "resumed": staged.resumed}
        if staged.state != "committed":
            details["model_hash"] = str(replies[-2]["hash_kind"])
        return details, tuple(replies[-1]["missing"])

    def _stage_by_sftp(self, shas: list[str],
                       deadline: Deadline) -> tuple[dict[str, Any], tuple[str, ...] | None]:
        spec = self.inputs.spec
        staged = self.ops.stage_begin(self.app, self.rid, deployment=self.inputs.deployment,
                                      lock_sha256=_sha256(spec.paths.requirements),
                                      timeout=deadline.timeout())
        self.state.staged, self.state.release_path = staged, staged.path
        details: dict[str, Any] = {"release_id": self.rid, "resumed": staged.resumed}
        if staged.state == "committed":
            return details, None
        # The lock first: prune's wheel GC keeps what some release's lock lists.
        if not staged.lock_present:  # else the host copied it from a release that had it
            self.transport.put(spec.paths.requirements, staged.lock_path, 0o644)
        rel_model = self.ops.upload_model(spec.paths.model, staged, timeout=deadline.timeout())
        verified, lacking = self.ops.batch([
            ("stage-verify-model", {"app": self.app, "release_id": self.rid,
                                    "sha256": spec.model.sha256, "path": rel_model}),
            ("wheels-missing", {"shas": shas})], timeout=deadline.timeout())
        details["model_hash"] = str(verified["hash_kind"])
        return details, tuple(lacking["missing"])

    def _explain(self, exc: HostError, deadline: Deadline) -> HostError:
        """SFTP says only "Failure" when the disk is full: add the host's free space."""
        try:
            out = self.transport.run(["python3", "-c", _FREE_BYTES, self.root],
                                     timeout=deadline.timeout(30), check=False)
            free = int(out.stdout.strip())
        except (HostError, ValueError):
            return exc
        if free >= _LOW_DISK_BYTES:
            return exc
        return StepFailed(self.host, f"{exc.reason} (only {free} bytes free under {self.root}:"
                                     " the disk is full)")

    def _clean_stale_staging(self, deadline: Deadline) -> list[str]:
        # We hold the app's deploy lock, so any other staging dir is a crashed deployment's.
        stale = [s for s in self.state.app.get("staging", ()) if s != self.rid]
        for rid in stale:
            self.ops.abort_stage(self.app, rid, timeout=deadline.timeout())
        return stale

    def _install(self, deadline: Deadline) -> dict[str, Any]:
        facts, staged = self._facts(), self._staged()
        wheels = self.inputs.wheels_for(facts)
        uv = self.ops.uv_path(local_uv()) if self.inputs.installer == "uv" else None
        env = rel.env_hash(facts.python_version, platform_of(facts), self.inputs.lock.sha256)

        def ensure() -> VenvResult:
            return self.ops.venv_ensure(
                env, staged.lock_path, {sha: w.filename for sha, w in wheels.items()},
                installer=self.inputs.installer, uv=uv, python=facts.python_executable,
                app=self.app, release_id=self.rid, compile_bytecode=self.inputs.compile_bytecode,
                need_uv=uv is not None, timeout=deadline.timeout())

        try:
            out = ensure()
        except HostOpFailed as exc:
            if exc.kind is not OpKind.UV_MISSING:
                raise
            # Only a venv that must be built needs uv: ship it (once per host) and build.
            assert uv is not None  # need_uv is only sent with a uv path
            self.transport.put(local_uv(), uv, 0o755)
            out = ensure()
        self.state.venv = asdict(out)
        return {"env_hash": env, "reused": out.reused, "installer": out.installer,
                "fallback_reason": out.fallback_reason, "install_durations": dict(out.durations),
                "waited_s": out.waited_s}

    def _verify(self, deadline: Deadline) -> dict[str, Any]:
        staged = self._staged()
        assert self.state.tools is not None
        result, details = verify_release(
            self.transport, self.state.tools, self.inputs.spec,
            python=f"{self.state.venv['path']}/bin/python", release_path=staged.path,
            baseline=self._baseline(), deadline=deadline)
        self.state.warmup = result
        release = {"app": self.app, "release_id": self.rid}
        _written, committed = self.ops.batch([
            ("write-manifest", {**release, "manifest": self._manifest().to_json()}),
            ("stage-commit", release)], timeout=deadline.timeout())
        self.state.release_path = str(committed["path"])
        return details

    def _switch(self, deadline: Deadline) -> dict[str, Any]:
        generation = int(self.state.app.get("generation") or 0) + 1
        out = self.ops.switch(self.app, self.rid, generation, timeout=deadline.timeout())
        self.state.switched = True
        return {"current": out.current, "before": out.before, "generation": generation,
                "rollback_target": out.previous_good}

    def _check(self, deadline: Deadline) -> dict[str, Any]:
        return {**self.restart_service(deadline), **self._health(deadline)}

    def _prune(self, deadline: Deadline) -> dict[str, Any]:
        out = self.ops.prune(self.app, int(self.inputs.spec.release.keep),
                             timeout=deadline.timeout())
        return {"removed_releases": list(out.removed_releases),
                "removed_venvs": list(out.removed_venvs), "removed_wheels": len(out.removed_wheels)}

    # -- helpers ---------------------------------------------------------------------------

    def _facts(self) -> HostFacts:
        if self.state.facts is None:
            raise StepFailed(self.host, "no host facts: the probe step did not run")
        return self.state.facts

    def _staged(self) -> StagedRelease:
        if self.state.staged is None:
            raise StepFailed(self.host, "nothing staged: the stage step did not run")
        return self.state.staged

    def restart_service(self, deadline: Deadline) -> dict[str, Any]:
        svc = self.service
        if svc is None or not svc.restart:
            return {}
        return service.restart(self.transport, svc.restart, service.app_dir(self.root, self.app),
                               deadline.timeout())

    def _health(self, deadline: Deadline) -> dict[str, Any]:
        svc = self.service
        if svc is None or not (svc.health_url or svc.health_command):
            return {"health": "none configured"}
        return service.health(self.transport, url=svc.health_url, command=svc.health_command,
                              cwd=service.app_dir(self.root, self.app),
                              budget_s=float(svc.health_timeout_s), timeout=deadline.timeout())

    def _baseline(self) -> dict[str, Any] | None:
        """The serving release's warmup result, for `verify.max_regression` (None if none)."""
        if not self.state.app.get("current") or self.inputs.spec.verify.max_regression is None:
            return None
        try:
            raw = self.transport.get(f"{service.app_dir(self.root, self.app)}/current/"
                                     "manifest.json")
            warm = json.loads(raw).get("warmup")
        except (HostError, ValueError, AttributeError):
            return None
        return warm if isinstance(warm, dict) else None

    def _manifest(self) -> rel.Manifest:
        facts, spec, venv = self._facts(), self.inputs.spec, self.state.venv
        return rel.Manifest(
            app=self.app, release_id=self.rid, deployment=self.inputs.deployment,
            created=datetime.now(UTC), spec_digest=spec.digest, model_sha256=spec.model.sha256,
            lock_sha256=self.inputs.lock.sha256, env_hash=str(venv.get("env_hash")),
            python_version=facts.python_version, platform=platform_of(facts),
            installer=venv.get("installer"), facts=facts.raw,
            pip_freeze=list(venv.get("freeze", ())), warmup=self.state.warmup,
            service=spec.service.model_dump(mode="json") if spec.service else {})


def service_of(host: str, recorded: Mapping[str, Any] | None, fallback: Any) -> Any:
    """The `service:` a release was deployed with, from its manifest: a release put back by a
    rollback is restarted and checked as it was when it last passed (a new spec's health URL
    may not exist in the old release). `fallback` when the manifest predates the record."""
    if recorded is None:
        return fallback
    if not recorded:
        return None
    from orchestrator.core.spec import Service

    try:
        return Service.model_validate(recorded)
    except ValueError as exc:  # pydantic's ValidationError
        raise BadHostOutput(host, f"manifest.json: service: {exc}") from exc


def _sha256(path: Path) -> str:
    """sha256 of a (small) lock file, read again each time: it may change between deployments."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.cache
def local_uv() -> Path:
    """The controller's own uv binary (the `uv` package is a dependency of ours)."""
    import uv

    return Path(uv.find_uv_bin())


def platform_of(facts: HostFacts) -> str:
    """The platform part of a venv's key: what makes binary wheels differ between hosts."""
    system = facts.os.get("system", "linux").lower()
    libc = facts.os.get("libc", "")
    return "-".join(p for p in (system, facts.machine, libc) if p)
