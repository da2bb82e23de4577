"""SE knock-out (`senet-ablate knockout`), an ablation without retraining: a trained network evaluated with the gates
of chosen SE blocks fixed at 1 (the blocks removed) and, as a control, at their mean activation over the same images
(the blocks' average rescaling kept, their dependence on the input removed). One row for all SE blocks, one per
stage and one per block, each with its error and the change against the intact network, paired by image.

The paper (§4) says the last stage's SE blocks "could be removed at only a small cost in performance (<0.1% top-5
error on ImageNet)" (the CVPR text: top-1); on a released SE-ResNet the stage-5 row checks that claim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ablations.errors import SenetError
from ablations.paper import tables
from ablations.reporting.evaluate import INTERVAL, Predictions, Rate, Subject, error_rate, predict, progress_bar
from senet_core import ExcitationProbe, GateOverride, se_blocks

CONFIDENCE = 0.95
METHOD = (
    "Δ = knocked-out minus intact error in percentage points, paired by image: 95% t-interval of the per-image "
    "change; p: exact McNemar test on the images that changed (worse = newly wrong, better = newly right)"
)
Rows = Literal["stages", "blocks", "both"]
Gate = Literal["1", "mean"]


@dataclass(frozen=True)
class Change:
    """The paired change in error of a knocked-out network against the intact one, in percentage points."""

    delta: float
    low: float
    high: float
    worse: int  # images wrong only when knocked out
    better: int  # images right only when knocked out
    p: float  # exact McNemar

    def as_dict(self) -> dict[str, float | int]:
        return {"delta": self.delta, "low": self.low, "high": self.high, "worse": self.worse, "better": self.better,
                "p": self.p}  # fmt: skip


def paired_change(intact: np.ndarray, knocked: np.ndarray) -> Change:
    """The change from `intact` to `knocked` per-image errors (bool arrays over the same images).

    The interval is scipy's one-sample t-interval of the per-image differences (-1, 0 or +1); when every image
    changed alike (e.g. none changed) it is the single value itself. McNemar's exact test (statsmodels) looks only at
    the images that changed; it is 1 when none did.
    """
    from scipy import stats
    from statsmodels.stats.contingency_tables import mcnemar

    d = knocked.astype(np.float64) - intact.astype(np.float64)
    delta = 100.0 * float(d.mean())
    if np.all(d == d[0]):
        low = high = delta
    else:
        ci = stats.ttest_1samp(d, 0.0).confidence_interval(CONFIDENCE)
        low, high = 100.0 * float(ci.low), 100.0 * float(ci.high)
    worse, better = int((d > 0).sum()), int((d < 0).sum())
    p = 1.0 if worse + better == 0 else float(mcnemar([[0, worse], [better, 0]], exact=True).pvalue)
    return Change(delta, low, high, worse, better, p)


@dataclass
class Row:
    """One knocked-out network: which blocks, which fixed gate, its errors and their change."""

    level: Literal["all", "stage", "block"]
    target: str  # "all", "stage 5", "SE_5_1"
    blocks: list[str]
    gate: Gate
    top1: Rate
    topk: Rate
    delta1: Change
    deltak: Change

    def as_dict(self, k: int) -> dict[str, Any]:
        return {"level": self.level, "target": self.target, "blocks": self.blocks, "gate": self.gate,
                "top1_err": self.top1.as_dict(), f"top{k}_err": self.topk.as_dict(),
                "delta_top1": self.delta1.as_dict(), f"delta_top{k}": self.deltak.as_dict()}  # fmt: skip


def targets(model: torch.nn.Module, rows: Rows) -> list[tuple[Literal["all", "stage", "block"], str, list[str]]]:
    """(level, target, blocks) to knock out: all SE blocks, then each stage, then each block (as `rows` asks)."""
    blocks = se_blocks(model)
    if not blocks:
        raise SenetError("knockout: the model has no SE blocks (se.enabled is false)")
    out: list[tuple[Literal["all", "stage", "block"], str, list[str]]] = [("all", "all", list(blocks))]
    if rows in ("stages", "both"):
        for stage in sorted({b.stage for b in blocks.values()}):
            out.append(("stage", f"stage {stage}", [n for n, b in blocks.items() if b.stage == stage]))
    if rows in ("blocks", "both"):
        out += [("block", name, [name]) for name in blocks]
    return out


def knockout(
    subject: Subject, batches: Any, device: torch.device, *, rows: Rows = "both", control: bool = True,
    progress: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Evaluate `subject` intact and with each target's gates fixed; a JSON-ready dict of every row.

    Args:
        subject: the trained network.
        batches: a sized iterable of (images, class indices), e.g. an image folder's or a run's test split.
        device: where the network runs.
        rows: stage rows, block rows or both (the all-blocks row is always there).
        control: also fix the gates at their mean activation over these images.
        progress: show a progress bar per pass.
    """
    model = subject.model
    plan = targets(model, rows)
    bar = progress_bar(progress)
    if bar is not None:
        bar.start()
    try:
        sums: dict[str, torch.Tensor] = {}
        with ExcitationProbe(model) as probe:

            def accumulate() -> None:
                for name, values in probe.values().items():
                    sums[name] = sums.get(name, 0) + values.double().sum(dim=0)
                probe.clear()

            intact = predict(model, batches, device, bar=bar, description="intact", after_batch=accumulate)
        means = {name: (total / intact.labels.size).float() for name, total in sums.items()}
        k = intact.top
        out: list[Row] = []
        for level, target, names in plan:
            for gate in ("1", "mean") if control else ("1",):
                values = {n: 1.0 if gate == "1" else means[n] for n in names}
                with GateOverride(model, values):
                    pred = predict(model, batches, device, bar=bar, description=f"{target} gate={gate}")
                out.append(_row(level, target, names, gate, intact, pred))  # type: ignore[arg-type]
    finally:
        if bar is not None:
            bar.stop()
    claim = tables()["text_se_last_stage_removal"]
    return {
        "model": subject.name,
        "options": subject.options,
        "weights": subject.source,
        "label": subject.label,
        "images": int(intact.labels.size),
        "intact": {"top1_err": error_rate(intact.wrong(1)).as_dict(),
                   f"top{k}_err": error_rate(intact.wrong(k)).as_dict()},
        "rows": [r.as_dict(k) for r in out],
        "method": METHOD,
        "interval": INTERVAL,
        "paper": [{"source": c["source"], "quote": c["quote"]} for c in claim],
    }  # fmt: skip


