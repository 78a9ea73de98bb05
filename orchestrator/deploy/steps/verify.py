"""The `verify` step: the warmup runner in the new environment, then the gates
(orchestrator.core.gates), then the release's manifest.json (with the warmup result:
re-verification's baseline) and the stage commit, all before anything is switched.

The golden file travels into the staged release (`golden.npz`, so the release carries what it was
verified against); the runner is shipped with the other tools and run by the environment's
interpreter (`BuiltEnvironment.interpreter`: the steps know no environment kind) under the
smaller of the spec's `verify.timeout_s` and what is left of the step's budget. Any failing
gate fails the step, with every failing gate's message (measured figure and limit) in the error.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.core import fingerprint, gpuhealth, hostjson
from orchestrator.core import release as rel
from orchestrator.core.facts import HostFacts
from orchestrator.core.gates import WarmupRequest, gates, result_from_raw
from orchestrator.core.hashing import hash_file
from orchestrator.core.progress import ITERATIONS, Iterations
from orchestrator.core.spec import Spec
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.environments.registry import environment_for
from orchestrator.deploy.progress import Meter
from orchestrator.deploy.steps import StepFailed
from orchestrator.deploy.steps.context import HostContext, Target
from orchestrator.errors import HostError, InvalidInput
from orchestrator.hosts import agent, layout, ops
from orchestrator.hosts.modelfiles import INLINE_MAX_BYTES
from orchestrator.hosts.shipping import RemoteTools
from orchestrator.hosts.transport import Transport
from orchestrator.hosts.warmup import Before, capped, request_path, run_warmup

NAME = "verify"
#: Kept back from the step's budget for the upload before and the manifest after the runner.
RESERVE_S = 15.0


def run(ctx: HostContext, deadline: Deadline) -> dict[str, Any]:
    staged = ctx.known_staged()
    assert ctx.tools is not None  # set by the probe, which always runs first
    ctx.gpus = place(ctx.spec, ctx.known_facts())
    result, details = verify_release(
        ctx.transport, ctx.tools, ctx.spec, python=ctx.known_environment().interpreter,
        release_path=staged.path, baseline=_baseline(ctx), deadline=deadline,
        gpus=ctx.gpus, on_progress=_meters(ctx),
        write=SmallFiles(ctx, staged.path, deadline, staging=staged.state == "staging"))
    ctx.warmup = result
    if ctx.gpus:
        details["gpus"] = list(ctx.gpus)
    commit = ops.stage_commit(ctx.app_name, ctx.release_id)
    replies = ctx.ops.batch([ops.write_manifest(ctx.app_name, ctx.release_id, _manifest(ctx)),
                             commit], timeout=deadline.timeout())
    ctx.release_path = commit.parse(replies[1])
    return details


class SmallFiles:
    """Small files ({path in the staged release: bytes}) by `write-file` ops: one request to the
    host agent, where two SFTP puts were about a dozen round trips. `along` hands them to the
    runner's start instead (the host agent's `warmup-run` runs them first: one round trip
    less), when the release is being staged (a write then always writes) and the runner goes
    through the agent; else `write` sends them now, False when the release is no longer being
    staged (a resumed, committed one: `write-file` leaves it as it is)."""

    def __init__(self, ctx: HostContext, release_path: str, deadline: Deadline, *,
                 staging: bool) -> None:
        self.ctx, self.release_path, self.deadline = ctx, release_path, deadline
        self.staging = staging

    def calls(self, files: dict[str, bytes]) -> list[ops.OpCall[Any]]:
        return [ops.write_file(self.ctx.app_name, self.ctx.release_id,
                               posixpath.relpath(path, self.release_path), data)
                for path, data in files.items()]

    def along(self, files: dict[str, bytes]) -> Before | None:
        ctx = self.ctx
        if not self.staging or ctx.tools is None \
                or agent.running_from(ctx.transport, ctx.tools.root) is None:
            return None
        return ctx.ops, self.calls(files)

    def write(self, files: dict[str, bytes]) -> bool:
        replies = self.ctx.ops.batch(self.calls(files), timeout=self.deadline.timeout())
        return all(reply.get("written") is True for reply in replies)


def _meters(ctx: HostContext) -> Callable[[Iterations], None]:
    """The runner's progress lines as `progress` events: one meter per phase (warmup, then the
    timed iterations), throttled like every meter."""
    meters: dict[str, Meter] = {}

    def update(line: Iterations) -> None:
        meter = meters.get(line.phase)
        if meter is None or meter.total != line.total:
            meter = meters[line.phase] = ctx.progress.meter(NAME, ITERATIONS, line.phase,
                                                            line.total)
        meter.update(line.done)
    return update


def describe(spec: Spec, facts: HostFacts, target: Target) -> str:
    v = spec.verify
    kind = environment_for(spec).name
    words = (f"load the model in the new {kind}, compare golden outputs (rtol {v.rtol:g}, "
             f"atol {v.atol:g}), benchmark {v.warmup_iterations} + {v.iterations} iterations")
    if v.latency_ms is not None:
        limits = {"p50": v.latency_ms.p50, "p95": v.latency_ms.p95, "p99": v.latency_ms.p99}
        given = ", ".join(f"{k} <= {x:g} ms" for k, x in limits.items() if x is not None)
        words += f" ({given})" if given else ""
    if spec.gpu.required:
        placed = gpuhealth.place(facts, spec.gpu.count, spec.gpu.min_memory_gib or 0.0,
                                 spec.gpu.health, spec.gpu.mig_profile)
        words += "; the model must run on the GPU"
        if placed.ok:
            words += f", with CUDA_VISIBLE_DEVICES={placed.visible_devices}"
    return words


def place(spec: Spec, facts: HostFacts) -> tuple[str, ...]:
    """The UUIDs of the GPUs the model gets (`gpu.count` healthy ones with enough free memory,
    or MIG instances of `gpu.mig_profile` by MIG UUID; orchestrator/core/gpuhealth.py); () for
    a CPU deployment. The preflight already failed a
    host without enough of them; this is the same pure function on the same facts."""
    if not spec.gpu.required:
        return ()
    placed = gpuhealth.place(facts, spec.gpu.count, spec.gpu.min_memory_gib or 0.0,
                             spec.gpu.health, spec.gpu.mig_profile)
    if not placed.ok:
        raise StepFailed(facts.host, f"GPU placement failed: {placed.describe()}")
    return placed.uuids


def _baseline(ctx: HostContext) -> dict[str, Any] | None:
    """The serving release's warmup result, for `verify.max_regression` (None if none)."""
    if not ctx.app.get("current") or ctx.spec.verify.max_regression is None:
        return None
    try:
        raw = ctx.transport.get(layout.current_manifest(ctx.root, ctx.app_name))
        warm = hostjson.loads(raw).get("warmup")
    except (HostError, ValueError, AttributeError):
        return None
    return warm if isinstance(warm, dict) else None


