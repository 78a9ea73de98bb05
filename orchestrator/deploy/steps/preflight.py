"""The `preflight` step: the pure preflight (orchestrator.core.preflight) on the probed facts;
a failing verdict refuses the host before anything is staged, naming every failing check."""

from __future__ import annotations

from typing import Any

from orchestrator.core.facts import HostFacts
from orchestrator.core.preflight import Status, preflight
from orchestrator.core.spec import Spec
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.steps import StepFailed
from orchestrator.deploy.steps.context import HostContext, Target

NAME = "preflight"


def run(ctx: HostContext, deadline: Deadline) -> dict[str, Any]:
    verdict = preflight(ctx.spec, ctx.lock, ctx.known_facts(), ctx.inputs.compat)
    if not verdict.ok:
        raise StepFailed(ctx.host, "preflight failed: " + "; ".join(
            c.message for c in verdict.checks if c.status is Status.FAIL))
    return {"verdict": str(verdict.status),
            "warnings": [c.message for c in verdict.checks if c.status is Status.WARN],
            "checks": verdict.to_dict()["checks"]}


def describe(spec: Spec, facts: HostFacts, target: Target) -> str:
    worst = target.verdict.status
    if worst is Status.PASS:
        return str(worst)
    count = sum(1 for c in target.verdict.checks if c.status is worst)
    return f"{worst} ({count} {worst} check(s))"
