"""The web UI's read models on a real SQLite store (orchestrator/daemon/ui/views.py), its SSE
framing (ui/sse.py) and the guard's cross-site check: what the browser tests
(tests/test_webui.py) see through pages, here case by case."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.inventory import load_inventory
from orchestrator.daemon.events import make_event
from orchestrator.daemon.guard import TcpGuard, _cross_site, _public
from orchestrator.daemon.store import Store, open_store
from orchestrator.daemon.ui import sse, views

LATENCY: dict[str, Any] = {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "state.sqlite3")
    yield s
    s.close()


def emit(store: Store, deployment: str, event: str, *, host: str | None = None,
         step: str | None = None, status: str | None = None, **details: Any) -> None:
    store.append_event(make_event(deployment, event, host=host, step=step, status=status,
                                  duration_ms=None, level="info", details=details))


def deploy(store: Store, deployment: str, release: str, outcome: str, *,
           undone: bool = False) -> None:
    store.create_deployment(deployment, "app", {"targets": ["h1"]})
    emit(store, deployment, "deployment.started", status="started", release_id=release)
    emit(store, deployment, "step", host="h1", step="verify", status="ok", golden_samples=32,
         **LATENCY)
    emit(store, deployment, "host.finished", host="h1", status=outcome)
    if undone:
        emit(store, deployment, "recovery", host="h1", step="undo", status="ok")
    time.sleep(0.002)  # deployments are listed by creation time


def test_fleet_joins_store_and_inventory_and_passes_unknown_gpu_facts_as_data(
        store: Store, tmp_path: Path) -> None:
    inv = tmp_path / "inventory.yaml"
    inv.write_text("hosts:\n"
                   "  h1: {address: 127.0.0.1, user: d, deploy_root: /srv, labels: {zone: a}}\n"
                   "  h2: {address: 127.0.0.2, user: d, deploy_root: /srv}\n"
                   "groups:\n  web: [h1]\n")
    facts = {"nvml": {"driver_version": "550.54.15", "cuda_driver_version": "12.4",
                      "error": None},
             "gpus": [{"index": 0, "name": "<b>x</b>", "uuid": "GPU-1", "ecc_errors": 3}],
             "releases": {"app": {"current": "r1"}}}
    store.record_host("h1", "degraded", ["driver changed"], facts)
    data = views.fleet(store, load_inventory(inv))
    h1, h2 = data["hosts"]
    assert data["groups"] == ["web"]
    assert h1["status"] == "degraded" and h1["reasons"] == ["driver changed"]
    assert (h1["driver"], h1["cuda"], h1["labels"], h1["groups"]) == (
        "550.54.15", "12.4", {"zone": "a"}, ["web"])
    assert h1["gpus"][0]["name"] == "<b>x</b>" and h1["gpus"][0]["extra"] == {"ecc_errors": 3}
    assert h1["releases"] == {"app": "r1"}
    assert h2["status"] == "unknown" and h2["gpus"] == [] and h2["verified"] is None
    assert h1["reverified"] == {} and (data["total"], data["more"]) == (2, False)


def test_fleet_pages_and_each_apps_last_reverification_per_host(store: Store) -> None:
    for n in range(5):
        store.record_host(f"h{n}", "healthy", [], {"releases": {"a": {"current": f"r{n}"}}})
    store.record_app_result("h1", "a", "degraded", ["driver changed: 550 -> 560"])
    store.record_app_result("h1", "b", "healthy", [])  # re-verified, no longer in the probe
    store.record_app_result("h4", "a", "healthy", [])
    first = views.fleet(store, None, limit=2)
    assert [h["host"] for h in first["hosts"]] == ["h0", "h1"]
    assert (first["total"], first["more"]) == (5, True)
    h1 = first["hosts"][1]
    assert h1["releases"] == {"a": "r1"}
    assert {app: (r["status"], r["reasons"]) for app, r in h1["reverified"].items()} == {
        "a": ("degraded", ["driver changed: 550 -> 560"]), "b": ("healthy", [])}
    assert isinstance(h1["reverified"]["a"]["ts"], float)
    rest = views.fleet(store, None, after="h1")
    assert [h["host"] for h in rest["hosts"]] == ["h2", "h3", "h4"] and not rest["more"]
    assert rest["hosts"][2]["reverified"]["a"]["status"] == "healthy"
    assert rest["hosts"][0]["reverified"] == {}
    assert views.fleet(store, None, after="h4", limit=2)["hosts"] == []


def test_app_history_latency_points_and_release_states(store: Store) -> None:
    deploy(store, "d1", "r1", "succeeded")
    deploy(store, "d2", "r2", "succeeded")
    emit(store, "d2", "reverify", host="h1", status="healthy", release_id="r2",
         **{k: v * 2 for k, v in LATENCY.items()})
    emit(store, "d2", "reverify", host="h1", status="skipped", release_id="r2")  # no warmup
    deploy(store, "d3", "r3", "rolled_back")
    deploy(store, "d4", "r4", "succeeded", undone=True)
    history = views.app_history(store, "app")
    points = history["latency"]["h1"]
    assert [(p["kind"], p["release"]) for p in points] == [
        ("deploy", "r1"), ("deploy", "r2"), ("reverify", "r2"), ("deploy", "r3"),
        ("deploy", "r4")]
    assert points[2]["p99_ms"] == 6.0
    assert (points[0]["golden"], points[2]["golden"]) == ("32 samples match", "healthy")
    assert history["results"] == {}
    store.record_app_result("h1", "app", "degraded", ["driver changed"])
    assert views.app_history(store, "app")["results"] == {
        "h1": {"status": "degraded", "reasons": ["driver changed"]}}
    states = [(r["release"], r["state"]) for r in history["releases"]["h1"]]
    assert states == [("r4", "undone"), ("r3", "bad"), ("r2", "current"),
                      ("r1", "rollback target")]


def test_sse_frames_one_message_per_event_whatever_its_text() -> None:
    line = json.dumps({"seq": 7, "event": "step", "reason": "a\n\ndata: forged"}).encode()
    framed = sse.frame(line + b"\n")
    assert framed.startswith(b"id: 7\nevent: step\ndata: {") and framed.endswith(b"}\n\n")
    assert framed.count(b"\n\n") == 1  # JSON escaped the newlines: nothing forged
    odd = sse.frame(json.dumps({"event": "x\ny", "after": 3}).encode())
    assert odd.startswith(b"event: message\ndata: ") and b"id:" not in odd


@pytest.mark.parametrize(("headers", "refused"), [
    ({}, False),
    ({"origin": "http://127.0.0.1:8470"}, False),
    ({"origin": "https://127.0.0.1:8470"}, False),
    ({"origin": "http://127.0.0.1:9999"}, True),
    ({"origin": "http://evil.example"}, True),
    ({"origin": "null"}, True),
    ({"sec-fetch-site": "same-origin"}, False),
    ({"sec-fetch-site": "cross-site"}, True),
])
def test_cross_site_requests_are_named(headers: dict[str, str], refused: bool) -> None:
    assert (_cross_site(headers, "127.0.0.1:8470") is not None) is refused


@pytest.mark.parametrize(("method", "path", "public"), [
    ("GET", "/ui/", True), ("GET", "/ui", True), ("HEAD", "/ui/static/app.js", True),
    ("POST", "/ui/", False), ("GET", "/ui/api/fleet", False),
    ("GET", "/ui/static/a/b.js", False), ("GET", "/v1/hosts", False),
    ("GET", "/ui/static/0123456789abcdef/app.js", True),  # a versioned file
    ("GET", "/ui/static/0123456789abcdef/a/b.js", False),
])
def test_only_the_page_and_its_files_are_public(method: str, path: str, public: bool) -> None:
    assert _public({"method": method, "path": path}) is public


@pytest.mark.parametrize(("headers", "status"), [
    ({"host": "orchestrator"}, None),  # the CLI: no browser header, any Host
    ({"host": "localhost:8470", "sec-fetch-site": "same-origin"}, None),  # through a tunnel
    ({"host": "rebound.example:8470", "sec-fetch-site": "same-origin"}, 403),  # DNS rebinding
    ({"host": "localhost:8470", "origin": "http://evil.example"}, 403),
])
def test_on_the_unix_socket_a_browser_must_name_an_allowed_host(
        headers: dict[str, str], status: int | None) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    guard = TcpGuard(app, token=None, allowed_hosts=("localhost", "127.0.0.1"),
                     max_body_bytes=1 << 20)
    scope = {"type": "http", "method": "GET", "path": "/v1/hosts", "server": ("/run/o.sock", None)}
    problem = guard._problem(scope, headers, 1 << 20)
    assert (problem and problem[0]) == status, problem
