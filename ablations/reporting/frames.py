"""The report's numbers as pandas frames, unrounded: one row per level (`summary.csv`), one per table
(`tables.csv`), and the rows of the overview forest plot."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ablations.reporting.analysis import VAL1, Analysis, Row
from ablations.reporting.paper_match import TOP1, TOP5
from ablations.reporting.paper_section import rows_csv
from ablations.reporting.results import STATES
from ablations.reporting.seeds_table import NLL
from ablations.reporting.stats import EFFECTS, Summary


def _summary(prefix: str, s: Summary) -> dict[str, float]:
    return {f"{prefix}_mean": s.mean, f"{prefix}_std": s.std, f"{prefix}_ci_lo": s.lo, f"{prefix}_ci_hi": s.hi}


def _comparison(r: Row) -> dict[str, Any]:
    c = r.comparison
    if c is None:
        return {"d_ref_n": 0, "d_ref_mean": None, "d_ref_std": None, "d_ref_ci_lo": None, "d_ref_ci_hi": None,
                "d_ref_p": None, "d_ref_p_holm": None, "d_ref_verdict": "", "d_ref_family": ""}  # fmt: skip
    d = c.pair.diff
    return {"d_ref_n": d.n, "d_ref_mean": d.mean, "d_ref_std": d.std, "d_ref_ci_lo": d.lo, "d_ref_ci_hi": d.hi,
            "d_ref_p": c.pair.p, "d_ref_p_holm": c.p_adjusted, "d_ref_verdict": c.verdict,
            "d_ref_family": c.family}  # fmt: skip


def levels_frame(analysis: Analysis) -> pd.DataFrame:
    """One row per study and level (the test top-1 Δ is to the level's reference)."""
    rows = []
    for t in analysis.tables:
        for r in t.rows:
            lv = r.level
            row: dict[str, Any] = {"study": t.factor.study.name, "factor": t.factor.name, "level": lv.label,
                                   "config_hash": lv.config_hash, "reference": lv.is_reference,
                                   "baseline": lv.is_baseline, "seeds": len(lv.cells)}  # fmt: skip
            row |= {s: lv.count(s) for s in STATES}
            row |= _summary(TOP1, r.top1) | _summary(TOP5, r.top5) | _summary(VAL1, r.val1)
            row |= _summary(f"{TOP1}_at_chance", r.at_chance) | _summary(NLL, lv.summary(NLL))
            row |= {"diverged_rate": r.divergence.rate, "diverged_ci_lo": r.divergence.lo,
                    "diverged_ci_hi": r.divergence.hi}  # fmt: skip
            row |= _comparison(r)
            row |= {"params_m": lv.params_m(), "gflops": lv.gflops(), "images_per_s": lv.mean_metric("images_per_s"),
                    "train_time_s": lv.mean_metric("train_time_s"), "wall_time_s": lv.wall_s()}  # fmt: skip
            p = lv.paper
            row |= {"paper_table": p.table if p else "", "paper_row": p.label if p else "",
                    "paper_top1_err": p.top1 if p else None, "paper_top5_err": p.top5 if p else None,
                    "paper_params_m": p.params_m if p else None, "paper_gflops": p.gflops if p else None,
                    "paper_delta_top1": r.paper_delta} | rows_csv(r)  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows)


def tables_frame(analysis: Analysis) -> pd.DataFrame:
    """One row per table: its power and its ordering against the paper."""
    rows = []
    for t in analysis.tables:
        p = t.power
        row: dict[str, Any] = {"study": t.factor.study.name, "factor": t.factor.name,
                               "paper_tables": " ".join(t.factor.tables), "levels": len(t.rows),
                               "power_n": p.n, "pooled_sd": p.sd, "pooled_df": p.df, "mde": p.mde}  # fmt: skip
        row |= {f"seeds_for_{e:g}": p.seeds_for(e) for e in EFFECTS}
        for metric in (TOP1, TOP5):
            levels, a = t.agreement[metric]
            row |= {f"agree_{metric}_levels": " ".join(lv.label for lv in levels), f"agree_{metric}_rho": a.rho,
                    f"agree_{metric}_p": a.p, f"agree_{metric}_statement": a.statement}  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


FOREST_COLUMNS = ["study", "level", "reference", "n", "delta", "lo", "hi", "verdict", "paper_delta"]


def forest_frame(analysis: Analysis) -> pd.DataFrame:
    """Every level of every table, in report order: our paired Δ to its reference (test top-1) with its interval
    and verdict, and the paper's Δ; a reference row has no Δ."""
    rows = []
    for t in analysis.tables:
        for r in t.rows:
            c = r.comparison
            d = c.pair.diff if c is not None else None
            rows.append({"study": t.factor.study.name, "level": r.level.label, "reference": r.level.is_reference,
                         "n": d.n if d else 0, "delta": d.mean if d and d.n else math.nan,
                         "lo": d.lo if d else math.nan, "hi": d.hi if d else math.nan,
                         "verdict": c.verdict if c else "", "paper_delta": r.paper_delta})  # fmt: skip
    return pd.DataFrame(rows, columns=FOREST_COLUMNS)
