"""The step registry: every step the engine knows, in the only order they may run, once.

A step is a module under orchestrator/deploy/steps/ with `NAME`, `run(ctx, deadline) -> dict`
(do it on one host, return the details of its outcome event) and `describe(spec, facts, target)
-> str` (what it would do there, for `orchestrator plan`). `STEPS` maps each name to its step in
order; the playbook loader, the echo runner and `plan` take their step lists from here, so a new
step is one new module and one line below.

The switch boundary is part of the registry: steps before `SWITCH` change nothing a user sees (a
failure there removes the staged release); from `SWITCH` on, a failure is rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from orchestrator.core.facts import HostFacts
from orchestrator.core.spec import Spec
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.steps import (
    check,
    install,
    preflight,
    probe,
    prune,
    stage,
    switch,
    verify,
)
from orchestrator.deploy.steps.context import HostContext, Target

RunStep = Callable[[HostContext, Deadline], dict[str, Any]]
DescribeStep = Callable[[Spec, HostFacts, Target], str]


@dataclass(frozen=True)
class Step:
    """One registered step: its name, what it does, how it describes itself, whether a playbook
    may leave it out."""

    name: str
    run: RunStep
    describe: DescribeStep
    optional: bool = False


#: name -> step, in the order they run. Spelled out (no module lookup by name) so that mypy
#: checks every step's `run` and `describe` against the signatures above.
STEPS: Mapping[str, Step] = MappingProxyType({s.name: s for s in (
    Step(probe.NAME, probe.run, probe.describe),
    Step(preflight.NAME, preflight.run, preflight.describe),
    Step(stage.NAME, stage.run, stage.describe),
    Step(install.NAME, install.run, install.describe),
    Step(verify.NAME, verify.run, verify.describe),
    Step(switch.NAME, switch.run, switch.describe),
    Step(check.NAME, check.run, check.describe, optional=True),
    Step(prune.NAME, prune.run, prune.describe, optional=True),
)})
#: The step names in order: what every other step list is derived from.
STEP_ORDER: tuple[str, ...] = tuple(STEPS)
#: The first step whose failure must be rolled back rather than aborted.
SWITCH = switch.NAME
#: Steps a playbook may leave out; every other one is required.
OPTIONAL_STEPS: frozenset[str] = frozenset(s.name for s in STEPS.values() if s.optional)


def before_switch(name: str) -> bool:
    """Whether `name` runs before the switch (its failure leaves the host as it was)."""
    return STEP_ORDER.index(name) < STEP_ORDER.index(SWITCH)


def step(name: str) -> Step:
    """The registered step `name`; KeyError names the known ones."""
    try:
        return STEPS[name]
    except KeyError:
        raise KeyError(f"unknown step {name!r} (known: {', '.join(STEP_ORDER)})") from None
