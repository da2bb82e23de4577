"""What `sweep` and `worker` print when they end: the trials' states, the failed ones, and the plain
per-configuration table of the finished runs, mean ± std over seeds."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd

from ablations.outcomes import Ending, RunStatus, Standing
from ablations.reporting.fmt import DASH, mean_std
from ablations.sweep.status import TrialStatus, summary_line
from ablations.tracking import Tracker, TrialRun, tracking_uri

COLUMNS = ["config", "seeds", "diverged", "test top-1 err %", "val top-1 err %", "time/run s"]


def summary_table(runs: list[TrialRun]) -> pd.DataFrame:
    """Per label: seeds finished and diverged, test and final-validation top-1 error as mean ± std, time.

    A trial has one FINISHED run; should a second exist, the first is kept.
    """
    first: dict[str, TrialRun] = {}
    for run in sorted(runs, key=lambda r: (r.start_ms, r.run_id)):
        if run.status == RunStatus.FINISHED:
            first.setdefault(run.key, run)
    by_label: dict[str, list[TrialRun]] = defaultdict(list)
    for run in first.values():
        by_label[run.label].append(run)
    rows = []
    for label in sorted(by_label):
        group = by_label[label]
        ok = [r for r in group if r.outcome == Ending.FINISHED]
        time = pd.Series([r.metrics.get("train_time_s") for r in ok], dtype=float)
        rows.append(
            {
                "config": label,
                "seeds": len(ok),
                "diverged": sum(r.outcome == Ending.DIVERGED for r in group),
                "test top-1 err %": mean_std(pd.Series([r.metrics.get("test_top1_err") for r in ok], dtype=float)),
                "val top-1 err %": mean_std(pd.Series([r.metrics.get("final_val_top1_err") for r in ok], dtype=float)),
                "time/run s": f"{time.mean():.0f}" if len(ok) else DASH,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def print_summary(statuses: list[TrialStatus], uri: str | None, results: Path) -> None:
    """The trials' states in one line, each failed trial with its reason, and the table of their finished runs."""
    print(summary_line(statuses))
    for s in statuses:
        if s.state == Standing.FAILED:
            print(f"  failed: {s.trial.label} seed {s.trial.seed}: {s.reason}")
    tracker = Tracker(tracking_uri(uri, results), results)
    finished = tracker.trial_runs({s.trial.key for s in statuses}, status=RunStatus.FINISHED)
    print(summary_table(finished).to_string(index=False))
