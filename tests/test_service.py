"""The service health check (orchestrator/hosts/serving.py), run on a real testbed host."""

from __future__ import annotations

import pytest

from orchestrator.core.inventory import Inventory
from orchestrator.errors import HealthCheckFailed
from orchestrator.hosts import serving as service
from orchestrator.hosts.pool import Pool
from tests.procs import processes_mentioning


def test_a_passing_command_is_one_attempt(pool: Pool, inventory: Inventory) -> None:
    host = inventory.hosts["tb-01"]
    with pool.session(host) as transport:
        got = service.health(transport, url=None, command="test -d .", cwd=host.deploy_root,
                             budget_s=5.0, timeout=60.0)
    assert got["health"] == "command" and got["health_attempts"] == 1


def test_the_failure_is_reported_even_when_the_last_attempt_is_cut_short(
        pool: Pool, inventory: Inventory) -> None:
    # Each attempt fails after 0.8 s: the first runs whole, the second gets the 0.5 s the
    # budget has left. What the user must read is why the check failed, not only that its last
    # attempt ran out of time.
    host = inventory.hosts["tb-01"]
    command = "echo 'missing a required argument: x'; sleep 0.8; exit 1"
    with pool.session(host) as transport, pytest.raises(HealthCheckFailed) as failed:
        service.health(transport, url=None, command=command, cwd=host.deploy_root,
                       budget_s=1.5, timeout=60.0)
    message = str(failed.value)
    assert "unhealthy after 1.5 s (2 attempts)" in message
    assert ("exit 1: missing a required argument: x; the last attempt timed out after 0.5 s"
            in message)


def test_a_command_cut_off_by_the_budget_leaves_no_child_running(
        pool: Pool, inventory: Inventory) -> None:
    # A compound command: sh stays the parent of `sleep`, which would outlive a killed sh.
    host = inventory.hosts["tb-01"]
    with pool.session(host) as transport, pytest.raises(HealthCheckFailed) as failed:
        service.health(transport, url=None, command="sleep 7.319; exit 0", cwd=host.deploy_root,
                       budget_s=1.0, timeout=60.0)
    assert "timed out after 1.0 s" in str(failed.value)
    assert processes_mentioning("sleep 7.319") == []
