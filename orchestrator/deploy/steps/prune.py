"""The `prune` step: keep the newest `release.keep` releases; the host never removes the current
one, the rollback target, or one in use; the engine images of the removed image releases go too
when no remaining release of any app runs in them. A failure here is a warning: the new
release serves."""

from __future__ import annotations

from typing import Any

from orchestrator.core.facts import HostFacts
from orchestrator.core.spec import Spec
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.steps.context import HostContext, Target

NAME = "prune"


def run(ctx: HostContext, deadline: Deadline) -> dict[str, Any]:
    out = ctx.ops.prune(ctx.app_name, int(ctx.spec.release.keep), timeout=deadline.timeout())
    return {"removed_releases": list(out.removed_releases),
            "removed_venvs": list(out.removed_venvs), "removed_wheels": len(out.removed_wheels),
            "removed_images": list(out.removed_images)}


def describe(spec: Spec, facts: HostFacts, target: Target) -> str:
    words = (f"keep the newest {spec.release.keep} releases (never current or the rollback "
             "target)")
    if spec.environment.image is not None or spec.environment.image_base is not None:
        words += "; remove the engine images of removed releases no remaining release uses"
    return words
