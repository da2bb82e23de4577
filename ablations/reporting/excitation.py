"""The role of excitation (paper §7.2, Figs. 6-7): what a trained model's SE gates do for images of different classes.

A trained trial's checkpoint is run over its validation split with the excitation probe on. For the last SE block
of each stage we plot the mean gate value per channel for a few classes against the all-class mean (Fig. 6) and
each class's mean ± std (Fig. 7). Beyond the paper, every block gets the distribution of its per-channel η² (the
share of a channel's gate variance the class explains) against a label-permutation null, with a bootstrap
interval, and its saturation (`gate_stats`): the paper reads early blocks as class-agnostic, later ones as
class-specific, and the very last ones as saturated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from ablations.config import RunConfig
from ablations.data.build import build_data
from ablations.errors import SenetError
from ablations.paths import CHECKPOINT, run_dir
from ablations.reporting import excitation_figures as figures
from ablations.reporting.figures import save
from ablations.reporting.gate_stats import (
    BOOTSTRAPS,
    PERMUTATIONS,
    BlockStats,
    block_stats,
    class_share,
    eta_squared,
)
from ablations.study.load import closure, shipped_names
from ablations.study.spec import StudySpec
from ablations.study.trials import Trial
from ablations.sweep.status import ReadOptions, study_status
from ablations.tracking import open_store, tracking_uri
from ablations.training.checkpoint import load_checkpoint
from senet_core import ExcitationProbe, SEBlock, build_model, se_blocks

__all__ = ["class_share"]  # re-exported: the pooled share lives in gate_stats

PER_CLASS = 50  # validation images per class, as in the paper's Figs. 6-7
MAX_CHANNELS = 64  # channels drawn per block (the paper samples 50); the statistics use them all
DEFAULT_CLASSES = 4  # classes drawn when none are named (the paper shows four)


@dataclass(frozen=True)
class Target:
    """A trained model to analyse: its configuration and where its weights are."""

    config: RunConfig
    key: str  # trial key, the name of its run folder
    checkpoint: Path
    label: str  # how figures name it, e.g. "demo: sigmoid, seed 0"


@dataclass(frozen=True)
class Excitation:
    """Gate statistics of one model over validation images.

    Attributes:
        blocks: the last SE block of each stage, forward order (the ones Figs. 6-7 draw).
        classes: the classes drawn, as dataset class indices.
        images: images used per drawn class.
        mean, std: block → (classes, channels) per-class mean and std of the gate values.
        overall: block → (channels,) mean over every class (each class capped at the same image count).
        specificity: every SE block in forward order → the pooled, variance-weighted class share (blind to
            channels that barely vary; kept beside `stats` for comparison with earlier reports).
        eta: every SE block → (channels,) per-channel η² over every class (NaN for a constant channel).
        stats: every SE block → its η² distribution, null, bootstrap interval and saturation.
        positions: every SE block → (stage, index in the stage), for mapping the paper's block names.
    """

    blocks: list[str]
    classes: list[int]
    images: list[int]
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    overall: dict[str, np.ndarray]
    specificity: dict[str, float]
    eta: dict[str, np.ndarray]
    stats: dict[str, BlockStats]
    positions: dict[str, tuple[int, int]]

    def depth_trend(self) -> float:
        """Spearman's ρ between depth and the median per-channel η² (NaN with < 2 blocks or all equal)."""
        scores = [s.median for s in self.stats.values()]
        if len(scores) < 2 or len(set(scores)) == 1 or any(np.isnan(scores)):
            return float("nan")
        return float(stats.spearmanr(range(len(scores)), scores).statistic)


def last_per_stage(blocks: Sequence[SEBlock]) -> list[str]:
    """The name of the last SE block of each stage, in stage order (the blocks Figs. 6-7 draw)."""
    last: dict[int, SEBlock] = {}
    for block in blocks:
        if block.stage not in last or block.index > last[block.stage].index:
            last[block.stage] = block
    return [last[s].name for s in sorted(last)]


