"""The role of excitation (paper §7.2, Figs. 6-7): what a trained model's SE gates do for images of different classes.

A trained trial's checkpoint is run over its validation split with the excitation probe on. For the last SE block
of each stage we plot the mean gate value per channel for a few classes against the all-class mean (Fig. 6) and
each class's mean ± std (Fig. 7). Beyond the paper, every block gets the distribution of its per-channel ω² (the
bias-corrected share of a channel's gate variance the class explains) against a label-permutation null, with a
bootstrap interval, and its saturation (`gate_stats`); a study's every finished reference seed is analysed and the
paper's relative claim, specificity growing with depth, tested over them (`excitation_seeds`, `depth_trend`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ablations.data.build import build_data
from ablations.errors import SenetError
from ablations.paths import CHECKPOINT, run_dir
from ablations.reporting import excitation_figures as figures
from ablations.reporting import excitation_markdown
from ablations.reporting.excitation_data import Excitation, Target
from ablations.reporting.excitation_seeds import full, pool, write_seeds
from ablations.reporting.figures import save
from ablations.reporting.gate_stats import (
    BOOTSTRAPS,
    PERMUTATIONS,
    block_stats,
    class_share,
    eta_squared,
    omega_squared,
)
from ablations.study.load import closure, shipped_names
from ablations.study.spec import StudySpec
from ablations.study.trials import Trial
from ablations.sweep.status import ReadOptions, study_status
from ablations.tracking import open_store, tracking_uri
from ablations.training.checkpoint import load_checkpoint
from ablations.training.result import read_result
from senet_core import ExcitationProbe, SEBlock, build_model, se_blocks

__all__ = ["Excitation", "Target", "class_share"]  # re-exported: they live in excitation_data and gate_stats

PER_CLASS = 50  # validation images per class, as in the paper's Figs. 6-7
MAX_CHANNELS = 64  # channels drawn per block (the paper samples 50); the statistics use them all
DEFAULT_CLASSES = 4  # classes drawn when none are named (the paper shows four)


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
    omega = {n: omega_squared(gates[n], labels) for n in names}
    positions = {n: (b.stage, b.index) for n, b in found.items()}
    hidden = {n: b.fc1.out_channels for n, b in found.items()}
    return Excitation(blocks, list(classes), images, mean, std, overall, share, eta, omega, summary, positions, hidden)


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
CSV_COLUMNS = ["block", "depth", "stage", "index", "channels", "hidden", "constant", "omega2_median", "omega2_q1",
               "omega2_q3", "omega2_median_ci_lo", "omega2_median_ci_hi", "null_median", "null_p95", "p",
               "permutations", "eta2_median", "mean_gate", "share_above_0.9", "pooled_class_share"]  # fmt: skip


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
        save(figures.excitation_eta2(blocks, ex.omega, ex.stats, title=f"Per-channel ω², saturation\n{label}"),
             out / "excitation_eta2.png"),
    ]  # fmt: skip
    lines = [",".join(CSV_COLUMNS)]
    for depth, (b, s) in enumerate(ex.stats.items(), 1):
        stage, index = ex.positions[b]
        values = [s.median, s.q1, s.q3, s.ci_lo, s.ci_hi, s.null_median, s.null_hi, s.p, s.permutations,
                  s.eta_median, s.mean_gate, s.saturated, s.pooled]  # fmt: skip
        lines.append(",".join([b, str(depth), str(stage), str(index), str(s.channels), str(ex.hidden[b]),
                               str(s.constant), *map(full, values)]))  # fmt: skip
    csv = out / BLOCKS_CSV
    csv.write_text("\n".join(lines) + "\n")
    return [*paths, csv]


def reference_trials(spec: StudySpec, trials: list[Trial]) -> list[Trial]:
    """Every seed of the study's reference configuration, by seed (for a study with includes: of the first
    included study that has one)."""
    for s in closure(spec):
        if not s.points() or not s.reference_keys():
            continue
        matches = [t for t in trials if s.name in t.studies and s.is_reference(t.config)]
        if matches:
            first = matches[0].config_hash
            return sorted((t for t in matches if t.config_hash == first), key=lambda t: t.seed)
    raise SenetError(f"{spec.where}: no reference configuration among its trials (the study varies no reference key)")


def reference_trial(spec: StudySpec, trials: list[Trial]) -> Trial:
    """The first seed of the study's reference configuration (`reference_trials`)."""
    return reference_trials(spec, trials)[0]


