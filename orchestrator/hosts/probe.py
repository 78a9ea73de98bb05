"""The probe step: ship the tools, run `remote/probe.py` on a host, parse its JSON into HostFacts.

Phases: ensure tools (one SFTP read when they are already there) -> one command -> pure parse
(`orchestrator.core.facts.parse_facts`). Output that is not one facts object, or more than
`facts.MAX_FACTS_BYTES`, is a `BadHostOutput` naming the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from orchestrator.core.facts import MAX_FACTS_BYTES, HostFacts, parse_facts
from orchestrator.errors import BadHostOutput, HostError, OutputTooLarge
from orchestrator.hosts.pool import Pool
from orchestrator.hosts.shipping import ensure_tools
from orchestrator.hosts.ssh import HostAddress
from orchestrator.hosts.transport import Transport

PROBE_TIMEOUT_S = 60.0


class ProbeTarget(HostAddress, Protocol):
    """What probing needs of an inventory host (`orchestrator.core.inventory.Host` fits)."""

    @property
    def deploy_root(self) -> str: ...


def probe_command(transport: Transport, deploy_root: str) -> list[str]:
    """The argv that prints this host's facts (the tools are shipped first if needed)."""
    tools = ensure_tools(transport, deploy_root)
    return tools.argv("probe.py", "--deploy-root", deploy_root)


def probe_host(transport: Transport, host: ProbeTarget) -> HostFacts:
    argv = probe_command(transport, host.deploy_root)
    try:
        result = transport.run(argv, timeout=PROBE_TIMEOUT_S, max_output=MAX_FACTS_BYTES)
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
