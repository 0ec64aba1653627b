"""Fixtures of the web page's tests: the jobs app with a real Worker and the fake upstreams, the
page served on a free loopback port, and Debian's headless Chromium driven by Playwright."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from pydantic import SecretStr

from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.operate.web import OperatorServer
from tests.jobs.conftest import Fakes, fakes, running, settings_for  # noqa: F401

#: The admin token of the served page.
TOKEN = "test-admin-token-0123456789"
#: Chromium's switches for a closed network: no background connections it would try at start.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Milliseconds Playwright waits for what a test expects to appear on the page.
EXPECT_TIMEOUT = 20_000


@dataclass
class Served:
    """The jobs app, its running worker and its page."""

    app: SoulspotJobs
    server: OperatorServer

    @property
    def url(self) -> str:
        return self.server.url

    def post(self, path: str, **kwargs) -> httpx.Response:
        """A POST made by a script (no browser, no cookie)."""
        return httpx.post(f"{self.url}{path}", timeout=10, **kwargs)


def serve(app: SoulspotJobs) -> Iterator[OperatorServer]:
    server = OperatorServer(app, "127.0.0.1", 0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def served(redis_url: str, fakes: Fakes) -> Iterator[Served]:  # noqa: F811
    """The jobs app on the test Redis and the fakes, a real Worker, and the page with an admin
    token."""
    settings = settings_for(redis_url, fakes).model_copy(
        update={"admin_token": SecretStr(TOKEN)}
    )
    app = SoulspotJobs(settings)
    with running(app):
        yield from (Served(app, server) for server in serve(app))


@pytest.fixture
def read_only(redis_url: str) -> Iterator[Served]:
    """The page of a deployment without SOULSPOT_ADMIN_TOKEN (no worker)."""
    from soulspot_jobs.settings import load_settings

    app = SoulspotJobs(load_settings(REDIS_URL=redis_url))
    try:
        yield from (Served(app, server) for server in serve(app))
    finally:
        app.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium (``apt-get install chromium``), headless; ``.ci/run`` installs it.

    Module-scoped: Playwright's sync API keeps an event loop running in this thread while it
    is open, and a later test's ``asyncio.run`` would find it."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("no chromium on PATH: install Debian's package (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies) and page, closed after the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(EXPECT_TIMEOUT)
    expect.set_options(timeout=EXPECT_TIMEOUT)
    opened = context.new_page()
    yield opened
    context.close()
