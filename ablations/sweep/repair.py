"""MLflow follows the ledger: a COMPLETE attempt's run becomes FINISHED (created from the result the ledger holds, or
`result.json`, if the worker never got to MLflow), any other run of the sweep's trials that is not live ends KILLED
or FAILED with the reason. Any number of hosts may repair at once: the run of an attempt is recorded in the ledger
by a conditional write, so concurrent repairs converge on one run and delete the ones they made in vain.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from ablations.config import flatten
from ablations.outcomes import Ending, RunStatus
from ablations.paths import run_dir
from ablations.sweep.ledger import Attempt, Ledger, State
from ablations.sweep.reconcile import Ended
from ablations.tracking import Tag, Tracker, code_tags, environment_tags
from ablations.training.result import RunResult, read_result


def parent_run(tracker: Tracker, ledger: Ledger, study: str, description: str, tags: dict[str, str]) -> str:
    """The study's parent run, which a resumed sweep attaches to: the one the ledger holds, else the one MLflow has
    (a ledger from before parents were recorded), else a new one. Sweeps starting together each make one and claim
    it in the ledger: the first claim wins, the others delete theirs."""
    held = ledger.parent(study)
    if held is None or not tracker.is_active(held):
        found = tracker.find_parent(study)
        candidate = found if found is not None and found != held else tracker.make_parent(study, description, tags)
        won = ledger.claim_parent(study, candidate, stale=held)
        if won != candidate and candidate != found:
            tracker.client.delete_run(candidate)
        held = won
    tracker.resume_parent(held, tags)
    return held


def repair(
    tracker: Tracker,
    ledger: Ledger,
    attempts: Iterable[Attempt],
    keys: set[str],
    results: Path,
    study: str,
    parent_id: str | None,
    code: dict[str, str],
    log: Callable[[str], None],
) -> int:
    """Make MLflow agree with the ledger for `keys`; returns how many runs were changed or created.

    - a COMPLETE attempt's run is FINISHED, with its summary (from the ledger's copy of the result, or
      `result.json`, when the worker died before logging it); an attempt with no run gets one, built from the
      result, unless a concurrent repair recorded its own first (then ours is deleted);
    - a run whose attempt is not RUNNING (ended, superseded, or never recorded) and that is still RUNNING ends
      KILLED, or FAILED for a failure of the trial itself, with the reason in its `ended_by` tag.
    """
    attempts = [a for a in attempts if a.key in keys]
    runs = tracker.trial_runs(keys)
    by_run = {r.run_id: r for r in runs}
    by_attempt_id = {r.tags.get(Tag.ATTEMPT_ID): r for r in runs}
    changed = 0
    live = {str(a.trial_id) for a in attempts if a.state in (State.RUNNING, State.WAITING)}
    for a in attempts:
        if a.state != State.COMPLETE:
            continue
        run = by_run.get(a.run_id or "") or by_attempt_id.get(str(a.trial_id))
        if run is not None and run.status == RunStatus.FINISHED and run.outcome:
            continue
        result = RunResult(**a.result) if a.result else read_result(run_dir(results, a.key))
        if run is None:
            if result is None:
                log(f"repair: {a.key} is COMPLETE but has no run and no result to rebuild one from")
                continue
            run_id = tracker.start_trial(
                study, parent_id, trial_info(a), {**environment_tags("unknown"), **code_tags(code)}
            )
            if ledger.set_run_id(a.trial_id, run_id) != run_id:  # another repair's run was recorded first
                tracker.client.delete_run(run_id)
                continue
            for m in result.history:
                tracker.log_epoch(run_id, int(m["epoch"]), m)
        else:
            run_id = run.run_id
        if run is None or not run.outcome:
            if result is not None:
                tracker.log_summary(run_id, result.summary, Ending(result.status))
            elif a.outcome:
                tracker.log_summary(run_id, {}, a.outcome)
        tracker.end(run_id, RunStatus.FINISHED)
        changed += 1
    for run in runs:
        attempt_id = run.tags.get(Tag.ATTEMPT_ID)
        if run.status != RunStatus.RUNNING or attempt_id in live:
            continue
        ended = next((a for a in attempts if str(a.trial_id) == attempt_id), None)
        if ended is not None and ended.state == State.COMPLETE:
            if ended.run_id in (None, run.run_id):
                continue  # its result's run: handled above
            # a second run of a completed attempt (its first run's writes outlived an outage that the result's
            # recording rode out): the result is in the recorded run; this one is stale, not a trial still running
            tracker.end(run.run_id, RunStatus.KILLED, f"superseded: the attempt's result is in run {ended.run_id}")
            changed += 1
            continue
        status, why = _ending(ended)
        tracker.end(run.run_id, status, why)
        changed += 1
    return changed


def _ending(a: Attempt | None) -> tuple[RunStatus, str]:
    if a is None:
        return RunStatus.KILLED, "no live attempt in the ledger (its worker died before recording it)"
    return run_status(a.kind), f"{a.kind or 'ended'}: {a.reason}"


def run_status(kind: Ending | None) -> RunStatus:
    """How an ended attempt's MLflow run ends: FAILED for a failure of the trial, KILLED when it was stopped or
    lost (its trial goes on in another attempt)."""
    return kind.run_status if kind is not None else RunStatus.KILLED


def end_runs(tracker: Tracker, ended: list[Ended]) -> None:
    """End the MLflow runs of attempts a reconcile pass ended, with the reason (the final repair retries)."""
    for e in ended:
        if e.attempt.run_id:
            try:
                tracker.end(e.attempt.run_id, run_status(e.kind), f"{e.kind}: {e.reason}")
            except Exception as err:
                print(f"tracking: could not end run {e.attempt.run_id} ({type(err).__name__})", file=sys.stderr)


def trial_info(a: Attempt) -> dict[str, object]:
    """What `Tracker.start_trial` records of an attempt: its trial's identity, its number and id, its config."""
    t = a.ticket
    return {"key": t.key, "config_hash": t.config_hash, "seed": t.seed, "label": t.label, "factors": t.factors,
            "attempt": t.number, "attempt_id": a.trial_id, "flat": flatten(t.config)}  # fmt: skip
