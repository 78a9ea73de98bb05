"""The web UI in headless Chromium against the real daemon (its TCP listener, with a token)
deploying a real scikit-learn model to a 3-host testbed of real sshd hosts: the fleet page,
a rollout's grid filling live, a failing canary's message, abort of a paused rollout, the
refusals (token, Host, Origin), escaping of what hosts report, and no request off the daemon.
With ORCHESTRATOR_UI_SCREENSHOTS=docs/ui the same tests save the pages' screenshots."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from orchestrator.core.hashing import hash_file, hash_path
from orchestrator.testbed import Testbed
from tests.browser import chromium, offline_page, screenshot
from tests.daemons import DEPLOY, Daemon, start, tcp_config, write_config
from tests.specs import LOCK, WHEEL_CACHE, joblib_spec

TOKEN = "ui-token-0123456789abcdef"
APP = "ui-app"
LIVE_S = 300_000  # ms: a rollout on this shared machine (first one builds the venv)
XSS = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2>"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    root = tmp_path_factory.mktemp("uifleet")
    tb = Testbed.up(root, 3, ("h100",) * 3)
    try:
        yield tb
    finally:
        Testbed.down(root)


@pytest.fixture(scope="module")
def daemon(fleet: Testbed,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    base = tmp_path_factory.mktemp("uidaemon")
    tcp, port = tcp_config(base, TOKEN)
    config = write_config(base, f'inventory = "{fleet.inventory_path}"\n'
                                f'known_hosts = "{fleet.known_hosts_path}"\n'
                                f'identity = "{fleet.identity_path}"\n' + DEPLOY + tcp)
    d = start(config, {"ORCHESTRATOR_WHEEL_CACHE": str(WHEEL_CACHE)})
    try:
        with d.http() as http:  # the fleet's facts, as `orchestrator verify` records them
            assert http.post("/v1/hosts/verify", json={"hosts": []}).status_code == 200
        yield d, f"http://127.0.0.1:{port}"
    finally:
        d.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def signed_in(browser: Browser, origin: str, route: str = "#/fleet") -> tuple[Page, list[str]]:
    page, stray = offline_page(browser, origin)
    page.goto(f"{origin}/ui/{route}")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", TOKEN)
    page.click("#login button[type=submit]")
    expect(page.locator("#login")).to_be_hidden()
    return page, stray


def submit(daemon: Daemon, spec: Path) -> str:
    done = daemon.cli("submit", str(spec), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    deployment: str = json.loads(done.stdout)["id"]
    return deployment


def spec(tmp: Path, models: Path, fleet: Testbed, model: str, golden: str, rollout: str) -> Path:
    return joblib_spec(tmp, APP, models / model, models / golden, [h.name for h in fleet.hosts],
                       extra=f"gpu: {{required: false}}\nrollout: {rollout}\n")


def record(daemon: Daemon, deployment: str) -> dict[str, Any]:
    with daemon.http() as http:
        body: dict[str, Any] = http.get(f"/v1/deployments/{deployment}").json()
    return body


@pytest.fixture(scope="module")
def first_release(daemon: tuple[Daemon, str], fleet: Testbed, models_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> str:
    """The app's first release on every host, submitted once (not waited for): the grid test
    watches it fill, and the abort test needs it as the release its canary goes back to (run
    alone, the abort's canary had no previous release, so nothing could be put back and the
    deployment ended `cancelled`)."""
    return submit(daemon[0], spec(tmp_path_factory.mktemp("v1"), models_dir, fleet,
                                  "model.joblib", "golden.npz", "{canary: 1, batch_size: 2}"))


def test_fleet_page_needs_the_token_and_shows_each_host(
        daemon: tuple[Daemon, str], fleet: Testbed, browser: Browser) -> None:
    _, origin = daemon
    page, stray = offline_page(browser, origin)
    page.goto(f"{origin}/ui/")
    expect(page.locator("#login")).to_be_visible()  # no token: the API said 401
    page.fill("#token", "wrong-token")
    page.click("#login button[type=submit]")
    expect(page.locator("#login-error")).to_have_text("wrong token")
    page.fill("#token", TOKEN)
    page.click("#login button[type=submit]")
    rows = page.locator("#fleet tbody tr")
    expect(rows).to_have_count(3)
    for h in fleet.hosts:
        row = page.locator(f'#fleet tr[data-host="{h.name}"]')
        expect(row.locator("td.status")).to_have_text("healthy")
        expect(row).to_contain_text("NVIDIA H100 80GB HBM3")
        expect(row).to_contain_text("550.54.15")
    page.fill("#filter-label", "profile=t4")
    expect(rows).to_have_count(0)
    page.fill("#filter-label", "profile=h100")
    page.select_option("#filter-group", index=1)
    expect(rows).to_have_count(3)
    expect(page.locator("#host-count")).to_have_text("3 of 3 hosts")
    assert stray == []


def test_a_rollout_fills_the_grid_live_and_latency_is_charted(
        daemon: tuple[Daemon, str], fleet: Testbed, browser: Browser,
        first_release: str) -> None:
    d, origin = daemon
    page, stray = signed_in(browser, origin, "#/deployments")
    deployment = first_release
    page.goto(f"{origin}/ui/#/deployments/{deployment}")
    expect(page.locator("#grid")).to_be_visible()
    page.evaluate("window.sameDocument = true")  # gone if anything reloads the page
    first = fleet.hosts[0].name
    expect(page.locator("#state")).to_have_text("succeeded", timeout=LIVE_S)
    for h in fleet.hosts:
        row = page.locator(f'#grid tr[data-host="{h.name}"]')
        expect(row.locator("td.outcome")).to_have_text("succeeded")
        for step in ("probe", "preflight", "stage", "install", "verify", "switch"):
            expect(row.locator(f'td[data-step="{step}"]')).to_have_text("ok")
    batches = {h.name: page.locator(f'#grid tr[data-host="{h.name}"] td.batch').inner_text()
               for h in fleet.hosts}
    assert sorted(batches.values()) == ["batch 1", "batch 1", "canary"], batches
    assert page.evaluate("window.sameDocument") is True
    assert first in batches
    screenshot(page, "deployment")

    page.click("#nav-deployments")
    expect(page.locator(f'#deployments tr[data-deployment="{deployment}"] td.status')
           ).to_have_text("succeeded")
    screenshot(page, "deployments")

    with d.http() as http:  # a re-verification runs the warmup again: a second point
        http.post("/v1/hosts/verify", json={"hosts": []}, timeout=600).raise_for_status()
    page.goto(f"{origin}/ui/#/apps/{APP}")
    charts = page.locator("#charts figure")
    expect(charts).to_have_count(3)
    for h in fleet.hosts:
        chart = page.locator(f'#charts figure[data-host="{h.name}"]')
        expect(chart.locator("svg polyline")).to_have_count(3)  # p50, p95, p99
        expect(chart.locator("svg line.baseline")).to_have_count(3)
        expect(chart.locator("svg circle")).to_have_count(3)  # the deploy's point
        expect(chart.locator("svg rect")).to_have_count(3)  # the re-verification's
        expect(chart.locator("tbody tr")).to_have_count(2)
        expect(chart.locator("tbody tr").first).to_contain_text("32 samples match")
        current = page.locator(f'#releases tr[data-host="{h.name}"][data-state="current"]')
        expect(current).to_have_count(1)
    release = page.locator('#releases tr[data-state="current"] td').nth(1).inner_text()
    page.click("#nav-fleet")  # the re-verification's probe saw the new release on each host
    for h in fleet.hosts:
        expect(page.locator(f'#fleet tr[data-host="{h.name}"]')).to_contain_text(
            f"{APP} {release}")
    screenshot(page, "fleet")
    assert stray == []


def test_a_failing_canary_shows_its_message_and_stops_the_rollout(
        daemon: tuple[Daemon, str], fleet: Testbed, browser: Browser, models_dir: Path,
        tmp_path: Path) -> None:
    d, origin = daemon
    page, stray = signed_in(browser, origin)
    # The v1 model checked against v2's golden outputs: the canary's verify fails.
    deployment = submit(d, spec(tmp_path, models_dir, fleet, "model.joblib", "golden-v2.npz",
                                "{canary: 1, batch_size: 2}"))
    page.goto(f"{origin}/ui/#/deployments/{deployment}")
    expect(page.locator("#state")).to_have_text("failed", timeout=LIVE_S)
    failures = page.locator("#failures li")
    expect(failures).to_have_count(1)
    expect(failures.first).to_contain_text("verify failed: golden")
    canary = failures.first.get_attribute("data-host")
    expect(page.locator("#grid tbody tr")).to_have_count(3)  # the others: never started
    expect(page.locator('#grid td.cell.ok[data-step="stage"]')).to_have_count(1)
    expect(page.locator(f'#grid tr[data-host="{canary}"] td.batch')).to_have_text("canary")
    expect(page.locator('#grid td.batch:text-is("batch 1")')).to_have_count(0)
    screenshot(page, "failed-canary")
    assert stray == []


def test_abort_stops_a_paused_rollout(
        daemon: tuple[Daemon, str], fleet: Testbed, browser: Browser, models_dir: Path,
        tmp_path: Path, first_release: str) -> None:
    d, origin = daemon
    done = d.cli("wait", first_release, timeout=LIVE_S // 1000)  # the release to go back to
    assert done.returncode == 0, done.stdout + done.stderr
    page, stray = signed_in(browser, origin)
    page.on("dialog", lambda dialog: dialog.accept())
    deployment = submit(d, spec(tmp_path, models_dir, fleet, "changed.joblib", "golden-v2.npz",
                                "{canary: 1, batch_size: 1}"))
    page.goto(f"{origin}/ui/#/deployments/{deployment}")
    expect(page.locator('#grid td.batch:text-is("canary")')).to_have_count(1, timeout=LIVE_S)
    page.click("#action-pause")
    expect(page.locator("#state")).to_have_text("paused", timeout=LIVE_S)
    expect(page.locator("#action-resume")).to_be_enabled()
    page.click("#action-abort")
    expect(page.locator("#state")).to_have_text("rolled_back", timeout=LIVE_S)
    end = record(d, deployment)
    assert end["state"] == "rolled_back" and end["result"]["reason"].startswith("aborted"), end
    expect(page.locator('#grid td.batch:text-is("batch 1")')).to_have_count(0)
    expect(page.locator("#recoveries li")).not_to_have_count(0)  # the canary put back
    page.goto(f"{origin}/ui/#/apps/{APP}")  # the canary's new release: undone, v1 current
    expect(page.locator('#releases tr[data-state="undone"]')).to_have_count(1)
    # The manifests as the hosts hold them: v1 current everywhere, its hashes and the facts
    # it was deployed on; the canary's aborted release kept but no rollback target.
    expected = {"model_sha256": hash_path(models_dir / "model.joblib"),
                "lock_sha256": hash_file(LOCK),
                "golden_sha256": hash_file(models_dir / "golden.npz")}
    for h in fleet.hosts:
        current = page.locator(f'#manifests tr[data-host="{h.name}"][data-state="current"]')
        expect(current).to_have_count(1, timeout=60_000)
        for key, digest in expected.items():
            expect(current.locator(f'td[data-key="{key}"] code')).to_have_attribute(
                "title", digest)
        expect(current.locator('td[data-key="env_hash"] code')).to_have_attribute(
            "title", re.compile(r"^[0-9a-f]{16,64}$"))
        expect(current.locator('span[data-fact="driver"]')).to_have_text("driver 550.54.15")
        expect(current).to_contain_text("NVIDIA H100 80GB HBM3")
        expect(current).to_contain_text("none")  # a CPU deployment: no GPU placed
    expect(page.locator("#manifests tbody tr")).to_have_count(4)
    aborted = page.locator('#manifests tbody tr:not([data-state="current"])')
    expect(aborted).to_have_count(1)  # on the canary, dropped from the rollback targets
    expect(aborted).not_to_have_attribute("data-state", "previous-good")
    screenshot(page, "app")
    assert stray == []


def test_refusals_token_host_origin(daemon: tuple[Daemon, str]) -> None:
    _, origin = daemon
    auth = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=origin, timeout=30) as http:
        page = http.get("/ui/")  # the page holds no data: served without the token
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "<script>" not in page.text.replace(
            '<script type="module" src="static/app.js"></script>', "")
        for path in ("/ui/api/fleet", "/v1/hosts", "/ui/api/meta"):
            assert http.get(path).status_code == 401
            assert http.get(path, headers={"authorization": "Bearer nope"}).status_code == 401
            assert http.get(path, headers=auth).status_code == 200
        foreign = {"host": "attacker.example"}
        assert http.get("/ui/", headers=foreign).status_code == 403
        assert http.get("/ui/api/fleet", headers={**auth, **foreign}).status_code == 403
        for cross in ({"origin": "http://attacker.example"}, {"origin": "null"},
                      {"sec-fetch-site": "cross-site"}):
            answer = http.post("/v1/deployments/x/abort", headers={**auth, **cross})
            assert answer.status_code == 403 and "cross-site" in answer.json()["error"]
        same = http.get("/ui/api/meta", headers={**auth, "origin": origin})
        assert same.status_code == 200
        assert http.get("/ui/static/../api.py").status_code in (401, 404)


def test_what_a_host_reports_is_shown_as_text(
        daemon: tuple[Daemon, str], fleet: Testbed, browser: Browser) -> None:
    d, origin = daemon
    host = fleet.hosts[2]
    saved = host.profile_path.read_text()
    profile = json.loads(saved)
    profile["gpus"][0]["name"] = XSS
    try:
        host.profile_path.write_text(json.dumps(profile))
        with d.http() as http:
            http.post("/v1/hosts/verify", json={"hosts": [host.name]}).raise_for_status()
        page, stray = signed_in(browser, origin)
        row = page.locator(f'#fleet tr[data-host="{host.name}"]')
        expect(row).to_contain_text(XSS)  # the characters themselves, as text
        assert row.locator("img").count() == 0 and row.locator("script").count() == 0
        assert page.evaluate("window.pwned") is None
        assert stray == []
    finally:
        host.profile_path.write_text(saved)
        with d.http() as http:
            http.post("/v1/hosts/verify", json={"hosts": [host.name]}).raise_for_status()
