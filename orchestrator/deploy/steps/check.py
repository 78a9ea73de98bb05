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
    first = ""
    if s is not None and s.container is not None:
        name = s.container.stable_name(spec.name)
        first = (f"start {name}-next from the release's image beside {name}, wait until "
                 f"its ready_command passes inside it (at most "
                 f"{s.container.ready_timeout_s:g} s), then stop {name} and rename the new "
                 "one; ")
    if s is not None and s.health_url:
        return f"{first}GET {s.health_url} must answer 2xx within {s.health_timeout_s:g} s"
    if s is not None and s.health_command:
        return f"{first}health command must exit 0 within {s.health_timeout_s:g} s"
    return f"{first}no service health check in the spec" if first else \
        "skipped: no service health check in the spec"
