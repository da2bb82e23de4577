"""The harness's two error types, imported from one place: the user's error (`SenetError`, from senet_core: one line,
exit code 2) and a store's outage (`StoreUnavailable`: one line, exit code 75, the same command resumes later)."""

from senet_core.errors import SenetError

__all__ = ["SenetError", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """The ledger's database stayed unreachable for longer than the patience: a condition of the harness, not of
    the trial or the user's input (never a `SenetError`, which a worker would class `config`)."""

    exit_code = 75  # sysexits.h EX_TEMPFAIL: a temporary failure, try again later
