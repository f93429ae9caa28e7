"""Playwright (sync API) driving Debian's chromium against pytest-django's ``live_server``.

Playwright's sync API runs an event loop in the test thread, which trips Django's
async-unsafe check for the ORM calls the tests make; the check is switched off here.
Screenshots go to ``test-output/browser/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.availability import unavailable

CHROMIUM = os.environ.get("FEDSILO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """A headless chromium per test module (Playwright's loop ends with it); skipped when missing.

    Django's async-unsafe check is off only while it runs, so no other test (nor a process a
    test starts) inherits the setting.
    """
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        unavailable(
            f"no chromium at {CHROMIUM}{f' (found {found}: set FEDSILO_CHROMIUM)' if found else ''}; "
            "install it with `apt-get install -y chromium`"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed: pip install the dev extras")
    with pytest.MonkeyPatch.context() as env, sync_playwright() as p:
        env.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser) -> Iterator:
    """Open pages in fresh browser contexts (one per person); all are closed afterwards."""
    contexts = []

    def make():
        context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
        context.set_default_timeout(20_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


@pytest.fixture(scope="session")
def shots(test_output: Path) -> Path:
    folder = test_output / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
