"""Reading a trained network back: its single-crop top-1 / top-5 error on an image folder with binomial 95%
intervals, and the released SENets' published errors beside (`senet-ablate evaluate`).

The protocol is the paper's (§5.1): shorter side resized to 256, the centre 224×224 crop, ImageNet mean/std.
The network is an imported one (`model.weights`: a file or `timm:NAME`) or a finished trial of a sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ablations.config import RunConfig
from ablations.data.imagenet import EvalFolder
from ablations.errors import SenetError
from ablations.paper import config_key, tables
from ablations.paths import CHECKPOINT, run_dir
from ablations.tracking import open_store, tracking_uri
from ablations.training.checkpoint import load_checkpoint
from ablations.weights import import_model
from senet_core import build_model, model_info
from senet_core.weights import EXTERNAL

CONFIDENCE = 0.95
INTERVAL = "Wilson score 95% interval (binomial, over images)"
TOP = 5  # top-5 error; top-k with k = the number of classes when there are fewer


@dataclass(frozen=True)
class Rate:
    """An error rate over images with its binomial 95% interval (Wilson score), in percent."""

    errors: int
    images: int
    low: float
    high: float

    @property
    def percent(self) -> float:
        return 100.0 * self.errors / self.images

    def as_dict(self) -> dict[str, float | int]:
        return {"percent": self.percent, "low": self.low, "high": self.high, "errors": self.errors,
                "images": self.images}  # fmt: skip

    def text(self) -> str:
        return f"{self.percent:6.2f} [{self.low:.2f}, {self.high:.2f}]"


def error_rate(wrong: np.ndarray) -> Rate:
    """The share of `wrong` images with statsmodels' Wilson interval (never outside [0, 100], never empty)."""
    from statsmodels.stats.proportion import proportion_confint

    errors, n = int(wrong.sum()), int(wrong.size)
    if n == 0:
        raise SenetError("--data: no image to evaluate")
    low, high = proportion_confint(errors, n, alpha=1 - CONFIDENCE, method="wilson")
    return Rate(errors, n, 100.0 * float(low), 100.0 * float(high))


@dataclass
class Predictions:
    """What a network predicted for each image: its label and its classes ranked best first."""

    labels: np.ndarray  # (images,) true model class indices
    ranked: np.ndarray  # (images, k) the k highest-scoring classes, best first

    def wrong(self, k: int) -> np.ndarray:
        """Per image: the label is not among the top `k` classes."""
        return ~(self.ranked[:, :k] == self.labels[:, None]).any(axis=1)

    @property
    def top(self) -> int:
        return int(self.ranked.shape[1])


def progress_bar(enabled: bool) -> Any:
    """A rich progress display on stderr, or None when disabled (not a terminal, --no-progress)."""
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)  # fmt: skip


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Any,
    device: torch.device,
    *,
    bar: Any = None,
    description: str = "images",
    after_batch: Callable[[], None] | None = None,
) -> Predictions:
    """Run every batch through `model` in eval mode (fp32) and keep the top-5 classes of each image.

    Args:
        model: the network.
        batches: a sized iterable of (images, model class indices) batches.
        device: where the network runs.
        bar: a `progress_bar` to show this pass on (None: silent).
        description: the pass's name on the bar.
        after_batch: called after each batch (e.g. to fold a probe's values into running sums).
    """
    model.eval().to(device)
    labels, ranked = [], []
    task = bar.add_task(description, total=len(batches)) if bar is not None else None
    for x, y in batches:
        out = model(x.to(device)).float()
        ranked.append(out.topk(min(TOP, out.shape[1]), dim=1).indices.cpu())
        labels.append(y.cpu())
        if after_batch is not None:
            after_batch()
        if task is not None:
            bar.advance(task)
    if task is not None:
        bar.remove_task(task)
    if not labels:
        raise SenetError("--data: no image to evaluate")
    return Predictions(torch.cat(labels).numpy(), torch.cat(ranked).numpy())


@dataclass
class Subject:
    """A trained network to read back and where it came from.

    Attributes:
        model: the network, eval mode, on the CPU.
        name: registry name (`se_` prefix for SE nets); options: its user-facing options.
        source: the weights (`model.weights` value) or `run <id>`; identity: what a trial key records of them.
        label: how outputs name it.
        config: the run's configuration, for a finished trial (its data is the default evaluation data).
        notes: options that differ from the network the weights come from.
    """

    model: nn.Module
    name: str
    options: dict[str, Any]
    source: str
    identity: str
    label: str
    config: RunConfig | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        fc = [m for m in self.model.modules() if isinstance(m, nn.Linear)][-1]
        return int(fc.out_features)


def imported(name: str | None, options: dict[str, Any], weights: str) -> Subject:
    """`--model/--set/--weights`: the network with imported weights (see `ablations.weights.import_model`)."""
    net = import_model(name, options, weights)
    label = f"{net.name} ({weights})"
    return Subject(net.model, net.name, net.options, weights, net.identity, label, None, net.notes)


