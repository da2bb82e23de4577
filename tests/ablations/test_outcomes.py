"""The outcome vocabulary: each ending's behaviour, and members that are their stored strings everywhere."""

import json

import pytest

from ablations.outcomes import CellState, Ending, RunStatus, Standing


@pytest.mark.parametrize(
    ("ending", "uses_retry", "final", "run_status"),
    [
        (Ending.FINISHED, False, False, "FINISHED"),
        (Ending.DIVERGED, False, False, "FINISHED"),
        (Ending.OOM, True, False, "FAILED"),
        (Ending.CRASH, True, False, "FAILED"),
        (Ending.CONFIG, False, True, "FAILED"),
        (Ending.STOPPED, False, False, "KILLED"),
        (Ending.LOST, False, False, "KILLED"),
    ],
)
def test_each_ending_says_whether_it_uses_a_retry_ends_the_trial_and_how_its_run_ends(
    ending, uses_retry, final, run_status
):
    assert (ending.uses_retry, ending.final, ending.run_status) == (uses_retry, final, run_status)
    assert ending.result == (run_status == "FINISHED")


def test_members_are_the_strings_stored_before():
    assert [str(s) for s in Standing] == ["done", "running", "failed", "pending"]  # the order `status` prints
    assert [str(s) for s in CellState] == ["finished", "diverged", "failed", "running", "pending"]
    assert [s.value for s in RunStatus] == ["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"]
    assert f"{Standing.DONE:8s}|{Ending.OOM}" == "done    |oom" and json.dumps([Ending.CRASH]) == '["crash"]'
    assert Ending("lost") is Ending.LOST and Ending.LOST == "lost" and {"lost": 1}[Ending.LOST] == 1
    assert [s for s in Standing if s.settled] == [Standing.DONE, Standing.FAILED]
