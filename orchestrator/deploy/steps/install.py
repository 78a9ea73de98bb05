"""The `install` step: the spec's environment built on the host, or reused when it is there and
complete (content-addressed), tied to the staged release before anything is switched.

What is built, and how, is the environment kind's (orchestrator/deploy/environments/: today the
venv of a hashed lock, `environments.venv`); this step only asks the spec's kind to ensure it and
records what was built in the host's context, for `verify` and the release's manifest.
"""

from __future__ import annotations

from typing import Any

from orchestrator.core.facts import HostFacts
from orchestrator.core.spec import Spec
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.environments.registry import environment_for
from orchestrator.deploy.steps.context import HostContext, Target

NAME = "install"


def run(ctx: HostContext, deadline: Deadline) -> dict[str, Any]:
    built = environment_for(ctx.spec).ensure(ctx, deadline)
    ctx.environment = built
    return dict(built.details)


def describe(spec: Spec, facts: HostFacts, target: Target) -> str:
    return environment_for(spec).describe(spec, facts, target)
