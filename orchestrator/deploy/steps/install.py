"""The `install` step: the content-addressed venv keyed by (python version, platform, lock hash),
reused when complete, else built at its final path with `--require-hashes`, offline, from the
pushed wheels. uv is shipped to the host only when a venv must really be built."""

from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path
from typing import Any

from orchestrator.core import release as rel
from orchestrator.core.facts import HostFacts
from orchestrator.core.preflight import LockLike, locked_versions
from orchestrator.core.spec import Spec
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.steps.context import HostContext, Target
from orchestrator.hosts.hostops import HostOpFailed, OpKind, VenvResult

NAME = "install"


def run(ctx: HostContext, deadline: Deadline) -> dict[str, Any]:
    facts, staged, inputs = ctx.known_facts(), ctx.known_staged(), ctx.inputs
    wheels = inputs.wheels_for(facts)
    uv = ctx.ops.uv_path(local_uv()) if inputs.installer == "uv" else None
    env = rel.env_hash(facts.python_version, platform_of(facts), inputs.lock.sha256)

    def ensure() -> VenvResult:
        return ctx.ops.venv_ensure(
            env, staged.lock_path, {sha: w.filename for sha, w in wheels.items()},
            installer=inputs.installer, uv=uv, python=facts.python_executable,
            app=ctx.app_name, release_id=ctx.release_id,
            compile_bytecode=inputs.compile_bytecode, need_uv=uv is not None,
            timeout=deadline.timeout())

    try:
        out = ensure()
    except HostOpFailed as exc:
        if exc.kind is not OpKind.UV_MISSING:
            raise
        # Only a venv that must be built needs uv: ship it (once per host) and build.
        assert uv is not None  # need_uv is only sent with a uv path
        ctx.transport.put(local_uv(), uv, 0o755)
        out = ensure()
    ctx.venv = asdict(out)
    return {"env_hash": env, "reused": out.reused, "installer": out.installer,
            "fallback_reason": out.fallback_reason, "install_durations": dict(out.durations),
            "waited_s": out.waited_s}


def describe(spec: Spec, facts: HostFacts, target: Target) -> str:
    n = len(locked_versions(target.lock, facts))
    return (f"build or reuse the venv {target.host.deploy_root}/.orchestrator/venvs/"
            f"{_env_hash(target.lock, facts)} "
            f"(python {spec.environment.python}, {n} locked packages, --require-hashes, offline)")


def _env_hash(lock: LockLike, facts: HostFacts) -> str:
    """The venv's content address, as `run` computes it (when the lock has a hash)."""
    sha256 = getattr(lock, "sha256", None)
    if not isinstance(sha256, str):
        return "<env_hash>"
    try:
        return rel.env_hash(facts.python_version, platform_of(facts), sha256)
    except ValueError:  # an odd python version string: the install step would say so
        return "<env_hash>"


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
