"""The role-of-excitation section of a report as markdown (paper §7.2): the paper's blocks mapped to the analysed
network's, each block's class-specificity (median ω²) over every seed beside its bottleneck width, and the paper's
relative claim, specificity growing with depth, tested per block and per stage."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ablations.reporting import fmt
from ablations.reporting.depth_trend import NARROW, DepthTrend, Trend
from ablations.reporting.excitation_seeds import DEPTH_PNG, spread
from ablations.reporting.fmt import DASH, num
from ablations.reporting.markdown import paragraph, table
from ablations.reporting.paper_match import paper_blocks

if TYPE_CHECKING:
    from ablations.reporting.excitation_data import Excitation, Target

ALPHA = 0.05


def _seeds(seeds: Sequence[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ", ".join(map(str, seeds))


def _trend(t: Trend) -> str:
    """`mean ρ = +0.43 (per seed +0.43, +0.10), p = 0.128`."""
    if t.p != t.p:  # NaN: no stratum has two distinct scores
        return "untestable (no seed has two distinct values)"
    per = ", ".join(num(r, 2, sign=True) for r in t.per_stratum)
    return f"mean ρ = {num(t.rho, 2, sign=True)} (per stratum {per}), one-sided {fmt.p_is(t.p)}"


def _reading(t: Trend) -> str:
    if t.p != t.p:
        return "not testable"
    return "class-specificity **rises with depth**" if t.p < ALPHA else f"**no rise with depth shown** at α = {ALPHA}"


def _spec_cell(values: tuple[float, float, float, float, int], n: int) -> str:
    mean, sd, lo, hi, k = values
    missing = f" (none on {n - k} of {n} seeds: its gates constant)" if k < n else ""
    if k <= 1:
        return num(mean, 3) + missing
    return f"{num(mean, 3)} ± {num(sd, 3)} [{num(lo, 3)}, {num(hi, 3)}]" + missing


def section(exs: Sequence[Excitation], targets: Sequence[Target], trend: DepthTrend, per_class: int,
            unfinished: Sequence[Target] = ()) -> list[str]:  # fmt: skip
    """The role of excitation over the reference model's finished seeds (`targets`, analysed as `exs`); the
    figures draw the first one. `unfinished` are its seeds with no finished run (named, not analysed)."""
    ex, first = exs[0], targets[0]
    drawn = ", ".join(f"class {k} ({n} images)" for k, n in zip(ex.classes, ex.images, strict=True))
    n = len(exs)
    keys = ", ".join(f"`{t.key}`" for t in targets)
    missing = f" Not analysed (no finished run): {', '.join(f'`{t.key}`' for t in unfinished)}." if unfinished else ""
    lines = [
        EXCITATION_TITLE,
        "",
        paragraph(f"""Reference model `{first.model}`, every finished seed: {n}
        ({_seeds(trend.seeds)}; {keys}).{missing} Up to {per_class} validation images of every class; the figures
        draw `{first.label}`, {drawn}. The paper finds early blocks class-agnostic (SE_2_3), later ones
        class-specific (SE_4_6, SE_5_1) and the last ones saturated near 1 (SE_5_2, almost an identity): a claim
        about blocks relative to each other, tested below as a trend over depth."""),
        "",
        "The paper's blocks (SE-ResNet-50) in this network, matched by stage (stage 2 is the first residual stage):",
        "",
    ]
    rows = [[paper, where, f"`{ours}`" if ours else DASH, there] for paper, where, ours, there in
            paper_blocks(ex.positions)]  # fmt: skip
    lines += table(["paper block", "in SE-ResNet-50", "ours", "in this network"], rows)
    lines += ["", legend(exs), ""]
    pooled = spread(trend)
    narrow = set(trend.narrow())
    rows = []
    for b, s in ex.stats.items():
        at_floor = sum(e.stats[b].p <= 1 / (1 + e.stats[b].permutations) for e in exs)
        constant = f" ({s.constant} constant)" if s.constant else ""
        hidden = f"{ex.hidden[b]} ‡" if b in narrow else str(ex.hidden[b])
        rows.append([b, f"{s.channels}{constant}", hidden, _spec_cell(pooled[b], n),
                     f"{num(s.median, 3)} [{num(s.ci_lo, 3)}, {num(s.ci_hi, 3)}]", num(s.null_hi, 3),
                     f"{at_floor}/{n}", num(s.eta_median, 3), num(s.mean_gate, 3), num(s.saturated, 3)])  # fmt: skip
    spec_head = "median ω², over seeds" if n == 1 else f"median ω², mean ± SD [min, max] over {n} seeds"
    lines += table(["SE block", "channels", "hidden units", spec_head, f"{_seeds(trend.seeds[:1])}: [95% bootstrap]",
                    "null 95th pct", "seeds at the p floor", "median η² (uncorrected)", "mean gate",
                    "share of gates > 0.9"], rows)  # fmt: skip
    lines += ["", *trend_lines(trend), ""]
    lines += ["![mean excitation per class](excitation_profiles.png)",
              "![excitation mean ± std per class](excitation_spread.png)",
              "![per-channel class share and saturation by depth](excitation_eta2.png)",
              f"![class-specificity by depth, every seed]({DEPTH_PNG})", ""]  # fmt: skip
    return lines


def trend_lines(trend: DepthTrend) -> list[str]:
    """The depth trend, the stage table and the width confound, as markdown lines."""
    perms = trend.depth.permutations
    lines = [
        paragraph(f"""**Depth trend.** Test: a blocked permutation test with the seed as block: Spearman's ρ between
        a block's depth (its forward position, 1-{len(trend.blocks)}) and its class-specificity within each seed,
        averaged over seeds (Page's L in correlation form); the null shuffles the depth order within each seed
        independently ({perms} shuffles, one-sided: H1 deeper blocks rank higher). Every block: {_trend(trend.depth)}:
        {_reading(trend.depth)}."""),
        "",
    ]
    rows = []
    for j, stage in enumerate(trend.stage_list):
        members = [b for b, s in zip(trend.blocks, trend.stages, strict=True) if s == stage]
        widths = sorted({h for h, s in zip(trend.hidden, trend.stages, strict=True) if s == stage})
        col = trend.stage_means[:, j]
        mean = num(float(col.mean()), 3) + (f" ± {num(float(col.std(ddof=1)), 3)}" if len(col) > 1 else "")
        step = next((s for s in trend.steps if s.upper == stage), None)
        change = DASH if step is None else (f"{num(step.delta, 3, sign=True)} (per seed "
                                            f"{', '.join(num(d, 3, sign=True) for d in step.per_seed)})")  # fmt: skip
        p = DASH if step is None else fmt.pvalue(step.p)
        rows.append([f"stage {stage}", f"{members[0]}–{members[-1]} ({len(members)})", ", ".join(map(str, widths)),
                     mean, change, p])  # fmt: skip
    lines += table(["stage", "blocks", "hidden units", "mean specificity (over seeds)", "Δ from the stage before",
                    "p (Δ > 0)"], rows)  # fmt: skip
    wide = ("not testable: fewer than 3 blocks have more than 2 hidden units" if trend.wide is None
            else _trend(trend.wide))  # fmt: skip
    floor = (f" With one seed and {len(trend.stage_list)} stages no p of the stage means falls below "
             f"1/{math.factorial(len(trend.stage_list))}." if len(trend.seeds) == 1 else "")  # fmt: skip
    narrow = ", ".join(trend.narrow()) or "none"
    lines += [
        "",
        paragraph(f"""Per stage: the stage means against the stage number, {_trend(trend.by_stage)}; each Δ's p
        exchanges the two stages' blocks within each seed ({perms} shuffles).{floor}"""),
        "",
        paragraph(f"""**Bottleneck width.** A block's gates are functions of its hidden units (channels // r), so a
        block with h hidden units has h degrees of freedom however many channels it gates (‡: h ≤ {NARROW}, its
        channels' ω² nearly equal; here {narrow}). Across stages depth and width grow together, so the trends
        above cannot tell them apart. Within a stage the width is constant: {_trend(trend.within_stage)}. Over
        the blocks with more than {NARROW} hidden units only: {wide}."""),
    ]
    return lines


