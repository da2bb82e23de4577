"""The role-of-excitation section of a report as markdown (paper §7.2): the paper's blocks mapped to the analysed
network's, and per block the distribution of per-channel η² against its null with the saturation of its gates."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ablations.reporting import fmt
from ablations.reporting.fmt import DASH, num
from ablations.reporting.gate_stats import PERMUTATIONS
from ablations.reporting.markdown import paragraph, table
from ablations.reporting.paper_match import paper_blocks

if TYPE_CHECKING:
    from ablations.reporting.excitation import Excitation


def section(ex: Excitation, label: str, key: str, per_class: int) -> list[str]:
    """The role of excitation for the reference model `label` (trial `key`): the paper's blocks mapped to ours,
    then per block the η² distribution against its null and the saturation."""
    drawn = ", ".join(f"class {k} ({n} images)" for k, n in zip(ex.classes, ex.images, strict=True))
    lines = [
        EXCITATION_TITLE,
        "",
        f"Reference model `{label}` (`{key}`), up to {per_class} validation images of every class; the figures draw "
        f"{drawn}. The paper finds early blocks class-agnostic (SE_2_3), later ones class-specific (SE_4_6, "
        "SE_5_1) and the last ones saturated near 1 (SE_5_2, almost an identity).",
        "",
        "The paper's blocks (SE-ResNet-50) in this network, matched by stage (stage 2 is the first residual stage):",
        "",
    ]
    rows = [[paper, where, f"`{ours}`" if ours else DASH, there] for paper, where, ours, there in
            paper_blocks(ex.positions)]  # fmt: skip
    lines += table(["paper block", "in SE-ResNet-50", "ours", "in this network"], rows)
    lines += ["", EXCITATION_LEGEND, ""]
    rows = []
    for b, s in ex.stats.items():
        constant = f" ({s.constant} constant)" if s.constant else ""
        rows.append([b, f"{s.channels}{constant}", f"{num(s.median, 3)} [{num(s.ci_lo, 3)}, {num(s.ci_hi, 3)}]",
                     f"{num(s.q1, 3)}–{num(s.q3, 3)}", f"{num(s.null_median, 3)} ({num(s.null_hi, 3)})",
                     fmt.pvalue(s.p), num(s.mean_gate, 3), num(s.saturated, 3), num(s.pooled, 3)])  # fmt: skip
    lines += table(["SE block", "channels", "median η² [95% bootstrap]", "η² IQR", "null median (95th pct)",
                    "p (permutation)", "mean gate", "share of gates > 0.9", "pooled share"], rows)  # fmt: skip
    trend = ex.depth_trend()
    rho = "undefined" if math.isnan(trend) else num(trend, sign=True)
    lines += ["", f"Median η² against depth: Spearman ρ = {rho}.", ""]
    lines += ["![mean excitation per class](excitation_profiles.png)",
              "![excitation mean ± std per class](excitation_spread.png)",
              "![per-channel class share and saturation by depth](excitation_eta2.png)", ""]  # fmt: skip
    return lines


EXCITATION_TITLE = "## Role of excitation (paper §7.2, Figs. 6-7)"
EXCITATION_LEGEND = paragraph(
    f"""\
Per block, every channel's η² is the share of its gate's variance over images that the class explains
(between-class / total sum of squares); a channel whose gate never varies has none and is counted as constant.
The median over channels comes with a 95% bootstrap interval (images resampled within their class, the interval
shifted by the bootstrap's bias estimate since resampled duplicates inflate η²) and is judged against a
label-permutation null (labels shuffled, seeded): with K classes and n images η² is about (K − 1)/(n − 1) even for
gates that ignore the class, so read a block as class-specific only where its median clears the null (small p;
with {PERMUTATIONS} shuffles p is at least 1/{PERMUTATIONS + 1}). Saturation is measured directly: the mean gate
and the share of gate values above 0.9 (an identity-like block has both near 1). *pooled share* is the
variance-weighted η² earlier reports printed, blind to channels that barely vary."""
)