def _balanced(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` images of every class, in loader order."""
    keep = np.zeros(len(labels), dtype=bool)
    for k in np.unique(labels):
        keep[np.flatnonzero(labels == k)[:per_class]] = True
    return np.flatnonzero(keep)


@torch.no_grad()
def analyze(
    model: torch.nn.Module,
    loader: Any,
    classes: Sequence[int],
    per_class: int = PER_CLASS,
    *,
    blocks: Sequence[str] | None = None,
    permutations: int = PERMUTATIONS,
    bootstraps: int = BOOTSTRAPS,
    seed: int = 0,
) -> Excitation:
    """Run `loader`'s images through `model` with the probe on every SE block and summarise the gates.

    Args:
        model: a trained model (put in eval mode here).
        loader: yields (images, labels) batches, e.g. a `DataBundle.val`.
        classes: the classes Figs. 6-7 draw.
        per_class: images per class used for every statistic (the first ones the loader yields).
        blocks: the blocks Figs. 6-7 draw; None = the last SE block of each stage.
        permutations, bootstraps, seed: the resampling of `gate_stats.block_stats` (seeded: equal runs, equal
            numbers).

    Raises:
        SenetError: the model has no SE blocks, or a drawn class has no validation image.
    """
    model.eval()
    found = se_blocks(model)
    names = list(found)
    if not names:
        raise SenetError("excitation: the model has no SE blocks (se.enabled is false)")
    ys = []
    with ExcitationProbe(model, names) as probe:
        for x, y in loader:
            model(x)
            ys.append(y.cpu())
    labels = torch.cat(ys).numpy()
    keep = _balanced(labels, per_class)
    labels = labels[keep]
    gates = {n: v.numpy()[keep].astype(np.float64) for n, v in probe.values().items()}
    missing = [k for k in classes if not (labels == k).any()]
    if missing:
        raise SenetError(f"--classes: class {missing[0]} has no image in the validation split")
    if blocks is None:
        blocks = last_per_stage(list(found.values()))
    elif unknown := [b for b in blocks if b not in found]:
        raise SenetError(f"excitation: {unknown[0]} is not an SE block of the model; blocks: {', '.join(names)}")
    blocks = list(blocks)
    mean = {b: np.stack([gates[b][labels == k].mean(axis=0) for k in classes]) for b in blocks}
    std = {b: np.stack([_std(gates[b][labels == k]) for k in classes]) for b in blocks}
    overall = {b: gates[b].mean(axis=0) for b in blocks}
    share = {n: class_share(gates[n], labels) for n in names}
    images = [int((labels == k).sum()) for k in classes]
    summary = {n: block_stats(gates[n], labels, permutations=permutations, bootstraps=bootstraps, seed=seed)
               for n in names}  # fmt: skip
    eta = {n: eta_squared(gates[n], labels) for n in names}
    positions = {n: (b.stage, b.index) for n, b in found.items()}
    return Excitation(blocks, list(classes), images, mean, std, overall, share, eta, summary, positions)


def _std(rows: np.ndarray) -> np.ndarray:
    return rows.std(axis=0, ddof=1) if len(rows) > 1 else np.zeros(rows.shape[1])


def load_model(target: Target) -> tuple[torch.nn.Module, Any, int]:
    """The trained model on the CPU, its validation loader and its dataset's class count."""
    if not target.checkpoint.is_file():
        raise SenetError(f"excitation: {target.checkpoint}: no checkpoint; train the trial first (senet-ablate sweep)")
    state = load_checkpoint(target.checkpoint)
    cfg = target.config
    data = build_data(
        cfg.data,
        batch_size=cfg.train.batch_size,
        eval_batch_size=cfg.train.eval_batch_size,
        device=torch.device("cpu"),
        seed=cfg.seed,
    )
    model = build_model(cfg.model.name, cfg.model_options(data.in_channels, data.num_classes))
    model.load_state_dict(state["model"])
    return model, data.val, data.num_classes


def pick_classes(classes: list[int] | None, num_classes: int) -> list[int]:
    """The named classes, checked against the dataset, or the first four."""
    if classes is None:
        return list(range(min(DEFAULT_CLASSES, num_classes)))
    if not classes:
        raise SenetError("--classes: give at least one class index")
    for k in classes:
        if not 0 <= k < num_classes:
            raise SenetError(f"--classes: {k} is not a class; allowed: 0..{num_classes - 1}")
    return list(dict.fromkeys(classes))


BLOCKS_CSV = "excitation_blocks.csv"
CSV_COLUMNS = ["block", "depth", "stage", "index", "channels", "constant", "eta2_median", "eta2_q1", "eta2_q3",
               "eta2_median_ci_lo", "eta2_median_ci_hi", "null_median", "null_p95", "p", "mean_gate",
               "share_above_0.9", "pooled_class_share"]  # fmt: skip


def write(ex: Excitation, out: Path, label: str, names: Sequence[str] | None = None) -> list[Path]:
    """Figs. 6 and 7, the η²-and-saturation figure and the per-block CSV under `out`; returns their paths.
    `names` name the drawn classes (default "class <index>")."""
    names = list(names) if names is not None else [f"class {k}" for k in ex.classes]
    shown = {b: slice(0, min(MAX_CHANNELS, ex.overall[b].shape[0])) for b in ex.blocks}
    mean = {b: ex.mean[b][:, shown[b]] for b in ex.blocks}
    std = {b: ex.std[b][:, shown[b]] for b in ex.blocks}
    overall = {b: ex.overall[b][shown[b]] for b in ex.blocks}
    blocks = list(ex.stats)
    paths = [
        save(figures.excitation_profiles(ex.blocks, names, mean, overall, title=f"Mean excitation per class: {label}"),
             out / "excitation_profiles.png"),
        save(figures.excitation_spread(ex.blocks, names, mean, std, title=f"Excitation mean ± std per class: {label}"),
             out / "excitation_spread.png"),
        save(figures.excitation_eta2(blocks, ex.eta, ex.stats, title=f"Per-channel class share, saturation\n{label}"),
             out / "excitation_eta2.png"),
    ]  # fmt: skip
    lines = [",".join(CSV_COLUMNS)]
    for depth, (b, s) in enumerate(ex.stats.items(), 1):
        stage, index = ex.positions[b]
        values = [s.median, s.q1, s.q3, s.ci_lo, s.ci_hi, s.null_median, s.null_hi, s.p, s.mean_gate, s.saturated,
                  s.pooled]  # fmt: skip
        lines.append(",".join([b, str(depth), str(stage), str(index), str(s.channels), str(s.constant),
                               *(f"{v:.6g}" for v in values)]))  # fmt: skip
    csv = out / BLOCKS_CSV
    csv.write_text("\n".join(lines) + "\n")
    return [*paths, csv]


def reference_trial(spec: StudySpec, trials: list[Trial]) -> Trial:
    """The first seed of the study's reference configuration (for a study with includes: of the first included
    study that has one)."""
    for s in closure(spec):
        if not s.points() or not s.reference_keys():
            continue
        matches = [t for t in trials if s.name in t.studies and s.is_reference(t.config)]
        if matches:
            first = matches[0].config_hash
            return min((t for t in matches if t.config_hash == first), key=lambda t: t.seed)
    raise SenetError(f"{spec.where}: no reference configuration among its trials (the study varies no reference key)")


def study_target(spec: StudySpec, trials: list[Trial], results: Path) -> Target:
    trial = reference_trial(spec, trials)
    label = f"{trial.study}: {trial.label}, seed {trial.seed}"
    return Target(trial.config, trial.key, run_dir(results, trial.key) / CHECKPOINT, label)


def names_a_study(target: str) -> bool:
    """Whether `excitation TARGET` names a study (a shipped name or a YAML path) rather than an MLflow run id."""
    return target in shipped_names() or target.endswith((".yaml", ".yml")) or Path(target).is_file()


def resolve_target(target: StudySpec | str, opts: ReadOptions) -> Target:
    """A study → its reference trial's first seed; an MLflow run id → that run."""
    if isinstance(target, StudySpec):
        trials, _ = study_status(target, opts)
        return study_target(target, trials, opts.results)
    tracker = open_store(tracking_uri(opts.tracking_uri, opts.results), opts.results)
    allowed = ", ".join(shipped_names())
    run, config = tracker.trial(target, f"excitation: neither a study ({allowed}, or a .yaml path) nor a run id:")
    label = f"{run.label or run.key}, seed {run.seed}"
    return Target(config, run.key, run_dir(opts.results, run.key) / CHECKPOINT, label)


def excitation_report(target: StudySpec | str, opts: ReadOptions, out: Path, classes: list[int] | None) -> list[Path]:
    """`senet-ablate excitation RUN_ID_OR_STUDY`: Figs. 6-7, the η²-and-saturation figure and the per-block CSV
    of one trained model.

    Args:
        target: an MLflow run id of a trial, or a loaded study (see `names_a_study`) whose reference trial's
            first seed is analysed.
        opts: the results folder holding `runs/<trial key>/checkpoint.pt`, the stores, and the `--set` values the
            study was swept with (they change its trial keys).
        out: where the figures and the CSV go.
        classes: class indices to draw; None = the first four.

    Raises:
        SenetError: an unknown run, a missing checkpoint, a model without SE, a bad class index.
    """
    resolved = resolve_target(target, opts)
    model, loader, num_classes = load_model(resolved)
    ex = analyze(model, loader, pick_classes(classes, num_classes))
    return write(ex, out, resolved.label)
