"""`senet-ablate report NAME` for a search: the search-time and re-evaluated fronts side by side (their gap is the
selection bias), error against cost with seed intervals, each design's probability of staying on the front, the
hypervolumes with their intervals, the random arm's result, the parameter importance (exploratory) and the
budget spent. Written to `reports/<study>/` as README.md, designs.csv and front.png; equal runs give equal files."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from ablations.reporting import figures
from ablations.reporting.fmt import DASH, delta, mean_sd_ci, num
from ablations.reporting.search_data import SearchAnalysis, analyse_search
from ablations.reporting.stats import Paired
from ablations.study.spec import StudySpec
from ablations.sweep.status import ReadOptions

FIGURE = "front.png"


def _cost(x: float, name: str) -> str:
    if math.isnan(x):
        return DASH
    return f"{x:,.0f}" if name == "params" else f"{x:.4f}"


def _tie(p: Paired) -> str:
    if p.diff.n < 2:
        return DASH
    if p.diff.std == 0.0 and p.diff.mean == 0.0:
        return "itself"
    return "tie" if p.diff.lo <= 0 <= p.diff.hi else "worse"


def _hv(v: tuple[float, float, float]) -> str:
    est, lo, hi = v
    return DASH if math.isnan(est) else f"{est:,.4g} [{lo:,.4g}, {hi:,.4g}]"


def render(a: SearchAnalysis) -> str:
    search = a.spec.search
    assert search is not None
    cost_name = next((o for o in a.objectives if o in ("params", "gflops")), "")
    first = next(o for o in a.objectives if o not in ("params", "gflops", "latency_ms"))
    lines = [f"# {a.spec.name}: search report", "", a.spec.description.strip(), ""]
    lines += ["## The search", "",
              f"- space: {search.size():,} designs over {', '.join(search.space)}",
              f"- objectives (minimised): {', '.join(a.objectives)}; constraints: "
              + (", ".join(f"{k} ≤ {v.max:,.6g}" for k, v in search.constraints.items()) or "none"),
              f"- sampler {search.sampler}, {search.parallel} designs in flight; random arm: "
              + ("yes, same budget" if search.random_arm else "no"),
              f"- budget: {search.budget.designs} designs per arm"
              + (f" or {search.budget.gpu_hours} GPU-hours" if search.budget.gpu_hours else ""),
              f"- common seeds {search.seeds}, intensification seeds {search.intensify_seeds()} for a design "
              f"entering the front; re-evaluation on fresh seeds {search.reevaluate} (the only read of test error)",
              ""]  # fmt: skip
    lines += ["## Budget spent", "", "| arm | designs trained | of them stopped at a rung | from earlier results | "
              "rejected untrained | without a result | device-hours |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm in a.arms:
        lines.append(f"| {arm.arm} | {arm.trained} | {arm.pruned} | {arm.warm} | {arm.infeasible} | {arm.failed} | "
                     f"{arm.device_s / 3600:.3f} |")  # fmt: skip
    lines += ["", f"Every trial of the search (references, arms, intensification, re-evaluation): "
              f"{a.device_s / 3600:.3f} device-hours (the trials' wall time, as the ledger recorded it)."]  # fmt: skip
    if a.pending:
        lines.append(f"**{a.pending} trials of the re-evaluation have no result yet**: rerun `senet-ablate search "
                     f"{a.spec.name}`; the numbers below lack them.")  # fmt: skip
    lines += ["", "## Search-time fronts (selected on these very values)", ""]
    head = " | ".join(a.objectives)
    lines += [f"| arm | design | {head} | seeds |", "|---|---|" + "---|" * len(a.objectives) + "---|"]
    for arm in a.arms:
        for d in arm.front:
            vals = " | ".join(_cost(v, n) if n in ("params", "gflops") else num(v)
                              for n, v in zip(a.objectives, d.values or (), strict=True))  # fmt: skip
            lines.append(f"| {arm.arm} | {d.label} | {vals} | {len(d.seeds)} |")
    lines += ["", f"## Re-evaluated on fresh seeds {search.reevaluate}", "",
              f"`{first}` at search time (its seeds) and on the fresh seeds, `{a.fresh_metric}` on the fresh seeds "
              "(mean ± SD [95% t-interval]; the values themselves below three), paired Δ by seed against the first "
              "reference and against the design of lowest mean (an interval holding 0 is a tie), and the share of "
              f"{2000:,} bootstrap resamples over the fresh seeds that keep the design on the re-evaluated front.",
              "", f"| design | fronts | {cost_name or 'cost'} | search-time {first} | fresh {first} | "
              f"fresh {a.fresh_metric} | Δ vs {a.again[0].label if a.again else DASH} | vs best | on front | "
              "P(front) |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for g in a.again:
        lines.append(f"| {g.label} | {', '.join(g.arms) or 'reference'} | {_cost(g.cost, cost_name)} | "
                     f"{mean_sd_ci(g.searched)} | {mean_sd_ci(g.fresh_val)} | {mean_sd_ci(g.fresh)} | "
                     f"{delta(g.vs_reference.diff)} | {_tie(g.vs_best)} | {'yes' if g.on_front else 'no'} | "
                     f"{g.p_front:.2f} |")  # fmt: skip
    lines += ["", "## Selection bias", ""]
    if a.gap.n:
        lines.append(f"Over the {a.gap.n} front designs, fresh-seed `{first}` minus search-time `{first}`: "
                     f"{delta(a.gap)}. A positive gap is how much the search-time front flattered itself by being "
                     "chosen on the values it shows.")  # fmt: skip
    else:
        lines.append("No front design has both its search-time and its fresh-seed values yet.")
    lines += ["", "## Hypervolume and the random arm", ""]
    if a.reference_point:
        bound = ", ".join(f"{o} {v:,.6g}" for o, v in zip(a.objectives, a.reference_point, strict=True))
        lines += [f"Reference point: {bound} "
                  f"(on the fresh seeds, `{a.fresh_metric}` takes `{first}`'s bound). The re-evaluated interval is the "
                  "basic bootstrap over the fresh seeds. Each arm counts only the designs it asked (designs given to "
                  "the sampler from earlier results are left out: the random arm is not given them).", "",
                  "| arm | search-time hypervolume | re-evaluated "
                  "hypervolume [95% interval] |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {arm.arm} | {DASH if math.isnan(arm.hv_search) else f'{arm.hv_search:,.4g}'} | "
                  f"{_hv(arm.hv_fresh)} |" for arm in a.arms]  # fmt: skip
        lines.append("")
        lines.append(_verdict(a))
    else:
        lines.append("One objective: no hypervolume; the arms compare by their best re-evaluated design above.")
    if a.rungs:
        lines += ["", "## Rungs against full length", "", f"Spearman's ρ between a design's `{first}` at the rung and "
                  "at full length (common seeds), over the designs promoted past it: how far the rung's ranking can "
                  "be trusted (designs it stopped have no full-length value, so ρ is read on the survivors).", "",
                  "| rung (epochs) | designs | ρ |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {rung} | {n} | {DASH if math.isnan(rho) else f'{rho:+.2f}'} |" for rung, n, rho in a.rungs]
    lines += ["", "## Parameter importance (exploratory)", ""]
    if a.importance:
        lines.append("Optuna's PED-ANOVA on the sampler's told designs (how much each key decides reaching its "
                     "front); computed on the search-time values, so selected like them:")  # fmt: skip
        lines += ["", "| key | importance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in sorted(a.importance.items(), key=lambda kv: (-kv[1], kv[0]))]
    else:
        lines.append("Too few told designs (fewer than 6) or one key: no importance.")
    lines += ["", f"![error against {cost_name or 'cost'}]({FIGURE})", "",
              f"`senet-ablate search {a.spec.name} --confirm` writes a grid study of the front's factors, so the "
              "paired tests of a grid report make the final claim.", ""]  # fmt: skip
    return "\n".join(lines)


def _verdict(a: SearchAnalysis) -> str:
    by = {arm.arm: arm.hv_fresh for arm in a.arms}
    if "search" not in by or "random" not in by or math.isnan(by["search"][0]) or math.isnan(by["random"][0]):
        return "The random arm has no re-evaluated front to compare with."
    (s, s_lo, s_hi), (r, r_lo, r_hi) = by["search"], by["random"]
    if s_lo > r_hi:
        return f"The sampler's front beats the random arm's on the fresh seeds ({s:,.4g} against {r:,.4g})."
    if r_lo > s_hi:
        return f"The random arm's front beats the sampler's on the fresh seeds ({r:,.4g} against {s:,.4g})."
    return (
        f"The sampler's and the random arm's re-evaluated hypervolumes overlap ({s:,.4g} against {r:,.4g}): at "
        "this budget the sampler is not shown better than random."
    )


def frame(a: SearchAnalysis) -> pd.DataFrame:
    rows = []
    for g in a.again:
        rows.append({"design": g.label, "fronts": ";".join(g.arms), "cost": g.cost, "search_mean": g.searched.mean,
                     "search_n": g.searched.n, "fresh_val_mean": g.fresh_val.mean, "fresh_test_mean": g.fresh.mean,
                     "fresh_test_lo": g.fresh.lo, "fresh_test_hi": g.fresh.hi, "fresh_n": g.fresh.n,
                     "delta_reference": g.vs_reference.diff.mean, "on_front": g.on_front,
                     "p_front": g.p_front})  # fmt: skip
    return pd.DataFrame(rows)


def draw(a: SearchAnalysis, path: Path) -> None:
    """Error against cost: every told design at search time (hollow), the re-evaluated ones on the fresh seeds
    (filled, with their 95% intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cost_name = next((o for o in a.objectives if o in ("params", "gflops")), None)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if cost_name:
        i = a.objectives.index(cost_name)
        j = 1 - i
        for arm, marker in zip(a.arms, "os", strict=False):
            told = [d for d in arm.asked if d.values is not None]
            ax.scatter([d.values[i] for d in told], [d.values[j] for d in told], facecolors="none",
                       edgecolors="grey", marker=marker, label=f"{arm.arm}: search time")  # fmt: skip
        done = [g for g in a.again if g.fresh.n]
        ax.errorbar([g.cost for g in done], [g.fresh.mean for g in done],
                    yerr=[[g.fresh.mean - (g.fresh.lo if g.fresh.n > 2 else g.fresh.mean) for g in done],
                          [(g.fresh.hi if g.fresh.n > 2 else g.fresh.mean) - g.fresh.mean for g in done]],
                    fmt="o", color="C0", label=f"re-evaluated ({a.fresh_metric})")  # fmt: skip
        for g in done:
            short = re.sub(r"\b[a-z_]+\.", "", g.label)  # model.name=resnet8 → name=resnet8
            ax.annotate(short, (g.cost, g.fresh.mean), fontsize=6, xytext=(3, 3), textcoords="offset points")
        if cost_name == "params":
            ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:,.0f}k")
        ax.set_xlabel(cost_name)
        ax.set_ylabel("error %")
        ax.legend(fontsize=7)
    ax.set_title(f"{a.spec.name}: error against {cost_name or 'cost'}")
    fig.tight_layout()
    figures.save(fig, path)
    plt.close(fig)


def write_search_report(spec: StudySpec, opts: ReadOptions, out: Path | None = None) -> Path:
    """The search's report files under `out` (default `reports/<study>/`); the README's path."""
    a = analyse_search(spec, opts)
    out = out if out is not None else Path("reports") / spec.name
    out.mkdir(parents=True, exist_ok=True)
    draw(a, out / FIGURE)
    frame(a).to_csv(out / "designs.csv", index=False, float_format=lambda x: repr(float(x)), lineterminator="\n")
    readme = out / "README.md"
    readme.write_text(render(a))
    return readme
