"""The `stage` step: a new release dir on the host with the lock file and the model (its sha256
checked on the host after transfer), and the wheels the host's cache lacks.

Idempotent: `stage-begin` resumes its own staging dir, a model already verified is not sent twice,
wheels already cached are not sent. A small model travels inside one hostops batch with
stage-begin, the lock and the hash check (one host process); a larger one, and the wheels, go on
one SSH stream per host (hostops' stream ops; SFTP for a transport that cannot stream) and report
their bytes as `progress` events (orchestrator/deploy/progress.py). With
`environment.wheel_source` the hosts fetch the wheels from the mirror themselves; with
`environment.wheel_peers` from a host of the rollout that holds them, or from its platform's
seed as they land on it (orchestrator/deploy/peers.py), the controller streaming the rest.
"""

from __future__ import annotations

from typing import Any

from orchestrator.core.facts import HostFacts
from orchestrator.core.hashing import hash_file
from orchestrator.core.progress import BYTES
from orchestrator.core.spec import Spec
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.environments.registry import environment_for
from orchestrator.deploy.peers import deliver, platform_key
from orchestrator.deploy.steps import StepFailed
from orchestrator.deploy.steps.context import HostContext, Target
from orchestrator.errors import HostError, HostUnreachable
from orchestrator.hosts import layout, ops
from orchestrator.hosts.hostops import HostOpFailed, StagedRelease
from orchestrator.hosts.modelfiles import SmallModel, model_bytes, small_model

NAME = "stage"
#: Below this, an upload failure is reported as a full disk.
_LOW_DISK_BYTES = 64 << 20


def run(ctx: HostContext, deadline: Deadline) -> dict[str, Any]:
    spec = ctx.spec
    # Resolve the wheels first: a wheelhouse missing one fails here, before the host is
    # touched at all.
    wheels = ctx.inputs.wheels_for(ctx.known_facts(), deadline.remaining)
    cleaned = _clean_stale_staging(ctx, deadline)
    small = small_model(spec.paths.model, follow=spec.model.follow_symlinks)
    missing: tuple[str, ...] | None
    try:
        if small is not None:
            details, missing = _stage_in_one_call(ctx, small, sorted(wheels), deadline)
        else:
            details, missing = _stage_by_sftp(ctx, sorted(wheels), deadline)
        if missing:  # this host will build its environment: what it needs starts now
            environment_for(spec).prepare(ctx, wheels)
        source = spec.environment.wheel_source
        if source is not None:  # the hosts pull from the operator's mirror, by hash
            pushed = ctx.ops.fetch_wheels(
                source.url, source.layout,
                {sha: (w.filename, w.path.stat().st_size) for sha, w in wheels.items()},
                missing=missing, timeout=deadline.timeout())
        else:  # the controller streams, or with wheel_peers a peer gives what it holds
            got = deliver(ctx.ops, ctx.inputs.peers, ctx.inv_host, platform_key(ctx.known_facts()),
                          {sha: w.path for sha, w in wheels.items()}, missing=missing,
                          timeout=deadline.timeout(),
                          progress=lambda total: ctx.progress.meter(NAME, BYTES, "wheels",
                                                                    total).file)
            pushed = got.pushed
    except HostUnreachable:
        raise
    except HostError as exc:
        raise _explain(ctx, exc, deadline) from exc
    details = {"release_id": ctx.release_id, "resumed": details.pop("resumed"),
               "cleaned_staging": cleaned, **details}
    moved = sum(wheels[s].path.stat().st_size for s in pushed)
    if spec.environment.wheel_source is not None:  # the controller sent none of these bytes
        details.update(wheels_total=len(wheels), wheels_pushed=0, wheels_fetched=len(pushed),
                       wheel_bytes=0, wheel_bytes_fetched=moved)
    else:
        details.update(wheels_total=len(wheels), wheels_pushed=len(pushed), wheel_bytes=moved)
    if ctx.inputs.peers is not None:  # what came from a peer, and from which
        details.update(wheels_from_peer=len(got.fetched), wheel_peer=got.peer,
                       wheel_bytes_from_peer=sum(wheels[s].path.stat().st_size
                                                 for s in got.fetched),
                       **({"wheel_peer_error": got.peer_error} if got.peer_error else {}))
    return details


