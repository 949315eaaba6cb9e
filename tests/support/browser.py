"""Debian's Chromium, driven by Playwright for Python, for the dashboard's end-to-end tests.

`make browser` installs the browser (apt's `chromium`); Playwright's own browser download is
never used (`playwright install` is not run: it fetches a build of its own from the network). The
launch flags keep Chromium off the network (background networking, component updates, sync), as a
closed test machine needs, and --no-sandbox lets it run as root in a container.

Outside CI a test skips when Playwright or the browser is missing; with CI=true it fails instead,
so the dashboard's tests can never silently not run (as tests/support/pg.py does for PostgreSQL).
Screenshots go to $MSGSPOOL_SCREENSHOTS when it is set (CI keeps them as artifacts), else into the
test's own temporary directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("MSGSPOOL_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (make browser)"
    return None


def require() -> None:
    why = missing()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}, and CI must run the dashboard's browser tests")
    pytest.skip(why)


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium (playwright.async_api.Browser), closed afterwards."""
    require()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


def screenshots(tmp_path: Path) -> Path:
    where = Path(os.environ["MSGSPOOL_SCREENSHOTS"]) if os.environ.get("MSGSPOOL_SCREENSHOTS") else tmp_path / "shots"
    where.mkdir(parents=True, exist_ok=True)
    return where
