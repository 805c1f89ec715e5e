"""Fixtures for the web app tests: a launched app.py on a free loopback port, gradio_client, and a
headless Debian Chromium driven by Playwright (Playwright's own browser download is not used)."""

from __future__ import annotations

from pathlib import Path

import pytest

from uihelpers import CHROMIUM, CHROMIUM_ARGS, running_app


@pytest.fixture(scope="session")
def app_url():
    """One app for the whole session, with a short line (1 waiting) so 'busy' is cheap to reach."""
    with running_app("--max-waiting", "1", log_name="shared") as url:
        yield url


@pytest.fixture()
def client(app_url):
    from gradio_client import Client
    return Client(app_url, verbose=False)


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
