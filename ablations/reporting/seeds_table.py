"""Every seed's result, per level and as the paired difference to the level's reference, as a markdown table and
as the rows of `seeds.csv`: the numbers every mean, interval and paired test of a report is computed from."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ablations.reporting.analysis import Analysis, Table
from ablations.reporting.fmt import DASH, num
from ablations.reporting.md import table
from ablations.reporting.paper_match import TOP1
from ablations.reporting.results import Level

NLL = "test_loss"  # the test split's mean cross-entropy (nats), as the engine logs it
SEED_COLUMNS = ["study", "level", "seed", "state", "reference", TOP1, NLL, f"d_ref_{TOP1}", f"d_ref_{NLL}"]


def _diffs(level: Level, metric: str) -> dict[int, float]:
    """Seed → level − reference over the seeds both finished (the pairs the paired test uses)."""
    ref = level.reference
    if ref is None or ref is level:
        return {}
    mine, theirs = level.values(metric), ref.values(metric)
    return {s: mine[s] - theirs[s] for s in sorted(set(mine) & set(theirs))}


def section(t: Table) -> list[str]:
    """Test top-1 error of every seed, with a row of paired differences under each level that has a reference."""
    levels = t.factor.levels
    seeds = sorted({c.trial.seed for lv in levels for c in lv.cells})
    rows = []
    for lv in levels:
        states = {c.trial.seed: c.state for c in lv.cells}
        values = lv.values(TOP1)
        rows.append([lv.label, *(num(values[s]) if s in values else str(states.get(s, DASH)) for s in seeds)])
        diffs = _diffs(lv, TOP1)
        if lv.reference is not None and lv.reference is not lv:
            rows.append([f"Δ {lv.label} − {lv.reference.label}",
                         *(num(diffs[s], sign=True) if s in diffs else DASH for s in seeds)])  # fmt: skip
    header = ["test top-1 err % per seed", *(f"seed {s}" for s in seeds)]
    return ["**Every seed** (a difference row: this level minus its reference, seed by seed):", "",
            *table(header, rows), ""]  # fmt: skip


def seeds_frame(analysis: Analysis) -> pd.DataFrame:
    """One row per study, level and seed: its state, test top-1 error and test NLL where it finished, and the
    paired differences to the level's reference."""
    rows: list[dict[str, Any]] = []
    for t in analysis.tables:
        for lv in t.factor.levels:
            values = {m: lv.values(m) for m in (TOP1, NLL)}
            diffs = {m: _diffs(lv, m) for m in (TOP1, NLL)}
            ref = lv.reference.label if lv.reference is not None else ""
            for c in lv.cells:
                s = c.trial.seed
                row = {"study": t.factor.study.name, "level": lv.label, "seed": s, "state": str(c.state),
                       "reference": ref}  # fmt: skip
                row |= {m: values[m].get(s) for m in (TOP1, NLL)}
                row |= {f"d_ref_{m}": diffs[m].get(s) for m in (TOP1, NLL)}
                rows.append(row)
    return pd.DataFrame(rows, columns=SEED_COLUMNS)
