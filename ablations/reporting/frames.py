"""The report's numbers as pandas frames, unrounded: one row per level (`summary.csv`), one per table
(`tables.csv`: its model and power), and the rows of the overview forest plot."""

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


COMPARISON_COLUMNS = ["d_ref_n", "d_ref_mean", "d_ref_se", "d_ref_df", "d_ref_ci_lo", "d_ref_ci_hi", "d_ref_p",
                      "d_ref_p_adj", "d_ref_verdict", "d_ref_family", "d_ref_model", "d_ref_lo1", "d_ref_hi1",
                      "d_ref_bound", "d_ref_paired_n", "d_ref_paired_mean", "d_ref_paired_std", "d_ref_seed_r",
                      "paper_delta_p"]  # fmt: skip


def _comparison(r: Row) -> dict[str, Any]:
    """The level's comparison: the model's Δ (simultaneous interval, p, one-sided bounds, equivalence bound), the
    per-seed differences and the within-seed correlation; empty for a level without one."""
    c = r.comparison
    out: dict[str, Any] = dict.fromkeys(COMPARISON_COLUMNS) | {"d_ref_n": 0, "d_ref_verdict": "", "d_ref_family": ""}
    if c is None:
        return out
    d, e = c.pair.diff, c.estimate
    out |= {"d_ref_verdict": c.verdict, "d_ref_family": c.family, "d_ref_model": c.fit.model if c.fit else "",
            "d_ref_paired_n": d.n, "d_ref_paired_mean": d.mean if d.n else None, "d_ref_paired_std": d.std,
            "d_ref_seed_r": c.correlation, "paper_delta_p": r.paper_p}  # fmt: skip
    if e is not None:
        out |= {"d_ref_n": e.n, "d_ref_mean": e.estimate, "d_ref_se": e.se, "d_ref_df": e.df, "d_ref_ci_lo": e.lo,
                "d_ref_ci_hi": e.hi, "d_ref_p": e.p, "d_ref_p_adj": e.p_adjusted, "d_ref_lo1": e.lo1,
                "d_ref_hi1": e.hi1, "d_ref_bound": e.bound}  # fmt: skip
    return out


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
        p, f = t.power, t.fit
        row: dict[str, Any] = {"study": t.factor.study.name, "factor": t.factor.name,
                               "paper_tables": " ".join(t.factor.tables), "levels": len(t.rows),
                               "model": f.model if f else "", "seed_f": f.seed_f if f else None,
                               "seed_p": f.seed_p if f else None, "crit": f.crit if f else None,
                               "power_n": p.n, "resid_sd": p.sd, "resid_df": p.df, "resid_sd_lo": p.sd_lo,
                               "resid_sd_hi": p.sd_hi, "mde": p.mde}  # fmt: skip
        for e in EFFECTS:
            lo, hi = p.seeds_range(e)
            row |= {f"seeds_for_{e:g}": p.seeds_for(e), f"seeds_for_{e:g}_lo": lo, f"seeds_for_{e:g}_hi": hi}
        for metric in (TOP1, TOP5):
            levels, a = t.agreement[metric]
            row |= {f"agree_{metric}_levels": " ".join(lv.label for lv in levels), f"agree_{metric}_rho": a.rho,
                    f"agree_{metric}_p": a.p, f"agree_{metric}_statement": a.statement}  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


FOREST_COLUMNS = ["study", "level", "reference", "n", "delta", "lo", "hi", "verdict", "paper_delta"]


def forest_frame(analysis: Analysis) -> pd.DataFrame:
    """Every level of every table, in report order: our Δ to its reference (test top-1) with its simultaneous
    interval and verdict (the per-seed mean, no interval, where there is no test), and the paper's Δ; a reference
    row has no Δ."""
    rows = []
    for t in analysis.tables:
        for r in t.rows:
            c = r.comparison
            d, e = (c.pair.diff, c.estimate) if c is not None else (None, None)
            delta = e.estimate if e else d.mean if d and d.n else math.nan
            rows.append({"study": t.factor.study.name, "level": r.level.label, "reference": r.level.is_reference,
                         "n": e.n if e else d.n if d else 0, "delta": delta, "lo": e.lo if e else math.nan,
                         "hi": e.hi if e else math.nan, "verdict": c.verdict if c else "",
                         "paper_delta": r.paper_delta})  # fmt: skip
    return pd.DataFrame(rows, columns=FOREST_COLUMNS)
