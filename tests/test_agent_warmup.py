"""The warmup runner started by the host agent (`warmup-run`, remote/hostops_warmup.py), on the
testbed's real sshd hosts with the dev venv as "the venv".

What must hold: within `agent.serving`, `run_warmup` opens no exec channel (one request to the
agent), the runner's progress lines reach `on_progress` while it runs, and its request and pid
files are gone after; a model past its deadline is killed with its children and reported as
DeadlineExceeded, and the agent still answers the host's next op; a garbage progress line or a
flood on stdout fails with a clear error and leaves no process of the run behind.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.core.gates import WarmupRequest, gates, passed
from orchestrator.core.inventory import Host, Inventory
from orchestrator.core.progress import Iterations
from orchestrator.errors import BadHostOutput, HostError
from orchestrator.hosts import agent, ops
from orchestrator.hosts.counting import Counting, Exchanges
from orchestrator.hosts.hostops import HostOpFailed, HostOps
from orchestrator.hosts.shipping import RemoteTools, ensure_tools
from orchestrator.hosts.ssh import SshOptions, SshTransport, connect
from orchestrator.hosts.warmup import run_warmup
from tests import models
from tests.procs import processes_mentioning

VENV_PYTHON = sys.executable  # the dev venv: numpy, scikit-learn
HOST = "tb-08"


@pytest.fixture
def host(inventory: Inventory) -> Host:
    return inventory.hosts[HOST]


@pytest.fixture
def served(host: Host, inventory: Inventory
           ) -> Iterator[tuple[Counting, RemoteTools, Exchanges, agent.HostAgent]]:
    """A counted connection with the tools shipped, inside a host agent's `serving` block."""
    exchanges = Exchanges()
    inner: SshTransport = connect(host, SshOptions.for_inventory(inventory))
    transport = Counting(inner, exchanges)
    try:
        tools = ensure_tools(transport, host.deploy_root)
        exchanges.count.clear()
        with agent.serving(transport, host.deploy_root) as serving:
            yield transport, tools, exchanges, serving
    finally:
        inner.close()


def _kinds(exchanges: Exchanges) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for (_, _, kind), n in exchanges.count.items():
        kinds[kind] = kinds.get(kind, 0) + n
    return {k: n for k, n in kinds.items() if n}


def _gone(text: str) -> None:
    deadline = time.monotonic() + 10
    while processes_mentioning(text) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_mentioning(text) == []


def test_the_runner_through_the_agent_relays_progress_and_needs_no_channel(
        served: tuple[Counting, RemoteTools, Exchanges, agent.HostAgent], tmp_path: Path
        ) -> None:
    transport, tools, exchanges, serving = served
    model, golden = models.make_joblib(tmp_path / "m")
    work = tmp_path / "work"
    work.mkdir()
    seen: list[tuple[Iterations, float]] = []
    request = WarmupRequest(str(model), "joblib", str(golden), method="predict_proba",
                            warmup_iterations=200, iterations=3000)
    started = time.monotonic()
    result = run_warmup(transport, VENV_PYTHON, tools, request, timeout=120,
                        workdir=str(work), on_progress=lambda r: seen.append(
                            (r, time.monotonic())))
    ended = time.monotonic()
    assert passed(gates(result, {})), gates(result, {})
    # The agent's start (its channel's exec) and its one request; the request file went up
    # by SFTP (the pipeline writes it with the golden file in a request of its own instead).
    assert _kinds(exchanges) == {"run": 1, "req": 1, "put": 1}, _kinds(exchanges)
    assert serving.requests == 1 and serving.usable
    phases = [r.phase for r, _ in seen]
    assert "warmup" in phases and "latency" in phases, phases
    last = [r for r, _ in seen if r.phase == "latency"][-1]
    assert last.done == last.total == 3000
    assert seen[0][1] < ended - 0.05 or len(seen) > 2  # came while it ran, not all at its end
    assert started < seen[0][1]
    assert list(work.iterdir()) == []  # request and pid file removed on the host


