"""The training engine: one run of one configuration, on CUDA when present, resumable from any epoch.

Data order, augmentation and model init are seeded, and every epoch ends with an atomic checkpoint holding
the model, optimizer, schedule and RNG states, so a killed run continues where it stopped and, on the CPU,
ends with the same weights as an uninterrupted one. The engine knows nothing of MLflow: the sweep runner
listens through `Callback`.
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ablations.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ablations.config import RunConfig, TrainSection
from ablations.data import build_data
from ablations.errors import SenetError
from senet_core import build_model, measure

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
FailureKind = Literal["oom", "data", "error"]


class Diverged(Exception):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"loss is not finite at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


class Callback:
    """Hooks the sweep runner uses to track a run; every method is optional."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Before the first epoch: params, gflops, device, resumed_from (epochs restored), config hash."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """After epoch `epoch` (1-based) is checkpointed."""

    def on_end(self, result: RunResult) -> None:
        """After the test evaluation, or right after divergence."""


@dataclass
class RunResult:
    """What one run produced.

    Attributes:
        status: `finished`, or `diverged` (a final result too: the configuration does not train).
        history: per-epoch metrics, epoch 1 first (restored epochs included after a resume).
        summary: final validation and test errors, best validation error and its epoch, cost and speed.
        resumed_from: epochs restored from a checkpoint (0 for a fresh run).
        diverged_epoch: the epoch whose loss became non-finite.
    """

    status: Literal["finished", "diverged"]
    history: list[dict[str, float]]
    summary: dict[str, float]
    resumed_from: int = 0
    diverged_epoch: int | None = None
    notes: list[str] = field(default_factory=list)


