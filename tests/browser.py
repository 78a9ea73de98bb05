"""Headless Chromium (Debian's, driven by Playwright) for the web UI's tests, with the network
cut: every request not to the daemon under test is aborted and remembered.

    with chromium() as browser:
        page, stray = offline_page(browser, "http://127.0.0.1:PORT")
        ...
        assert stray == []

`ORCHESTRATOR_UI_SCREENSHOTS=DIR` makes `screenshot(page, name)` save DIR/name.png (README
links docs/ui/*.png, made so); without it, no file is written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, Page, Route, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def offline_page(browser: Browser, origin: str) -> tuple[Page, list[str]]:
    """A new page that can reach `origin` only; the list fills with what it tried elsewhere."""
    stray: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()

    def gate(route: Route) -> None:
        url = route.request.url
        if url == origin or url.startswith(origin + "/"):
            route.continue_()
        else:
            stray.append(url)
            route.abort()

    context.route("**/*", gate)
    return page, stray


def screenshot(page: Page, name: str) -> None:
    folder = os.environ.get("ORCHESTRATOR_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)