def test_a_runner_past_its_deadline_is_killed_with_its_children_and_the_agent_goes_on(
        served: tuple[Counting, RemoteTools, Exchanges, agent.HostAgent], host: Host,
        tmp_path: Path) -> None:
    transport, tools, exchanges, serving = served
    model, golden = models.make_sleepy_model(tmp_path / "m", ms=60_000, spawn_child=True)
    work = tmp_path / "work"
    work.mkdir()
    request = WarmupRequest(str(model), "joblib", str(golden), deadline_s=3)
    started = time.monotonic()
    result = run_warmup(transport, VENV_PYTHON, tools, request, timeout=60, workdir=str(work))
    assert time.monotonic() - started < 30
    assert result.error and result.error["type"] == "DeadlineExceeded", result.error
    _gone(str(model))
    assert list(work.iterdir()) == []
    # The same agent answers the host's next op: one more request, still no exec.
    HostOps(transport, host.deploy_root).state("agent-warmup-none")
    assert serving.requests == 2 and _kinds(exchanges).get("run") == 1, _kinds(exchanges)


# An "interpreter" that ignores the runner and writes what a broken or hostile one would.
_FAKE = """#!/bin/sh
echo $$ > "$3.pid"
case "{mode}" in
  garbage) printf 'orchestrator-progress {{"phase": "warmup", "done": "x"}}\\n' >&2
           sh -c 'sleep 600' "$0-child" & printf '{{"schema": 1}}\\n' ;;
  flood) sh -c 'sleep 600' "$0-child" & head -c 12000000 /dev/zero; wait ;;
esac
"""


@pytest.mark.parametrize("mode", ["garbage", "flood"])
def test_a_garbage_progress_line_or_a_stdout_flood_fails_clearly_and_leaves_nothing(
        mode: str, served: tuple[Counting, RemoteTools, Exchanges, agent.HostAgent],
        tmp_path: Path) -> None:
    transport, tools, _, _ = served
    fake = tmp_path / f"fake-python-{mode}"
    fake.write_text(_FAKE.format(mode=mode))
    fake.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    request = WarmupRequest(str(tmp_path / "none"), "joblib", str(tmp_path / "none.npz"),
                            deadline_s=20)
    started = time.monotonic()
    with pytest.raises(HostError) as caught:
        run_warmup(transport, str(fake), tools, request, timeout=60, workdir=str(work))
    assert time.monotonic() - started < 30
    if mode == "garbage":
        assert isinstance(caught.value, BadHostOutput)
        assert "progress line with done=x" in str(caught.value), caught.value
    else:
        assert "more than 8388608 bytes on stdout" in str(caught.value), caught.value
    _gone(str(fake))
    assert list(work.iterdir()) == []


def test_ops_sent_before_the_runner_run_first_and_a_failed_one_stops_it(
        served: tuple[Counting, RemoteTools, Exchanges, agent.HostAgent], host: Host,
        tmp_path: Path) -> None:
    """verify's golden file and runner request go with the runner's start (`before`): written
    first, in the same request; should one fail, the run fails with that op's kind and the
    runner never starts."""
    transport, tools, exchanges, serving = served
    fake = tmp_path / "fake-python-ran"
    marker = tmp_path / "ran"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nprintf '{{}}\\n'\n")
    fake.chmod(0o755)
    host_ops = HostOps(transport, host.deploy_root)
    request = WarmupRequest(str(tmp_path / "none"), "joblib", str(tmp_path / "none.npz"),
                            deadline_s=20)
    missing = ops.write_file("agent-warmup-none", "20260101T000000Z-0badc0de", "golden.npz",
                             b"x")
    with pytest.raises(HostOpFailed) as caught:
        run_warmup(transport, str(fake), tools, request, timeout=60,
                   written=str(tmp_path / "request.json"), before=(host_ops, [missing]))
    assert caught.value.kind == "not-found" and "is not being staged" in str(caught.value)
    assert not marker.exists()
    assert serving.requests == 1 and _kinds(exchanges) == {"run": 1, "req": 1}

