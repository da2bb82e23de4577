"""The plain per-configuration table printed after a sweep: its finished runs, mean ± std over seeds."""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from ablations.outcomes import Ending, RunStatus
from ablations.tracking import TrialRun

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
                "test top-1 err %": _pm(pd.Series([r.metrics.get("test_top1_err") for r in ok], dtype=float)),
                "val top-1 err %": _pm(pd.Series([r.metrics.get("final_val_top1_err") for r in ok], dtype=float)),
                "time/run s": f"{time.mean():.0f}" if len(ok) else "—",
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def _pm(values: pd.Series) -> str:
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f} (1 seed)"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"