def finished_run(run_id: str, results: Path, uri: str | None) -> Subject:
    """`--run RUN_ID`: a trial's network from its MLflow params and its checkpoint in `results/runs/<key>/`."""
    tracker = open_store(tracking_uri(uri, results), results)
    run, config = tracker.trial(run_id, "--run")
    key = run.key
    ckpt = run_dir(results, key) / CHECKPOINT
    if not ckpt.is_file():
        raise SenetError(f"--run: {ckpt}: no checkpoint of trial {key}; give the --results folder it trained in")
    state = load_checkpoint(ckpt)
    weights = state["model"]
    head = next(v for k, v in reversed(list(weights.items())) if k.endswith("weight") and v.ndim == 2)
    first = next(v for v in weights.values() if v.ndim == 4)
    options = config.model_options(int(first.shape[1]), int(head.shape[0]))
    name = config.model.name if not config.se.enabled else f"se_{config.model.name}"
    with torch.device("meta"):
        model = build_model(config.model.name, options)
    model.load_state_dict(weights, strict=True, assign=True)
    label = f"{run.label or key}, seed {run.seed} (run {run_id})"
    return Subject(model.eval(), name, options, f"run {run_id}", f"trial {key}", label, config)


def run_split(subject: Subject, split: str, batch_size: int) -> Any:
    """A finished trial's own `val` or `test` split (its data configuration, on the CPU)."""
    from ablations.data.build import build_data

    if subject.config is None:
        raise SenetError("--split: only a finished run (--run) has its own data; give --data imagefolder:DIR")
    cfg = subject.config
    data = build_data(cfg.data, batch_size=batch_size, device=torch.device("cpu"), seed=cfg.seed)
    return data.test if split == "test" else data.val


def published(subject: Subject) -> dict[str, Any] | None:
    """The released Caffe model of the same architecture with its published errors (the authors' README, not
    the paper's tables), and whether this configuration is that network."""
    if not subject.name.startswith("se_"):
        return None
    wanted = "SE-" + model_info(subject.name).paper_name
    row = next((r for r in tables()["readme_released_models_not_paper"] if r["model"].split(" (")[0] == wanted), None)
    if row is None:
        return None
    ours = config_key(subject.name, subject.options)
    same = any(config_key(e.model, dict(e.options)) == ours for e in EXTERNAL.values() if e.released)
    return {"model": row["model"], "top1_err": row["top1_err"], "top5_err": row["top5_err"],
            "source": "README of the authors' repository (released models, not the paper's tables)",
            "same_network": same}  # fmt: skip


def evaluate_folder(
    subject: Subject, folder: EvalFolder, *, batch_size: int, workers: int, device: torch.device, progress: bool
) -> dict[str, Any]:
    """Top-1 and top-5 error of `subject` on `folder` with intervals, as a JSON-ready dict."""
    bar = progress_bar(progress)
    if bar is not None:
        bar.start()
    try:
        pred = predict(subject.model, folder.batches(batch_size, workers), device, bar=bar, description="evaluate")
    finally:
        if bar is not None:
            bar.stop()
    return {
        "model": subject.name,
        "options": subject.options,
        "weights": subject.source,
        "weights_identity": subject.identity,
        "data": str(folder.root),
        "images": int(pred.labels.size),
        "class_folders": len(folder.folders),
        "imagenet_classes": folder.imagenet,
        "top1_err": error_rate(pred.wrong(1)).as_dict(),
        f"top{pred.top}_err": error_rate(pred.wrong(pred.top)).as_dict(),
        "interval": INTERVAL,
        "published": published(subject),
        "notes": subject.notes,
    }


def render(result: dict[str, Any]) -> str:
    """The evaluation as a few lines of text."""
    opts = " ".join(f"{k}={v}" for k, v in sorted(result["options"].items()))
    classes = "ImageNet classes by WordNet id" if result["imagenet_classes"] else "folders as classes 0, 1, ..."
    lines = [
        f"{result['model']} {opts}",
        f"weights: {result['weights']} ({result['weights_identity']})",
        f"data: {result['data']}: {result['images']} images in {result['class_folders']} folders ({classes})",
    ]
    for key in sorted(k for k in result if k.endswith("_err")):
        r = result[key]
        lines.append(f"{key.replace('_err', ''):5s} error {r['percent']:6.2f}%  95% CI [{r['low']:.2f}, "
                     f"{r['high']:.2f}]  ({r['errors']} of {r['images']})")  # fmt: skip
    lines.append(f"intervals: {result['interval']}")
    pub = result["published"]
    if pub is not None:
        same = "this configuration" if pub["same_network"] else "a different configuration of it"
        lines.append(f"published, released {pub['model']} ({same}): top-1 {pub['top1_err']:.2f}%, top-5 "
                     f"{pub['top5_err']:.2f}% ({pub['source']})")  # fmt: skip
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)
