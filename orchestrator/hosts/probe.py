"""The probe step: ship the tools, run `remote/probe.py` on a host, parse its JSON into HostFacts.

Phases: ensure tools (one SFTP read when they are already there) -> one command (or one
request to the host's agent, when a rollout's gate keeps one) -> pure parse
(`orchestrator.core.facts.parse_facts`). Output that is not one facts object, or more than
`facts.MAX_FACTS_BYTES`, is a `BadHostOutput` naming the host.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol

from orchestrator.core.facts import MAX_FACTS_BYTES, HostFacts, parse_facts
from orchestrator.errors import BadHostOutput, HostError, OutputTooLarge
from orchestrator.hosts import agent, ops
from orchestrator.hosts.hostops import HostOps
from orchestrator.hosts.pool import Pool
from orchestrator.hosts.shipping import ensure_tools
from orchestrator.hosts.ssh import HostAddress
from orchestrator.hosts.transport import Transport

PROBE_TIMEOUT_S = 60.0


class ProbeTarget(HostAddress, Protocol):
    """What probing needs of an inventory host (`orchestrator.core.inventory.Host` fits)."""

    @property
    def deploy_root(self) -> str: ...


def probe_command(transport: Transport, deploy_root: str, *, engines: bool = True) -> list[str]:
    """The argv that prints this host's facts (the tools are shipped first if needed)."""
    tools = ensure_tools(transport, deploy_root)
    return tools.argv("probe.py", "--deploy-root", deploy_root,
                      *(() if engines else ("--no-engines",)))


def probe_host(transport: Transport, host: ProbeTarget, *, engines: bool = True) -> HostFacts:
    """The host's facts: through its host agent when one is open for its deploy root (a
    rollout's gate keeps one, orchestrator/hosts/agent.py `Kept`: the pipeline goes on with
    it), else one command. `engines=False`: the container engines are not asked."""
    try:
        if agent.current(transport, host.deploy_root, "python3") is not None:
            facts = HostOps(transport, host.deploy_root).run(
                ops.probe(engines=engines), timeout=PROBE_TIMEOUT_S, max_output=MAX_FACTS_BYTES)
            # The facts as probe.py alone prints them: one parser, one size limit.
            return parse_facts(host.name, json.dumps(facts, sort_keys=True))
        result = transport.run(probe_command(transport, host.deploy_root, engines=engines),
                               timeout=PROBE_TIMEOUT_S, max_output=MAX_FACTS_BYTES)
    except OutputTooLarge as exc:
        raise BadHostOutput(
            host.name, f"probe printed more than {MAX_FACTS_BYTES} bytes; refusing to parse it"
        ) from exc
    return parse_facts(host.name, result.stdout)


def probe_hosts(
    pool: Pool, hosts: Sequence[ProbeTarget], max_parallel: int
) -> dict[str, HostFacts | HostError]:
    """Facts of every host (or the error that host gave), keyed by name in the order given."""
    return pool.map_hosts(probe_host, hosts, max_parallel)
