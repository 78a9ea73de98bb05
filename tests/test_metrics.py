"""`/metrics`: what each figure is derived from (events through `Metrics.observe`, host status
from the store), and the real daemon serving it on its Unix socket and, behind the bearer token,
on TCP. The figures of real rollouts on the testbed are checked in tests/test_rollout.py."""

from __future__ import annotations

import json
import platform
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator import __version__
from orchestrator.core.states import DeploymentState
from orchestrator.daemon.metrics import Metrics
from orchestrator.daemon.store import Store, open_store
from tests.daemons import ECHO, Daemon, tcp_config, write_config
from tests.specs import LOCK, stub_spec


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "state.sqlite3")
    yield s
    s.close()


def value(text: str, series: str) -> float:
    found = re.search("^" + re.escape(series) + r" ([0-9.e+-]+)$", text, re.M)
    assert found, f"{series} not in:\n{text}"
    return float(found.group(1))


def event(deployment: str, name: str, **fields: object) -> dict[str, object]:
    return {"deployment": deployment, "event": name, "host": None, "step": None,
            "status": None, "duration_ms": None, **fields}


def test_each_figure_comes_from_its_events_and_host_status_from_the_store(store: Store) -> None:
    store.create_deployment("d1", "fraud", {"name": "fraud"})
    store.transition_deployment("d1", DeploymentState.RUNNING)
    metrics = Metrics(store)  # seeded: one running deployment already in the store
    text = metrics.render().decode()
    assert value(text, 'orchestrator_deployments{state="running"}') == 1
    for e in (
        event("d1", "step", host="h1", step="stage", status="ok", duration_ms=1500),
        event("d1", "step", host="h1", step="verify", status="ok", duration_ms=800,
              p50_ms=2.0, p95_ms=4.0, p99_ms=9.0),
        event("d1", "step", host="h2", step="verify", status="failed", duration_ms=300),
        event("d1", "step", host="h2", step="verify", status="started"),  # an intent: nothing
        event("d1", "recovery", host="h3", step="rollback", status="ok"),
        event("d1", "recovery", host="h3", step="rollback", status="failed"),  # not counted
        event("d1", "reverify", host="h1", status="degraded", app="fraud"),
        event("d1", "reverify.rollback", host="h1", status="ok", app="fraud"),
        event("d1", "deployment", status="rolled_back", **{"from": "running"}),
        event("d1", "deployment", status="interrupted"),  # a note, not a state
    ):
        metrics.observe(e)
    store.record_host("h1", "degraded", ["driver changed"], None)
    store.record_host("h2", "healthy", [], None)
    text = metrics.render().decode()
    assert value(text, 'orchestrator_deployments{state="running"}') == 0
    assert value(text, 'orchestrator_deployments{state="rolled_back"}') == 1
    assert value(text, 'orchestrator_step_duration_seconds_count{status="ok",step="stage"}') == 1
    assert value(text, 'orchestrator_step_duration_seconds_sum{status="ok",step="stage"}') == 1.5
    assert value(text, 'orchestrator_step_duration_seconds_bucket{le="1.0",status="ok",'
                       'step="verify"}') == 1
    assert value(text, 'orchestrator_verifications_total{app="fraud",kind="deploy",'
                       'result="passed"}') == 1
    assert value(text, 'orchestrator_verifications_total{app="fraud",kind="deploy",'
                       'result="failed"}') == 1
    assert value(text, 'orchestrator_warmup_latency_seconds{app="fraud",host="h1",'
                       'percentile="p99"}') == 0.009
    assert 'host="h2",percentile' not in text  # a failed verify leaves no latency figure
    assert value(text, 'orchestrator_rollbacks_total{app="fraud"}') == 2
    assert value(text, 'orchestrator_verifications_total{app="fraud",kind="reverify",'
                       'result="degraded"}') == 1
    assert value(text, 'orchestrator_host_status{host="h1",status="degraded"}') == 1
    assert value(text, 'orchestrator_host_status{host="h1",status="healthy"}') == 0
    assert value(text, 'orchestrator_host_status{host="h2",status="healthy"}') == 1


def test_exposition_is_clean_and_carries_build_and_process_figures(store: Store) -> None:
    """No `_created` twins, no `quantile` label outside a Summary, the version as build info,
    and the process's own figures (issue 14)."""
    metrics = Metrics(store)
    for e in (event("d1", "step", host="h1", step="verify", status="ok", duration_ms=800,
                    p50_ms=2.0, p95_ms=4.0, p99_ms=9.0, app="fraud"),
              event("d1", "recovery", host="h1", step="rollback", status="ok", app="fraud")):
        metrics.observe(e)
    text = metrics.render().decode()
    assert "_created" not in text
    assert "quantile=" not in text
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert "summary" not in types.values()
    assert value(text, f'orchestrator_build_info{{python="{platform.python_version()}",'
                       f'version="{__version__}"}}') == 1
    assert value(text, "process_resident_memory_bytes") > 1 << 20
    assert value(text, "process_open_fds") > 0
    assert abs(value(text, "process_start_time_seconds") - time.time()) < 24 * 3600
    assert 'python_info{' in text
    assert set(types) >= {"orchestrator_deployments", "orchestrator_step_duration_seconds",
                          "orchestrator_warmup_latency_seconds", "orchestrator_rollbacks_total",
                          "orchestrator_build_info", "process_cpu_seconds_total"}


def test_two_daemons_in_one_process_do_not_share_figures(store: Store, tmp_path: Path) -> None:
    other = open_store(tmp_path / "other.sqlite3")
    try:
        a, b = Metrics(store), Metrics(other)
        a.observe(event("x", "recovery", step="rollback", status="ok", app="fraud"))
        assert "orchestrator_rollbacks_total{" in a.render().decode()
        assert "orchestrator_rollbacks_total{" not in b.render().decode()
    finally:
        other.close()


def test_the_daemon_serves_metrics_on_its_socket_and_on_tcp_only_with_the_token(
        tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    token = "metrics-token-abcdefghijklmnop"
    tcp, port = tcp_config(tmp_path, token)
    daemon = daemons(write_config(tmp_path, ECHO + tcp))
    done = daemon.cli("submit", str(stub_spec(tmp_path / "spec", ["tb-01", "tb-02", "tb-03"],
                                                 name="fraud", lock=LOCK, gpu=None)), "--wait")
    assert done.returncode == 0, done.stderr
    with daemon.http() as unix:
        text = unix.get("/metrics").text
    assert value(text, 'orchestrator_deployments{state="succeeded"}') == 1
    # The echo runner walks 3 hosts through every registered step, each recorded with its duration.
    assert value(text, 'orchestrator_step_duration_seconds_count{status="ok",step="switch"}') == 3
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=30) as http:
        assert http.get(f"{base}/metrics").status_code == 401
        ok = http.get(f"{base}/metrics", headers={"authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/plain")
    assert value(ok.text, 'orchestrator_deployments{state="succeeded"}') == 1

    # Restarted, the daemon seeds deployments by state from its store.
    daemon.stop()
    again = daemons(daemon.config)
    deadline = time.monotonic() + 30
    with again.http() as unix:
        while time.monotonic() < deadline:
            text = unix.get("/metrics").text
            if 'orchestrator_deployments{state="succeeded"} 1.0' in text:
                break
            time.sleep(0.2)
        listing = unix.get("/v1/deployments").json()
    assert value(text, 'orchestrator_deployments{state="succeeded"}') == 1
    assert [d["state"] for d in listing] == ["succeeded"], json.dumps(listing)
