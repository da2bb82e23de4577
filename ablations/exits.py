"""How a senet-ablate process ends once its work is recorded: at once.

Python's own teardown of a process that imported torch and MLflow takes about a second (modules and objects freed
one by one, in a process that is about to end anyway), and a sweep would pay it in its controller and in every
worker it starts. The command line and the workers end with `exit_now` instead, after every write they make is
committed: the ledger's transactions, MLflow's synchronous client, files closed by their `with` blocks. What must
still be closed registers with `at_exit` (the ledger: the last connection to a SQLite ledger folds its write-ahead
log back into the file, which a reader of a read-only folder relies on).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

_CLOSERS: list[Callable[[], None]] = []


def at_exit(close: Callable[[], None]) -> None:
    """Have `exit_now` call `close` first (registered once, at import, by the module that owns the resource)."""
    _CLOSERS.append(close)


def exit_now(code: int) -> NoReturn:
    """Run the closers, flush the logs and the standard streams, then end the process with `code`, skipping the
    interpreter's teardown."""
    for close in reversed(_CLOSERS):
        with contextlib.suppress(Exception):  # ending anyway: a closer that fails must not keep the process alive
            close()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing left to say
            stream.flush()
    os._exit(code)
