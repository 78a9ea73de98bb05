"""The `probe` step: the host's facts and the app's state there, in one hostops batch (sent with
the deploy lock's op when the deployment's driver can: one round trip less on a far host).

The tools bundle is checked (and shipped when missing) once per host and deployment here, so every
later step finds it. Driver missing or no GPU is a fact, not a failure; a probe that prints more
than the facts limit is refused before it is parsed.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from orchestrator.core.facts import MAX_FACTS_BYTES, HostFacts, parse_facts
from orchestrator.core.spec import Spec
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.environments.registry import environment_for
from orchestrator.deploy.steps.context import HostContext, Target
from orchestrator.errors import BadHostOutput, HostError, OutputTooLarge
from orchestrator.hosts import ops
from orchestrator.hosts.probe import PROBE_TIMEOUT_S

NAME = "probe"
#: Room for the `state` reply beside the facts in the probe's batch.
_STATE_BYTES = 1 << 20


#: The probe's bound on the replies of its batch (and of the deploy lock's, which may carry it).
MAX_OUTPUT = MAX_FACTS_BYTES + _STATE_BYTES


def calls(spec: Spec) -> list[ops.OpCall[Any]]:
    """The probe's host ops: the facts (the container engines only for a kind that runs with
    one) and the app's state (deploy/batch.py sends them with the deploy lock when the playbook
    starts with this step)."""
    return [ops.probe(engines=environment_for(spec).needs_engines), ops.state(str(spec.name))]


def run(ctx: HostContext, deadline: Deadline) -> dict[str, Any]:
    ctx.tools = ctx.ops.tools()  # ships the tools when missing; once per deployment
    probe, state = calls(ctx.spec)
    early, ctx.prefetched = ctx.prefetched, None  # taken under the lock just now: fresh
    try:
        if isinstance(early, HostError):
            raise early
        replies = early if early is not None else ctx.ops.batch(
            [probe, state], timeout=deadline.timeout(PROBE_TIMEOUT_S), max_output=MAX_OUTPUT)
    except OutputTooLarge as exc:
        raise BadHostOutput(ctx.host, f"probe printed more than {MAX_FACTS_BYTES} bytes; "
                                      "refusing to parse it") from exc
    # The facts as probe.py alone prints them: one parser, one size limit.
    facts = parse_facts(ctx.host, json.dumps(replies[0].get("facts"), sort_keys=True))
    ctx.facts = facts
    ctx.app = asdict(state.parse(replies[1]))
    return {"python": facts.python_version, "driver": facts.driver_version,
            "gpus": len(facts.gpus), "current": ctx.app["current"],
            "generation": ctx.app["generation"]}


def describe(spec: Spec, facts: HostFacts, target: Target) -> str:
    return f"done (python {facts.python_version}, {len(facts.gpus)} GPU(s))"