def _row(level: Any, target: str, names: list[str], gate: Gate, intact: Predictions, pred: Predictions) -> Row:
    k = intact.top
    wrong1, wrongk = pred.wrong(1), pred.wrong(k)
    return Row(level, target, names, gate, error_rate(wrong1), error_rate(wrongk),
               paired_change(intact.wrong(1), wrong1), paired_change(intact.wrong(k), wrongk))  # fmt: skip


def render(result: dict[str, Any]) -> str:
    """The knock-out as a plain-text table (one line per row), with the method and the paper's claim."""
    k = next(key for key in result["intact"] if key != "top1_err").removesuffix("_err")
    intact = result["intact"]
    lines = [
        f"{result['model']}: {result['label']}, {result['images']} images",
        f"intact: top-1 {intact['top1_err']['percent']:.2f}%, {k} {intact[f'{k}_err']['percent']:.2f}%",
        f"{'knocked out':12s} {'gate':4s} {'top-1 %':>7s} {'Δ top-1 [95% CI]':>24s} {'p':>6s} "
        f"{k + ' %':>7s} {'Δ ' + k + ' [95% CI]':>24s} {'p':>6s} {'worse/better (' + k + ')':>20s}",
    ]
    for r in result["rows"]:
        d1, dk = r["delta_top1"], r[f"delta_{k}"]
        lines.append(
            f"{r['target']:12s} {r['gate']:4s} {r['top1_err']['percent']:7.2f} "
            f"{d1['delta']:+7.2f} [{d1['low']:+6.2f}, {d1['high']:+6.2f}] {d1['p']:6.3f} "
            f"{r[f'{k}_err']['percent']:7.2f} {dk['delta']:+7.2f} [{dk['low']:+6.2f}, {dk['high']:+6.2f}] "
            f"{dk['p']:6.3f} {dk['worse']:>9d}/{dk['better']:<10d}"
        )
    lines.append(f"{result['method']}; errors: {result['interval']}")
    lines += [f"paper ({c['source']}): {c['quote']}" for c in result["paper"]]
    return "\n".join(lines)
