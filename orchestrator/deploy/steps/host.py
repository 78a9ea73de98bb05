"""`HostDeploy`: the pipeline's `HostSteps` for one host, from the step registry and recovery.

The engine (orchestrator.deploy.pipeline) decides what runs; this only routes: a playbook step to
its registered module (`registry.STEPS[name].run`), a recovery action to its function in
`recovery`, all over one shared `HostContext`. Each step is idempotent on its own (see the step
modules), so a resumed pipeline with the same release id repeats nothing it finished.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.core.inventory import Host
from orchestrator.core.sink import EventSink
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.inputs import DeployInputs
from orchestrator.deploy.steps import recovery, registry
from orchestrator.deploy.steps.context import HostContext
from orchestrator.hosts.transport import Transport


class HostDeploy:
    """The HostSteps of one host for one deployment."""

    def __init__(self, transport: Transport, host: Host, inputs: DeployInputs,
                 sink: EventSink | None = None) -> None:
        self.ctx = HostContext.open(transport, host, inputs, sink)
        self.host = host.name

    def run(self, name: str, deadline: Deadline) -> Mapping[str, Any]:
        return registry.step(name).run(self.ctx, deadline)

    def has_previous(self) -> bool:
        return self.ctx.has_previous()

    def abort_stage(self, deadline: Deadline) -> Mapping[str, Any]:
        return recovery.abort_stage(self.ctx, deadline)

    def mark_bad(self, deadline: Deadline) -> Mapping[str, Any]:
        return recovery.mark_bad(self.ctx, deadline)

    def rollback(self, deadline: Deadline) -> Mapping[str, Any]:
        return recovery.rollback(self.ctx, deadline)

    def recheck(self, deadline: Deadline) -> Mapping[str, Any]:
        return recovery.recheck(self.ctx, deadline)
