"""The `venv` environment kind: a content-addressed venv built from the spec's hashed lock.

Keyed by (Python major.minor, platform, lock sha256) (`core.release.env_hash`), it lives at
`<deploy_root>/.orchestrator/venvs/<env_hash>/`, shared by every release and app with the same
key, and each release links it as `<release>/venv`. It is reused when it is complete, else built
at that final path (a venv is not relocatable) with `--require-hashes`, offline, from the wheels
`stage` pushed, by uv (shipped to the host only when a venv must really be built, by stream:
hosts/shipfile.py) or pip, and
marked complete last; the host op `venv-ensure` does all of that under the venv's lock. A host
that builds also gets the lock's .pyc archive, compiled once on the controller
(deploy/bytecode.py), unpacked before the marker: its first import reads bytecode.
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.core import release as rel
from orchestrator.core.facts import HostFacts
from orchestrator.core.preflight import LockLike, locked_versions
from orchestrator.core.spec import Spec
from orchestrator.deploy import bytecode
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.environments.base import BuiltEnvironment
from orchestrator.deploy.wheelcache import Wheel
from orchestrator.hosts import layout, shipfile
from orchestrator.hosts.hostops import HostOpFailed, OpKind, VenvResult

if TYPE_CHECKING:  # the context imports base: import it for annotations only
    from orchestrator.deploy.steps.context import HostContext, Target


class VenvKind:
    """The venv of a lock file: today's only environment kind."""

    name = "venv"
    ships_wheels = True  # built offline from the wheels `stage` pushed into the host's cache
    needs_engines = False  # a venv needs no container engine

    def selects(self, spec: Spec) -> bool:
        # Every spec has `environment.requirements` today: this kind is the registry's last,
        # the default a more specific kind (an image) comes before.
        return bool(spec.environment.requirements)

    def key(self, spec: Spec, facts: HostFacts, lock_sha256: str) -> str:
        return rel.env_hash(facts.python_version, platform_of(facts), lock_sha256)

    def prepare(self, ctx: HostContext, wheels: Mapping[str, Wheel]) -> None:
        """The lock's .pyc archive starts building now, in a child process, while the wheels
        travel (deploy/bytecode.py `prefetch`): install then finds it built, or nearly."""
        facts = ctx.known_facts()
        python, _ = _bytecode_interpreter(ctx, facts)
        if python is not None and ctx.inputs.bytecode_cache is not None and wheels:
            with contextlib.suppress(OSError):  # no prefetch: install builds it, as before
                bytecode.prefetch(wheels, facts.python_minor, python, ctx.inputs.bytecode_cache)

    def ensure(self, ctx: HostContext, deadline: Deadline) -> BuiltEnvironment:
        facts, staged, inputs = ctx.known_facts(), ctx.known_staged(), ctx.inputs
        wheels = inputs.wheels_for(facts, deadline.remaining)
        uv = ctx.ops.uv_path(local_uv()) if inputs.installer == "uv" else None
        env = self.key(ctx.spec, facts, inputs.lock.sha256)
        python, note = _bytecode_interpreter(ctx, facts)
        ref: tuple[str, int] | None = None
        shipped: dict[str, Any] = {"shipped": False, "reason": note}

        def venv_ensure() -> VenvResult:
            return ctx.ops.venv_ensure(
                env, staged.lock_path, {sha: w.filename for sha, w in wheels.items()},
                installer=inputs.installer, uv=uv, python=facts.python_executable,
                app=ctx.app_name, release_id=ctx.release_id,
                compile_bytecode=inputs.compile_bytecode, need_uv=uv is not None,
                want_bytecode=python is not None, bytecode=ref, timeout=deadline.timeout())

        out: VenvResult | None = None
        for attempt in range(3):  # uv and the archive, once more if the archive went
            try:
                out = venv_ensure()
                break
            except HostOpFailed as exc:
                if attempt == 2 or exc.kind not in (OpKind.UV_MISSING, OpKind.BYTECODE_MISSING):
                    raise
                # Only a venv that must be built needs these: ship them (uv once per host).
                if exc.kind is OpKind.UV_MISSING:
                    assert uv is not None  # need_uv is only sent with a uv path
                    shipfile.ship_uv(ctx.ops, local_uv(), timeout=deadline.timeout(),
                                     progress=ctx.progress.upload("install", "uv", local_uv()))
                if exc.details.get("bytecode_missing") and python is not None:
                    shipped = _ship_bytecode(ctx, wheels, facts.python_minor, python,
                                             deadline)
                    ref = shipped.pop("ref", None)
                    python = python if ref is not None else None
        assert out is not None  # the loop breaks with it or raises
        if out.bytecode is not None:
            shipped.update(out.bytecode)
        elif out.reused:
            shipped = {"shipped": False, "reason": "venv reused"}
        return BuiltEnvironment(
            kind=self.name, key=out.env_hash, path=out.path,
            interpreter=layout.venv_python(out.path),
            details={"env_hash": env, "reused": out.reused, "installer": out.installer,
                     "fallback_reason": out.fallback_reason,
                     "install_durations": dict(out.durations), "waited_s": out.waited_s,
                     "bytecode": shipped},
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


def _bytecode_interpreter(ctx: HostContext, facts: HostFacts) -> tuple[str | None, str | None]:
    """The controller's interpreter for the host's Python, or why no .pyc are shipped."""
    inputs = ctx.inputs
    if inputs.bytecode_cache is None:
        return None, "off (--no-ship-bytecode)"
    if inputs.compile_bytecode:
        return None, "the installer compiles (--compile-bytecode)"
    python = bytecode.interpreter_for(facts.python_minor)
    if python is None:
        return None, (f"no python{facts.python_minor} on the controller: the first import on "
                      "the host compiles")
    return python, None


def _ship_bytecode(ctx: HostContext, wheels: Mapping[str, Wheel], python_minor: str,
                   python: str, deadline: Deadline) -> dict[str, Any]:
    """Build (once per lock and Python, cached) and send the .pyc archive (by stream: the host
    keeps it only if it hashes right); what happened, with "ref" (sha256, size) when sent."""
    assert ctx.inputs.bytecode_cache is not None  # _bytecode_interpreter said it is on
    try:
        bundle = bytecode.ensure_bundle(wheels, python_minor, python, ctx.inputs.bytecode_cache)
    except (OSError, RuntimeError, zipfile.BadZipFile, subprocess.TimeoutExpired) as exc:
        return {"shipped": False, "reason": f"building the .pyc archive failed: {exc}"}
    if bundle is None:
        return {"shipped": False, "reason": "the lock holds no Python source"}
    shipfile.ship_bytecode(ctx.ops, bundle.path, bundle.sha256, timeout=deadline.timeout(),
                           progress=ctx.progress.upload("install", "bytecode", bundle.path))
    return {"ref": (bundle.sha256, bundle.size), "archive_bytes": bundle.size,
            "archive_files": bundle.files, "build_s": bundle.build_s, "cached": bundle.cached}
