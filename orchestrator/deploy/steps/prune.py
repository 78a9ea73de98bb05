"""The `prune` step: keep the newest `release.keep` releases; the host never removes the current
one, the rollback target, or one in use; the engine images of the removed image releases go too
when no remaining release of any app runs in them. A failure here is a warning: the new
release serves. As the playbook's last step it also drops the deploy lock in the same host
call, when the driver asks (`ctx.unlock`, deploy/batch.py)."""

from __future__ import annotations

from typing import Any

from orchestrator.core.facts import HostFacts
from orchestrator.core.spec import Spec
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.steps.context import HostContext, Target
from orchestrator.hosts import ops
from orchestrator.hosts.opresults import HostOpFailed

NAME = "prune"


def run(ctx: HostContext, deadline: Deadline) -> dict[str, Any]:
    call = ops.prune(ctx.app_name, int(ctx.spec.release.keep))
    if ctx.unlock is None:
        out = ctx.ops.run(call, timeout=deadline.timeout())
    else:  # the last step: the deploy lock goes in the same host call
        try:
            replies = ctx.ops.batch([call, ctx.unlock], timeout=deadline.timeout())
            out, ctx.unlocked = call.parse(replies[0]), ctx.unlock.parse(replies[1])
        except HostOpFailed as exc:
            if exc.op != str(ops.Op.DEPLOY_UNLOCK):
                raise
            # Pruned, but the unlock was refused: the driver's own unlock says what it can.
            out = ctx.ops.run(call, timeout=deadline.timeout())
    return {"removed_releases": list(out.removed_releases),
            "removed_venvs": list(out.removed_venvs), "removed_wheels": len(out.removed_wheels),
            "removed_images": list(out.removed_images)}


def describe(spec: Spec, facts: HostFacts, target: Target) -> str:
    words = (f"keep the newest {spec.release.keep} releases (never current or the rollback "
             "target)")
    if spec.environment.image is not None or spec.environment.image_base is not None:
        words += "; remove the engine images of removed releases no remaining release uses"
    return words
