"""Browser tests: the real system with its Gradio UI, used through a real headless Chromium.

`ui_server` is `dynalign serve` WITH the UI on free ports (tests/helpers/live_server.py, the same
helper as tests/integration), ready when both the gateway's /health and the UI's page answer, and
stopped with a check that Ctrl-C ends every process of it. It lives for one test module, not the
session: `make test` runs tests/integration after this folder, and an idle server would hold
gigabytes of memory all that time.

`browser` is a fresh headless Chromium per test (tests/helpers/browser.py: Debian's chromium and
chromedriver, which `make test` installs; nothing is downloaded). Each test leaves a screenshot of
its last page in tests/browser/artifacts/<test name>.png (git-ignored).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from helpers.browser import CHROMEDRIVER, CHROMIUM, ChatPage, new_driver
from helpers.live_server import resolve_base_model, run_server

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="session")
def browser_binaries() -> tuple[str, str]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"no {' or '.join(missing)}: the browser tests need Debian's chromium and "
                    "chromium-driver (`make test` installs them, or: apt-get install chromium "
                    "chromium-driver)", pytrace=False)
    return CHROMIUM, CHROMEDRIVER


@pytest.fixture(scope="session")
def base_model(tmp_path_factory) -> str:
    return resolve_base_model(tmp_path_factory)


@pytest.fixture(scope="module")
def ui_server(browser_binaries, base_model, tmp_path_factory):
    """`dynalign serve` with its UI (merged swap mode, the CPU default), for one test module."""
    yield from run_server(tmp_path_factory, base_model, "merged", ui=True)


@pytest.fixture
def browser(request, browser_binaries, monkeypatch):
    """A fresh headless Chromium; a screenshot of its page is saved when the test ends."""
    monkeypatch.setenv("SE_OFFLINE", "true")  # belt and braces: Selenium Manager is never run
    driver = new_driver(*browser_binaries)
    try:
        yield driver
    finally:
        try:
            ARTIFACTS.mkdir(exist_ok=True)
            name = re.sub(r"[^\w.-]+", "_", request.node.name)
            driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
        finally:
            driver.quit()


@pytest.fixture
def chat(browser, ui_server) -> ChatPage:
    """The chat page of the session's server, opened and rendered."""
    return ChatPage(browser, ui_server.ui_url).open()