def legend(exs: Sequence[Excitation]) -> str:
    """How to read the block table; it counts the blocks whose p sits at the permutation floor."""
    s = next(iter(exs[0].stats.values()))
    cells = [(e.stats[b].p, e.stats[b].permutations) for e in exs for b in e.stats]
    at_floor = sum(p <= 1 / (1 + m) for p, m in cells)
    return paragraph(f"""\
Per block, every channel's η² is the share of its gate's variance over images that the class explains
(between-class / total sum of squares); a channel whose gate never varies has none and is counted as constant. η² is
biased upwards (about (K − 1)/(n − 1) for a gate that ignores the class), so the block's class-specificity is the
median over channels of **ω²** (Hays' bias-corrected η², (SS_b − (K − 1)·MS_w) / (SS_t + MS_w), zero in expectation
without a class effect). The first seed's median has a 95% bootstrap interval (images resampled within their class,
shifted by the bootstrap's bias estimate) and each seed's a label-permutation null ({s.permutations} shuffles,
seeded): {at_floor} of {len(cells)} block-seeds sit at its floor (p = 1/{s.permutations + 1}), so that null, no class
information at all, says only that the class is present; the paper's claim is relative, and is tested as a trend
over depth below. Saturation is measured directly: the mean gate and the share of gate values above 0.9 (an
identity-like block has both near 1).""")


EXCITATION_TITLE = "## Role of excitation (paper §7.2, Figs. 6-7)"
