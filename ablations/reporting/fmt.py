"""How numbers are printed, one home for the report's markdown and LaTeX and the table after a sweep: fixed decimals
(`stats.DIGITS`, the ones verdicts judge), a dash for nothing, no sign on a value that prints as zero."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from ablations.reporting.stats import DIGITS, Rate, Summary

if TYPE_CHECKING:
    import pandas as pd

DASH = "—"


def num(x: float | None, digits: int = DIGITS, sign: bool = False, dash: str = DASH) -> str:
    """Fixed decimals (`dash` for none); a value that rounds to zero is printed without a sign."""
    if x is None or math.isnan(x):
        return dash
    text = format(x, f"{'+' if sign else ''}.{digits}f")
    return text.lstrip("+-") if float(text) == 0 else text


def pvalue(p: float) -> str:
    """A p-value with three decimals, `< 0.001` below that."""
    if math.isnan(p):
        return DASH
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _few(s: Summary, digits: int, sign: bool = False) -> str | None:
    """The values themselves below three (a t-interval over one degree of freedom is about 18 SDs wide): the mean
    alone for one, the mean and the two values for two, equal values said as such (never a zero-width interval);
    None from three different values on."""
    if s.n == 1:
        return f"{num(s.mean, digits, sign)} (n = 1)"
    if s.std == 0:
        return f"{num(s.mean, digits, sign)} (all {s.n} equal)"
    if s.n == 2:
        half = s.std / math.sqrt(2)  # the two values are mean ± |a - b| / 2
        lo, hi = num(s.mean - half, digits, sign), num(s.mean + half, digits, sign)
        return f"{num(s.mean, digits, sign)} ({lo}, {hi}; n = 2)"
    return None


def p_is(p: float) -> str:
    """`p = 0.043`, or `p < 0.001`, for a sentence."""
    text = pvalue(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def mean_sd_ci(s: Summary, digits: int = DIGITS) -> str:
    """`mean ± std [lo, hi]` from three different values on, the values themselves below (`_few`); a dash for
    none."""
    if s.n == 0:
        return DASH
    few = _few(s, digits)
    return few or f"{num(s.mean, digits)} ± {num(s.std, digits)} [{num(s.lo, digits)}, {num(s.hi, digits)}]"


def mean_std(values: pd.Series) -> str:
    """`mean ± std` over seeds at two decimals (pandas' mean and sample std), `x (1 seed)` for one, a dash for none:
    the table printed after a sweep."""
    if values.empty:
        return DASH
    if len(values) == 1:
        return f"{values.iloc[0]:.2f} (1 seed)"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def delta(s: Summary) -> str:
    """A paired difference without a model's interval: `+Δ [lo, hi] (n = k)` from three different differences on,
    the differences themselves below (`_few`)."""
    if s.n == 0:
        return "no common seeds"
    few = _few(s, DIGITS, sign=True)
    return few or f"{num(s.mean, sign=True)} [{num(s.lo, sign=True)}, {num(s.hi, sign=True)}] (n = {s.n})"


def rate(r: Rate) -> str:
    """`k/n [lo, hi] %` with the Wilson interval in percent."""
    if r.n == 0:
        return f"0/0 {DASH}"
    return f"{r.k}/{r.n} [{num(100 * r.lo, 0)}, {num(100 * r.hi, 0)}] %"


def setting(value: Any) -> str:
    """A setting as a spec writes it: strings bare, everything else as JSON (true, null, [2, 3])."""
    return value if isinstance(value, str) else json.dumps(value)