def describe(spec: Spec, facts: HostFacts, target: Target) -> str:
    releases = layout.releases_dir(target.host.deploy_root, spec.name)
    return (f"new release dir {releases}/<id>; upload the model ({spec.model.format}, "
            f"sha256 {spec.model.sha256[:12]}... checked on the host) and the lock; "
            + (f"the host fetches the wheels its cache lacks from {source.url} (each checked "
               "against the lock's sha256)" if (source := spec.environment.wheel_source)
               else "stream the wheels the host's cache lacks (each hashed on arrival)"
               + ("; or pull them from a host of this rollout that holds them (hash-checked)"
                  if spec.environment.wheel_peers else "")))


def _stage_in_one_call(ctx: HostContext, small: SmallModel, shas: list[str],
                       deadline: Deadline) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A small model: stage-begin, the lock and the model's files, the model's hash checked on
    the host, which wheels the host lacks: one batch, one host process."""
    spec, app, rid = ctx.spec, ctx.app_name, ctx.release_id
    # Set before the call: should it fail after stage-begin, abort-stage removes the dir.
    ctx.staged = StagedRelease(app, rid, "", "staging", False, None)
    begin = ops.stage_begin(app, rid, deployment=ctx.inputs.deployment)
    verify = ops.verify_model(app, rid, spec.model.sha256, path=small.verify_path)
    missing = ops.wheels_missing(shas)
    # The lock first, as by SFTP (an image release has none: the image brings its packages).
    lock = [] if spec.paths.requirements is None else \
        [ops.write_file(app, rid, layout.LOCK_FILE, spec.paths.requirements.read_bytes())]
    try:
        replies = ctx.ops.batch([begin, *lock, *small.write_calls(app, rid), verify, missing],
                                timeout=deadline.timeout())
    except HostOpFailed as exc:
        if exc.op == ops.Op.STAGE_BEGIN:  # refused (busy): nothing of ours was staged
            ctx.staged = None
        raise
    staged = begin.parse(replies[0])
    ctx.staged, ctx.release_path = staged, staged.path
    details: dict[str, Any] = {"release_id": rid, "resumed": staged.resumed}
    if staged.state != "committed":
        details["model_hash"] = verify.parse(replies[-2])
    return details, missing.parse(replies[-1])


def _stage_by_sftp(ctx: HostContext, shas: list[str],
                   deadline: Deadline) -> tuple[dict[str, Any], tuple[str, ...] | None]:
    spec, app, rid = ctx.spec, ctx.app_name, ctx.release_id
    staged = ctx.ops.stage_begin(app, rid, deployment=ctx.inputs.deployment,
                                 lock_sha256=None if spec.paths.requirements is None
                                 else hash_file(spec.paths.requirements),
                                 timeout=deadline.timeout())
    ctx.staged, ctx.release_path = staged, staged.path
    details: dict[str, Any] = {"release_id": rid, "resumed": staged.resumed}
    if staged.state == "committed":
        return details, None
    # The lock first: prune's wheel GC keeps what some release's lock lists.
    if not staged.lock_present and spec.paths.requirements is not None:
        # else the host copied it from a release that had it (or an image release has none)
        ctx.transport.put(spec.paths.requirements, staged.lock_path, 0o644)
    follow = spec.model.follow_symlinks
    meter = ctx.progress.meter(NAME, BYTES, "model",
                               model_bytes(spec.paths.model, follow=follow))
    rel_model = ctx.ops.upload_model(spec.paths.model, staged, timeout=deadline.timeout(),
                                     follow=follow, progress=meter.file)
    verify = ops.verify_model(app, rid, spec.model.sha256, path=rel_model)
    missing = ops.wheels_missing(shas)
    replies = ctx.ops.batch([verify, missing], timeout=deadline.timeout())
    details["model_hash"] = verify.parse(replies[0])
    return details, missing.parse(replies[1])


def _explain(ctx: HostContext, exc: HostError, deadline: Deadline) -> HostError:
    """SFTP says only "Failure" when the disk is full: add the host's free space."""
    try:
        free = ctx.ops.run(ops.free_bytes(ctx.root), timeout=deadline.timeout(30))
    except HostError:
        return exc
    if free >= _LOW_DISK_BYTES:
        return exc
    return StepFailed(ctx.host, f"{exc.reason} (only {free} bytes free under {ctx.root}:"
                                " the disk is full)")


def _clean_stale_staging(ctx: HostContext, deadline: Deadline) -> list[str]:
    # We hold the app's deploy lock, so any other staging dir is a crashed deployment's.
    stale = [s for s in ctx.app.get("staging", ()) if s != ctx.release_id]
    for rid in stale:
        ctx.ops.abort_stage(ctx.app_name, rid, timeout=deadline.timeout())
    return stale

