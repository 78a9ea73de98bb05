"""A rollout's gate and its pipeline on one host agent (orchestrator/hosts/agent.py `Kept`,
deploy/rollout.py `preflight_fleet`), against the testbed's real sshd hosts.

What must hold: the gate probes each host through an agent that host's pipeline then goes on
with (one exec channel a host for the whole rollout, the gate's probe one request); the probe of
a venv release does not ask the container engines; no agent outlives the rollout, also when the
gate refuses the host.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.bench.farhosts import _Where
from orchestrator.core.facts import HostFacts
from orchestrator.core.inventory import Host, Inventory
from orchestrator.core.spec import load_spec
from orchestrator.deploy.batch import prepare
from orchestrator.deploy.rollout import rollout
from orchestrator.errors import HostError
from orchestrator.hosts.counting import Exchanges
from tests.specs import WHEEL_CACHE
from tests.test_agent import _no_agent_left, _per_step, _pool, app_state_current
from tests.test_deploy import v1_spec, v2_spec

HOST = "tb-08"


def _rollout(spec: Path, inventory: Inventory) -> tuple[bool, Exchanges, list[HostFacts]]:
    exchanges, sink, seen = Exchanges(), _Where(), []

    def on_probe(host: Host, facts: HostFacts | HostError) -> None:
        assert isinstance(facts, HostFacts), facts
        seen.append(facts)

    inputs = prepare(load_spec(spec), wheel_cache=WHEEL_CACHE)
    with _pool(inventory, exchanges, sink) as pool:
        out = rollout(inputs, inventory.resolve([HOST]), pool=pool, sink=sink,
                      on_probe=on_probe)
    return out.deploy.ok, exchanges, seen


def test_the_gate_probes_through_the_agent_the_pipeline_goes_on_with(
        inventory: Inventory, models_dir: Path, tmp_path: Path) -> None:
    ok, _, _ = _rollout(v1_spec(models_dir, tmp_path / "v1", "agent-gate", targets=[HOST]),
                        inventory)
    assert ok
    ok, exchanges, seen = _rollout(v2_spec(models_dir, tmp_path / "v2", "agent-gate",
                                           targets=[HOST]), inventory)
    assert ok
    steps = _per_step(exchanges, HOST)
    # The agent's start (its one exec) and the probe, one request; then the lock with the
    # pipeline's own probe, one request, and no second exec for the whole rollout.
    assert steps.pop("gate") == {"run": 1, "req": 1}
    assert steps.pop("lock") == {"req": 1}
    assert sum(kinds.get("run", 0) for kinds in steps.values()) == 0, steps
    assert len(seen) == 1 and seen[0].raw["engines"] is None  # a venv: engines not asked
    assert app_state_current(inventory, HOST, "agent-gate") is not None
    _no_agent_left(inventory.hosts[HOST])


def test_an_agent_the_gate_opened_is_stopped_when_the_gate_refuses_its_host(
        inventory: Inventory, models_dir: Path, tmp_path: Path) -> None:
    spec = v1_spec(models_dir, tmp_path / "v1", "agent-gate-refused", targets=[HOST],
                   extra='gpu: {required: true, count: 64}\n')
    ok, exchanges, seen = _rollout(spec, inventory)
    assert not ok and len(seen) == 1
    assert _per_step(exchanges, HOST) == {"gate": {"run": 1, "req": 1}}  # nothing after it
    _no_agent_left(inventory.hosts[HOST])
