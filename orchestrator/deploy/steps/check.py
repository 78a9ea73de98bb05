"""The `check` step: restart the service, then its health check (command or HTTP URL), after
the switch; a failure rolls the host back to its previous good release."""

from __future__ import annotations

from typing import Any

from orchestrator.core.facts import HostFacts
from orchestrator.core.spec import Spec
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.steps import service
from orchestrator.deploy.steps.context import HostContext, Target

NAME = "check"


def run(ctx: HostContext, deadline: Deadline) -> dict[str, Any]:
    restarted = service.restart(ctx.transport, ctx.root, ctx.app_name, ctx.service,
                                deadline.timeout(), ctx.gpus)
    return {**restarted, **service.health(ctx.transport, ctx.root, ctx.app_name, ctx.service,
                                          deadline.timeout(), ctx.tools)}


def describe(spec: Spec, facts: HostFacts, target: Target) -> str:
    s = spec.service
    if s is not None and s.health_url:
        return f"GET {s.health_url} must answer 2xx within {s.health_timeout_s:g} s"
    if s is not None and s.health_command:
        return f"health command must exit 0 within {s.health_timeout_s:g} s"
    return "skipped: no service health check in the spec"