def finished(target: Target) -> bool:
    """Whether the target's run ended with weights worth reading: a checkpoint and a result that did not diverge
    (a running trial's checkpoint is mid-training, and has no `result.json` yet)."""
    result = read_result(target.checkpoint.parent)
    return target.checkpoint.is_file() and result is not None and result.diverged_epoch is None


def study_targets(spec: StudySpec, trials: list[Trial], results: Path) -> tuple[list[Target], list[Target]]:
    """The reference model's every seed, split into finished ones (to analyse) and the others (to name)."""
    targets = [Target(t.config, t.key, run_dir(results, t.key) / CHECKPOINT, f"{t.study}: {t.label}, seed {t.seed}")
               for t in reference_trials(spec, trials)]  # fmt: skip
    done = [t for t in targets if finished(t)]
    return done, [t for t in targets if t not in done]


def names_a_study(target: str) -> bool:
    """Whether `excitation TARGET` names a study (a shipped name or a YAML path) rather than an MLflow run id."""
    return target in shipped_names() or target.endswith((".yaml", ".yml")) or Path(target).is_file()


def resolve_targets(target: StudySpec | str, opts: ReadOptions) -> list[Target]:
    """A study → its reference configuration's finished seeds; an MLflow run id → that run."""
    if isinstance(target, StudySpec):
        trials, _ = study_status(target, opts)
        done, others = study_targets(target, trials, opts.results)
        if not done:
            raise SenetError(f"excitation: {others[0].checkpoint}: no finished run of the reference model; train the "
                             "trial first (senet-ablate sweep)")  # fmt: skip
        return done
    tracker = open_store(tracking_uri(opts.tracking_uri, opts.results), opts.results)
    allowed = ", ".join(shipped_names())
    run, config = tracker.trial(target, f"excitation: neither a study ({allowed}, or a .yaml path) nor a run id:")
    label = f"{run.label or run.key}, seed {run.seed}"
    return [Target(config, run.key, run_dir(opts.results, run.key) / CHECKPOINT, label)]


def analyze_target(target: Target, classes: list[int] | None) -> Excitation:
    """`analyze` on the target's trained model and validation split (`classes` as `pick_classes` takes them)."""
    model, loader, num_classes = load_model(target)
    return analyze(model, loader, pick_classes(classes, num_classes))


def excitation_report(target: StudySpec | str, opts: ReadOptions, out: Path, classes: list[int] | None) -> list[Path]:
    """`senet-ablate excitation RUN_ID_OR_STUDY`: Figs. 6-7, the ω²-and-saturation figure and the per-block CSV
    of the first model, and the depth trend over every model analysed (`excitation_seeds.write_seeds`).

    Args:
        target: an MLflow run id of a trial, or a loaded study (see `names_a_study`) whose reference model's
            every finished seed is analysed.
        opts: the results folder holding `runs/<trial key>/checkpoint.pt`, the stores, and the `--set` values the
            study was swept with (they change its trial keys).
        out: where the figures and the CSVs go.
        classes: class indices to draw; None = the first four.

    Raises:
        SenetError: an unknown run, a missing checkpoint, a model without SE, a bad class index.
    """
    targets = resolve_targets(target, opts)
    exs = [analyze_target(t, classes) for t in targets]
    trend = pool(exs, [t.config.seed for t in targets])
    return [*write(exs[0], out, targets[0].label), *write_seeds(trend, out, targets[0].model, exs)]


def report_section(spec: StudySpec, trials: list[Trial], results: Path, out: Path) -> tuple[list[str], list[Path]]:
    """The report's role of excitation over the reference model's every finished seed, with its files under
    `out`; or a line saying why it is missing."""
    lines = [excitation_markdown.EXCITATION_TITLE, ""]
    try:
        done, others = study_targets(spec, trials, results)
    except SenetError as err:
        return [*lines, f"Not drawn: {err}.", ""], []
    if not done:
        return [*lines, f"Not drawn: no finished run of the reference model `{others[0].key}` under `runs/`.", ""], []
    try:  # the dataset may be missing on this machine, or the reference model may have no SE block
        exs = [analyze_target(t, None) for t in done]
    except SenetError as err:
        return [*lines, f"Not drawn: {err}.", ""], []
    trend = pool(exs, [t.config.seed for t in done])
    paths = [*write(exs[0], out, done[0].label), *write_seeds(trend, out, done[0].model, exs)]
    return excitation_markdown.section(exs, done, trend, PER_CLASS, others), paths
