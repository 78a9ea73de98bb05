"""/docs in a real browser (Debian's Chromium, driven by Playwright) against the real daemon
over TCP: the page renders every operation of /openapi.json, and no request leaves the
daemon's origin (what the page would do on a controller with no internet)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.daemons import ECHO, Daemon, tcp_config, write_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "docs-browser-token-0123456789"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                    "(Makefile system-deps installs it)")
def test_docs_render_in_chromium_from_the_daemon_alone(
        tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    from playwright.sync_api import Route, sync_playwright

    tcp, port = tcp_config(tmp_path, TOKEN)
    daemons(write_config(tmp_path, ECHO + tcp))
    base = f"http://127.0.0.1:{port}"
    schema = httpx.get(f"{base}/openapi.json", headers={"authorization": f"Bearer {TOKEN}"},
                       timeout=30).json()
    operations = sum(len(item) for item in schema["paths"].values())
    requested: list[str] = []
    elsewhere: list[str] = []

    def route(r: Route) -> None:
        url = r.request.url
        requested.append(url)
        if url.startswith(base + "/"):
            r.continue_()
        else:
            elsewhere.append(url)
            r.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.route("**/*", route)
            page.goto(f"{base}/docs")
            page.wait_for_selector("#token-form:not([hidden])")  # TCP: the page asks
            page.fill("#token", TOKEN)
            page.click("#token-form button")
            page.wait_for_selector("body[data-rendered]", timeout=30_000)
            rendered = page.get_attribute("body", "data-rendered")
            ops = page.locator("section.op").count()
            text = page.inner_text("body")
        finally:
            browser.close()
    assert elsewhere == []
    assert {u.removeprefix(base) for u in requested} >= {
        "/docs", "/docs/assets/apidocs.js", "/docs/assets/apidocs.css", "/openapi.json"}
    assert rendered == str(operations) and ops == operations
    assert "/v1/deployments/{deployment}/rollback" in text
    assert "Authentication (bearerAuth, http bearer)" in text
    assert "ErrorBody" in text and "DeploymentDetail" in text
