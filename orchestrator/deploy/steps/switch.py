"""The `switch` step: `current` replaced by rename of a new symlink (atomic, parent dir fsynced
on the host), then the service restart. The first step a failure of which is rolled back."""

from __future__ import annotations

from typing import Any

from orchestrator.core.facts import HostFacts
from orchestrator.core.spec import Spec
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.steps.context import HostContext, Target
from orchestrator.hosts import layout

NAME = "switch"


def run(ctx: HostContext, deadline: Deadline) -> dict[str, Any]:
    generation = int(ctx.app.get("generation") or 0) + 1
    out = ctx.ops.switch(ctx.app_name, ctx.release_id, generation, timeout=deadline.timeout())
    ctx.switched = True
    return {"current": out.current, "before": out.before, "generation": generation,
            "rollback_target": out.previous_good}


def describe(spec: Spec, facts: HostFacts, target: Target) -> str:
    current = facts.releases.get(spec.name)
    current_link = layout.current_link(target.host.deploy_root, spec.name)
    words = (f"{current_link} -> {layout.RELEASES}/<id> by atomic rename "
             f"(now: {current or 'no current release'})")
    if spec.service is not None and spec.service.restart:
        words += f"; then run the service restart command: {spec.service.restart}"
    return words
