"""Headless Chromium for the e2e cases: a page's DOM after its scripts ran, and a screenshot of it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

WINDOW = "1600,1000"


def chromium() -> str:
    """The browser's command, or a skip saying how to get it (`make browser`)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("no chromium on this machine; `make browser` installs it where apt-get is")


def _run(url: str, *args: str, budget_ms: int, window: str = WINDOW) -> str:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={window}",
           f"--virtual-time-budget={budget_ms}", *args, url]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True).stdout


def dom(url: str, budget_ms: int = 15000) -> str:
    """The page's DOM once `budget_ms` of virtual time let its scripts and requests run."""
    return _run(url, "--dump-dom", budget_ms=budget_ms)


def screenshot(url: str, png: Path, budget_ms: int = 15000, window: str = WINDOW) -> Path:
    png.parent.mkdir(parents=True, exist_ok=True)
    _run(url, f"--screenshot={png}", budget_ms=budget_ms, window=window)
    assert png.read_bytes().startswith(b"\x89PNG"), png
    return png
