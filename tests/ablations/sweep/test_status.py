"""Where a trial stands: the one set of rules the reconciler and `status` share."""

import pytest
from optuna.trial import TrialState

from ablations.sweep.ledger import Attempt, Ticket
from ablations.sweep.status import classify_attempts

T = Ticket("0123456789ab-s0", {}, "0123456789ab", 0, "x", {}, ["s"])
W, R, C, F = TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.FAIL


def attempts(*story):
    return [Attempt(i, state, T, kind=kind) for i, (state, kind) in enumerate(story)]


@pytest.mark.parametrize(
    ("story", "max_retries", "state"),
    [
        ((), 1, "pending"),
        (((W, None),), 0, "pending"),
        (((R, None),), 0, "running"),
        (((C, None),), 0, "done"),
        (((F, "crash"), (C, None)), 0, "done"),
        (((F, "crash"),), 1, "pending"),  # one retry left
        (((F, "crash"), (F, "oom")), 1, "failed"),  # crash and oom count
        (((F, "stopped"), (F, "lost"), (F, "stopped")), 0, "pending"),  # stopped by us / host lost: no retry used
        (((F, "config"),), 5, "failed"),  # a configuration error is never retried
        (((F, "crash"), (W, None)), 0, "pending"),  # queued again by an earlier, more generous sweep
    ],
)
def test_classify(story, max_retries, state):
    assert classify_attempts(attempts(*story), max_retries) == state