def _manifest(ctx: HostContext) -> rel.Manifest:
    """What the release is; the environment's own fields (env_hash, python_version, platform,
    installer, pip_freeze for a venv) are its kind's (`BuiltEnvironment.manifest`)."""
    spec = ctx.spec
    return rel.Manifest.model_validate({
        "app": ctx.app_name, "release_id": ctx.release_id, "deployment": ctx.inputs.deployment,
        "created": datetime.now(UTC), "spec_digest": spec.digest,
        "model_sha256": spec.model.sha256, "lock_sha256": ctx.lock.sha256,
        "golden_sha256": hash_file(spec.paths.golden),
        **ctx.known_environment().manifest, "facts": ctx.known_facts().raw,
        "warmup": ctx.warmup, "gpus": list(ctx.gpus) if ctx.gpus else None,
        "service": spec.service.model_dump(mode="json") if spec.service else {}})


def remote_model_path(release_path: str, model: Path) -> str:
    """Where the staged model is on the host: model/ for a directory, model/<name> for a file."""
    return layout.in_release(release_path, layout.model_rel(model.name, is_dir=model.is_dir()))


def verify_release(transport: Transport, tools: RemoteTools, spec: Spec, *, python: str,
                   release_path: str, baseline: dict[str, Any] | None,
                   deadline: Deadline, gpus: tuple[str, ...] = (),
                   on_progress: Callable[[Iterations], None] | None = None,
                   write: SmallFiles | None = None,
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the warmup and the gates; returns (the raw result for the manifest, event details).
    Raises StepFailed naming every failing gate. `write` (a small golden file and the runner's
    request into the staged release in one host call, or along with the runner's start) is
    used when given and it can."""
    golden = layout.release_golden(release_path)
    budget = max(1.0, min(float(spec.verify.timeout_s), deadline.remaining() - RESERVE_S))
    request = WarmupRequest.from_spec(
        spec, model_path=remote_model_path(release_path, spec.paths.model), golden_path=golden,
        deadline_s=budget)
    timeout, written, before = deadline.timeout(), None, None
    if write is not None and spec.paths.golden.stat().st_size <= INLINE_MAX_BYTES:
        path = request_path(release_path)
        files = {golden: spec.paths.golden.read_bytes(),
                 path: capped(request, timeout).to_json().encode()}
        before = write.along(files)
        if before is not None or write.write(files):
            written = path
    if written is None:
        transport.put(spec.paths.golden, golden, 0o644)
    result = run_warmup(transport, python, tools, request, timeout=timeout,
                        visible_devices=",".join(gpus) if gpus else None,
                        on_progress=on_progress, written=written, before=before)
    base = result_from_raw(transport.host, baseline) if baseline else None
    verdicts = gates(result, spec.verify, base)
    failed = [g for g in verdicts if not g.passed]
    differences = environment_differences(spec.paths.golden, result.environment)
    if failed:
        hint = ""
        if differences and any(g.name == "golden" for g in failed):
            hint = " (the host differs from where the golden was recorded: " + \
                "; ".join(differences[:5]) + ")"
        raise StepFailed(transport.host, "verify failed: " + "; ".join(
            f"{g.name}: {g.message}" for g in failed) + hint)
    lat = result.latency
    details: dict[str, Any] = {"gates": [g.name for g in verdicts]}
    if lat is not None:
        details.update(p50_ms=lat.p50_ms, p95_ms=lat.p95_ms, p99_ms=lat.p99_ms,
                       cold_start_ms=lat.cold_start_ms, throughput_per_s=lat.throughput_per_s)
    if result.golden:
        details["golden_samples"] = result.golden.get("samples")
    details["warmup_s"] = result.duration_s
    details["environment_differences"] = differences
    return result.raw, details


def environment_differences(golden: Path, host_environment: dict[str, Any]) -> list[str]:
    """The golden's fingerprint against the host's environment (reported, never a gate); none
    when either side is missing (a golden recorded without `golden record`, a killed runner)."""
    try:
        recorded = fingerprint.read_fingerprint(golden)
    except InvalidInput as exc:
        return [f"golden fingerprint unreadable: {exc}"]
    if not recorded or not host_environment:
        return []
    return [d.message for d in fingerprint.diff(recorded, host_environment)]