def failure_kind(exc: BaseException) -> FailureKind:
    """How the runner should treat an exception: retry alone (oom), report bad data, or retry/fail (error)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return "oom"
    if isinstance(exc, SenetError):
        return "data"
    return "error"


def pick_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise SenetError("train.device: 'cuda' requested but no CUDA device is visible; allowed here: auto, cpu")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


class Schedule:
    """Learning-rate multiplier per optimizer step: linear warm-up, then multistep, cosine, plateau or constant.

    A callable object (not a function) so that `LambdaLR.state_dict()` saves its plateau state with the
    checkpoint. Only plain numbers and strings are stored, as `torch.load(weights_only=True)` requires.
    """

    def __init__(self, cfg: TrainSection, steps_per_epoch: int) -> None:
        self.kind = cfg.schedule
        self.total = cfg.epochs * steps_per_epoch
        self.warm = round(cfg.warmup_epochs * steps_per_epoch)
        self.drops_at = [round(m * self.total) for m in cfg.milestones]
        self.gamma = cfg.gamma
        self.patience = cfg.plateau_patience
        self.max_drops = cfg.plateau_max_drops
        self.plateau_factor = 1.0
        self.best = math.inf
        self.bad_epochs = 0
        self.drops = 0

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warm) if self.warm else 1.0
        if self.kind == "cosine":
            base = 0.5 * (1 + math.cos(math.pi * min(step, self.total) / self.total))
        elif self.kind == "multistep":
            base = self.gamma ** sum(step >= d for d in self.drops_at)
        elif self.kind == "plateau":
            base = self.plateau_factor
        else:
            base = 1.0
        return warm * base

    def end_epoch(self, val_loss: float) -> None:
        """Plateau bookkeeping (He et al.'s "divide by 10 when the error plateaus"); a no-op for other kinds."""
        if self.kind != "plateau":
            return
        if val_loss < self.best * (1 - 1e-4):
            self.best, self.bad_epochs = val_loss, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.patience and self.drops < self.max_drops:
            self.plateau_factor *= self.gamma
            self.drops += 1
            self.bad_epochs = 0


@torch.no_grad()
def evaluate(net: nn.Module, loader: Any, autocast: Callable[[], Any]) -> dict[str, float]:
    """Mean loss and top-1 / top-5 error (%) over a loader; top-5 becomes top-k for fewer than 5 classes."""
    net.eval()
    loss = torch.zeros((), dtype=torch.float64)
    top1 = top5 = count = 0
    for x, y in loader:
        with autocast():
            out = net(x)
        out = out.float()
        loss += F.cross_entropy(out, y, reduction="sum").double().cpu()
        k = min(5, out.shape[1])
        hits = out.topk(k, dim=1).indices == y[:, None]
        top1 += int(hits[:, 0].sum())
        top5 += int(hits.any(dim=1).sum())
        count += y.numel()
    return {"loss": float(loss) / count, "top1_err": 100.0 * (1 - top1 / count), "top5_err": 100.0 * (1 - top5 / count)}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS on Linux (KiB)


def _summary(history: list[dict[str, float]], test: dict[str, float], params: int, gflops: float) -> dict[str, float]:
    last = history[-1]
    best = min(history, key=lambda m: m["val_top1_err"])
    return {
        "final_val_top1_err": last["val_top1_err"],
        "final_val_top5_err": last["val_top5_err"],
        "final_val_loss": last["val_loss"],
        "test_top1_err": test["top1_err"],
        "test_top5_err": test["top5_err"],
        "test_loss": test["loss"],
        "best_val_top1_err": best["val_top1_err"],
        "best_val_epoch": best["epoch"],
        "epochs": last["epoch"],
        "train_time_s": sum(m["epoch_time_s"] for m in history),
        "images_per_s": sum(m["epoch_images_per_s"] for m in history) / len(history),
        "peak_mem_mb": max(m["epoch_peak_mem_mb"] for m in history),
        "params": params,
        "gflops": gflops,
    }


def train(
    cfg: RunConfig,
    run_dir: Path | None = None,
    callbacks: Sequence[Callback] = (),
    log: Callable[[str], None] = print,
) -> RunResult:
    """Train and test one configuration; resume from `run_dir/checkpoint.pt` when it holds an earlier epoch.

    Args:
        cfg: the resolved configuration, seed included.
        run_dir: where the checkpoint and `result.json` go; None keeps nothing on disk (no resume).
        callbacks: listeners for start, every epoch and the end.
        log: where human-readable notes go (resume, a corrupt checkpoint, divergence).

    Raises:
        SenetError: bad data or device settings (the runner reports them as `data` failures).
    """
    t = cfg.train
    device = pick_device(t.device)
    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    channels_last = device.type == "cuda" if t.channels_last is None else t.channels_last
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(cfg.seed)
    data = build_data(
        cfg.data,
        batch_size=t.batch_size,
        eval_batch_size=t.eval_batch_size,
        device=device,
        channels_last=channels_last,
        seed=cfg.seed,
    )
    options = cfg.model_options(data.in_channels, data.num_classes)
    model = build_model(cfg.model.name, options)
    with torch.device("meta"):
        cost = measure(build_model(cfg.model.name, options), data.image_size, options["model.in_channels"])
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay
    )
    schedule = Schedule(t, len(data.train))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    digest = cfg.config_hash()
    history: list[dict[str, float]] = []
    notes: list[str] = []
    ckpt = run_dir / CHECKPOINT if run_dir is not None else None
    if ckpt is not None and ckpt.exists():
        try:
            state = load_checkpoint(ckpt)
            if state.get("config_hash") != digest or state.get("seed") != cfg.seed:
                raise CheckpointError(f"{ckpt}: belongs to another configuration or seed")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng_cpu"])
            if device.type == "cuda" and "rng_cuda" in state:
                torch.cuda.set_rng_state(state["rng_cuda"])
            history = list(state["history"])
            notes.append(f"resumed after epoch {state['epoch']} from {ckpt}")
        except CheckpointError as err:
            notes.append(f"{err}; restarting from scratch")
            ckpt.unlink()
        for note in notes:
            log(note)
    start = len(history)

    net = torch.compile(model) if t.compile else model
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    check_every = 1 if device.type == "cpu" else 25  # a host sync per step would stall the GPU
    info = {"params": cost.params, "gflops": cost.gflops, "device": str(device), "resumed_from": start,
            "config_hash": digest, "bf16": use_bf16, "channels_last": channels_last}  # fmt: skip
    for cb in callbacks:
        cb.on_start(info)

    for epoch in range(start, t.epochs):
        data.train.set_epoch(epoch)
        net.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for step, (x, y) in enumerate(data.train):
            with autocast():
                out = net(x)
                loss = criterion(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * y.numel()
            correct += (out.detach().argmax(1) == y).sum()
            seen += y.numel()
            if step % check_every == 0 and not torch.isfinite(loss_sum):
                return _diverged(cfg, epoch + 1, step, history, notes, start, callbacks, log, run_dir)
        if not torch.isfinite(loss_sum):
            return _diverged(cfg, epoch + 1, len(data.train), history, notes, start, callbacks, log, run_dir)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - began
        val = evaluate(net, data.val, autocast)
        schedule.end_epoch(val["loss"])
        metrics = {
            "epoch": epoch + 1,
            "train_loss": float(loss_sum) / seen,
            "train_top1_err": 100.0 * (1 - int(correct) / seen),
            "val_loss": val["loss"],
            "val_top1_err": val["top1_err"],
            "val_top5_err": val["top5_err"],
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_time_s": elapsed,
            "epoch_images_per_s": seen / elapsed,
            "epoch_peak_mem_mb": _peak_memory_mb(device),
        }
        history.append(metrics)
        if ckpt is not None:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "epoch": epoch + 1,
                "history": history,
                "config_hash": digest,
                "seed": cfg.seed,
            }
            if device.type == "cuda":
                state["rng_cuda"] = torch.cuda.get_rng_state(device)
            save_checkpoint(state, ckpt)
        for cb in callbacks:
            cb.on_epoch_end(epoch + 1, metrics)

    test = evaluate(net, data.test, autocast)
    result = RunResult("finished", history, _summary(history, test, cost.params, cost.gflops), start, None, notes)
    _finish(result, run_dir, callbacks)
    return result


def _diverged(
    cfg: RunConfig,
    epoch: int,
    step: int,
    history: list[dict[str, float]],
    notes: list[str],
    start: int,
    callbacks: Sequence[Callback],
    log: Callable[[str], None],
    run_dir: Path | None,
) -> RunResult:
    note = str(Diverged(epoch, step))
    log(f"diverged: {note}")
    summary = {"diverged_epoch": epoch, "epochs": epoch - 1}
    result = RunResult("diverged", history, summary, start, epoch, [*notes, note])
    _finish(result, run_dir, callbacks)
    return result


def _finish(result: RunResult, run_dir: Path | None, callbacks: Sequence[Callback]) -> None:
    if run_dir is not None:
        tmp = run_dir / f".{RESULT}.tmp"
        tmp.write_text(json.dumps(asdict(result), indent=1, sort_keys=True))
        tmp.replace(run_dir / RESULT)
    for cb in callbacks:
        cb.on_end(result)
