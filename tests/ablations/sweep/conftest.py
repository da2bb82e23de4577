"""Fixtures of the sweep tests."""

import signal

import pytest


@pytest.fixture(autouse=True)
def _restore_signals():
    """A sweep run in-process installs its Ctrl-C/SIGTERM handlers: each test gets the ones it started with back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
