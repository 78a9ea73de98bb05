"""The `venv` environment kind: a content-addressed venv built from the spec's hashed lock.

Keyed by (Python major.minor, platform, lock sha256) (`core.release.env_hash`), it lives at
`<deploy_root>/.orchestrator/venvs/<env_hash>/`, shared by every release and app with the same
key, and each release links it as `<release>/venv`. It is reused when it is complete, else built
at that final path (a venv is not relocatable) with `--require-hashes`, offline, from the wheels
`stage` pushed, by uv (shipped to the host only when a venv must really be built) or pip, and
marked complete last; the host op `venv-ensure` does all of that under the venv's lock.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.core import release as rel
from orchestrator.core.facts import HostFacts
from orchestrator.core.preflight import LockLike, locked_versions
from orchestrator.core.spec import Spec
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.environments.base import BuiltEnvironment
from orchestrator.hosts import layout
from orchestrator.hosts.hostops import HostOpFailed, OpKind, VenvResult

if TYPE_CHECKING:  # the context imports base: import it for annotations only
    from orchestrator.deploy.steps.context import HostContext, Target


class VenvKind:
    """The venv of a lock file: today's only environment kind."""

    name = "venv"
    ships_wheels = True  # built offline from the wheels `stage` pushed into the host's cache

    def selects(self, spec: Spec) -> bool:
        # Every spec has `environment.requirements` today: this kind is the registry's last,
        # the default a more specific kind (an image) comes before.
        return bool(spec.environment.requirements)

    def key(self, spec: Spec, facts: HostFacts, lock_sha256: str) -> str:
        return rel.env_hash(facts.python_version, platform_of(facts), lock_sha256)

    def ensure(self, ctx: HostContext, deadline: Deadline) -> BuiltEnvironment:
        facts, staged, inputs = ctx.known_facts(), ctx.known_staged(), ctx.inputs
        wheels = inputs.wheels_for(facts, deadline.remaining)
        uv = ctx.ops.uv_path(local_uv()) if inputs.installer == "uv" else None
        env = self.key(ctx.spec, facts, inputs.lock.sha256)

        def venv_ensure() -> VenvResult:
            return ctx.ops.venv_ensure(
                env, staged.lock_path, {sha: w.filename for sha, w in wheels.items()},
                installer=inputs.installer, uv=uv, python=facts.python_executable,
                app=ctx.app_name, release_id=ctx.release_id,
                compile_bytecode=inputs.compile_bytecode, need_uv=uv is not None,
                timeout=deadline.timeout())

        try:
            out = venv_ensure()
        except HostOpFailed as exc:
            if exc.kind is not OpKind.UV_MISSING:
                raise
            # Only a venv that must be built needs uv: ship it (once per host) and build.
            assert uv is not None  # need_uv is only sent with a uv path
            ctx.transport.put(local_uv(), uv, 0o755,
                              ctx.progress.upload("install", "uv", local_uv()))
            out = venv_ensure()
        return BuiltEnvironment(
            kind=self.name, key=out.env_hash, path=out.path,
            interpreter=layout.venv_python(out.path),
            details={"env_hash": env, "reused": out.reused, "installer": out.installer,
                     "fallback_reason": out.fallback_reason,
                     "install_durations": dict(out.durations), "waited_s": out.waited_s},
            manifest={"env_hash": out.env_hash, "python_version": facts.python_version,
                      "platform": platform_of(facts), "installer": out.installer,
                      "pip_freeze": list(out.freeze)})

    def describe(self, spec: Spec, facts: HostFacts, target: Target) -> str:
        n = len(locked_versions(target.lock, facts))
        venv = layout.venv_dir(target.host.deploy_root, self._planned_key(spec, target.lock, facts))
        return (f"build or reuse the venv {venv} "
                f"(python {spec.environment.python}, {n} locked packages, --require-hashes, "
                "offline)")

    def interpreter(self, release_path: str) -> str:
        return layout.release_python(release_path)

    def audited(self, audit: Mapping[str, Any]) -> bool:
        return bool((audit.get("venv") or {}).get("path"))

    def _planned_key(self, spec: Spec, lock: LockLike, facts: HostFacts) -> str:
        """The venv's content address, as `ensure` computes it (when the lock has a hash)."""
        sha256 = getattr(lock, "sha256", None)
        if not isinstance(sha256, str):
            return "<env_hash>"
        try:
            return self.key(spec, facts, sha256)
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
