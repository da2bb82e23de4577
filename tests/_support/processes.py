"""`senet-ablate` as a child process: the environment it gets, polling for what it does, and local ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ablations.paths import with_python_path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests/_support/processes.py -> tests -> root
# Child processes see neither the developer's tracking server nor ledger, only what a test gives them, and the
# suite's own cache folder (set by tests/conftest.py, which pytest loads before any module that imports this).
ENV = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SENET_ABLATE_STORAGE")}
ENV = with_python_path(ENV, ROOT)


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`senet-ablate ARGS` as its own process (stdout and stderr piped)."""
    return subprocess.Popen([sys.executable, "-m", "ablations.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**ENV, **(env or {})})  # fmt: skip


def wait_for(predicate: Any, timeout: float = 120.0, every: float = 0.2) -> Any:
    """Poll until `predicate()` is truthy (an exception counts as not yet) and return its value."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            value = predicate()
        except Exception:  # a file being replaced at this very moment
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
