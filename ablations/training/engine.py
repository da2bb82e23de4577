"""The training engine: one run of one configuration, on CUDA when present, resumable from any epoch.

Data order, augmentation and model init are seeded, and every epoch ends with an atomic checkpoint holding
the model, optimizer, schedule and RNG states, so a killed run continues where it stopped and, on the CPU,
ends with the same weights as an uninterrupted one. The engine knows nothing of MLflow or the ledger: the sweep
listens through `Callback`. A long-lived worker passes a `Warm` cache so that consecutive runs reuse decoded
datasets and compiled models.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import nn

from ablations.config import RunConfig, TrainSection, check_graphs
from ablations.costs import network_cost
from ablations.data.build import DataCache, build_data
from ablations.errors import SenetError
from ablations.paths import CHECKPOINT
from ablations.training import group
from ablations.training.checkpoint import save_checkpoint
from ablations.training.ends import Diverged, Partial, Paused, _Pause
from ablations.training.graphs import GraphedStep, Tally, make_step
from ablations.training.result import RunResult, write_result
from ablations.training.resume import Run, restore, state_of
from ablations.training.schedule import Schedule
from ablations.training.steps import Autocast, Progress, evaluate
from ablations.weights import load_weights
from senet_core import build_model, init_by_name

# Messages of allocation failures that do not arrive as torch.OutOfMemoryError: cuBLAS and cuDNN workspaces
# fail inside their own libraries and surface as RuntimeError with their status names.
_OOM_TEXT = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed", "cudaerrormemoryallocation")


class Callback:
    """Hooks the sweep worker uses to track a run; every method is optional."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Before the first epoch: params, gflops, device, resumed_from (epochs restored), config hash."""

    def before_save(self, epoch: int) -> None:
        """Before the checkpoint of epoch `epoch` or the result (epoch 0) is written; raise to stop the run
        without writing it (e.g. the sweep's lease on it was lost)."""

    def pause_requested(self) -> bool:
        """Asked after every training step: True checkpoints the run where it stands, mid-epoch, and ends it with
        `Paused` (a preemption or a time limit whose grace is shorter than an epoch); resuming is exact."""
        return False

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """After epoch `epoch` (1-based) is checkpointed."""

    def on_end(self, result: RunResult) -> None:
        """After the test evaluation, or right after divergence."""


@dataclass
class Warm:
    """What a long-lived worker keeps from one run to the next.

    Attributes:
        data: decoded splits and scanned folders, by dataset, split and device (`build_data`'s cache).
        compiled: the architecture key, eager module and compiled module of the last compiled network; a run of
            the same architecture loads its freshly initialised weights into that module instead of compiling.
    """

    data: DataCache = field(default_factory=dict)
    compiled: tuple[str, nn.Module, nn.Module] | None = None


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure on the device, whichever library raised it (retried alone on its GPU)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError | MemoryError) and any(t in text for t in _OOM_TEXT)


def pick_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise SenetError("train.device: 'cuda' requested but no CUDA device is visible; allowed here: auto, cpu")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def _memory_mb(device: torch.device) -> float:
    """Peak device memory reserved by the caching allocator (what other trials cannot use), or this process's
    resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_reserved(device) / 2**20
    return psutil.Process().memory_info().rss / 2**20


def make_autocast(t: TrainSection, device: torch.device) -> Autocast:
    """The precision a run of `t` trains in on `device`: bf16 autocast (without its weight-cast cache under CUDA
    graphs, which must not keep it across replays), or none."""
    bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    if not bf16:
        return nullcontext
    cache = t.compile != "graphs"
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)


def make_optimizer(model: nn.Module, t: TrainSection, device: torch.device) -> torch.optim.SGD:
    """SGD as `t` sets it. On a GPU the fused SGD: one kernel for every parameter instead of a loop of them, and the
    only SGD whose learning rate a captured graph can read from a tensor. The CPU keeps the reference loop (its
    results stand)."""
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.SGD(
        model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay, **fused
    )


def _compiled(model: nn.Module, arch: str, mode: str, warm: Warm | None) -> tuple[nn.Module, nn.Module]:
    """(eager, compiled) for `model`: a warm worker's module of the same architecture gets `model`'s weights,
    so the graph compiled for an earlier seed is reused; another architecture resets the compiler first."""
    if warm is not None and warm.compiled is not None:
        if warm.compiled[0] == arch:
            eager, net = warm.compiled[1], warm.compiled[2]
            eager.load_state_dict(model.state_dict())
            return eager, net
        warm.compiled = None
        torch.compiler.reset()
    net = torch.compile(model, mode=None if mode == "default" else mode)
    if warm is not None:
        warm.compiled = (arch, model, net)
    return model, net


def _setup(cfg: RunConfig, warm: Warm | None) -> Run:
    """Device, data, a freshly initialised (seeded) model, optimizer and schedule for `cfg`."""
    t = cfg.train
    device = group.local_device(pick_device(t.device))
    check_graphs(t.model_copy(update={"device": device.type}))
    if device.type == "cuda":
        _cuda_settings()
    torch.manual_seed(cfg.seed)
    data = build_data(
        cfg.data, batch_size=t.batch_size, eval_batch_size=t.eval_batch_size, device=device,
        channels_last=bool(t.channels_last), seed=cfg.seed, drop_last=bool(t.drop_last),
        cache=warm.data if warm is not None else None, shard=group.shard(),
    )  # fmt: skip
    options = cfg.model_options(data.in_channels, data.num_classes)
    model = build_model(cfg.model.name, options)
    if cfg.model.weights is not None:
        # Fine-tuning from imported weights (model.weights, ablations.weights): loaded strictly over the init.
        # Its notes on options the source network computes differently with are the experiment's choice here.
        load_weights(model, cfg.model.weights, cfg.model.name, options)
    else:
        init_by_name(model, cfg.seed)  # common random numbers (issue 23): shared modules start identical
    torch.manual_seed(cfg.seed)  # the global stream (dropout) restarts at the seed, whatever the build drew
    cost = network_cost(cfg.model.name, options, data.image_size)
    model = model.to(device, memory_format=torch.channels_last if t.channels_last else torch.contiguous_format)
    net = model
    if t.compile not in ("off", "graphs"):
        # The mode is part of the key: a worker's reduce-overhead graph must not serve a default-mode trial.
        arch = json.dumps([cfg.model.name, options, str(device), bool(t.channels_last), t.compile], sort_keys=True)
        model, net = _compiled(model, arch, t.compile, warm)
    net = group.wrap(net, device)  # one replica of a DDP group (`train.devices`), or the network itself
    optimizer = make_optimizer(model, t, device)
    if len(data.train) == 0:
        raise SenetError(f"train.batch_size: {t.batch_size} leaves no full batch of {data.train_size} images")
    schedule = Schedule(t, len(data.train))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    autocast = make_autocast(t, device)
    tally = Tally(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    step = make_step(net, optimizer, criterion, autocast, tally, graphs=t.compile == "graphs")
    return Run(cfg, device, data, model, net, optimizer, schedule, scheduler, cost, autocast, cfg.config_hash(),
                tally, step)  # fmt: skip


@functools.cache
def _cuda_settings() -> None:
    """cuDNN autotuning, set once per process: each layer's algorithm is benchmarked on each new shape and kept
    for every later run of the warm worker; evaluation pads its short last batch (`steps.evaluate`) and CUDA graphs
    or compile drop the short last training batch, so a trial brings no new shapes after its first steps."""
    torch.backends.cudnn.benchmark = True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one_epoch(
    run: Run,
    epoch: int,
    first_step: bool,
    progress: Progress | None = None,
    partial: Partial | None = None,
    pause: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """Epoch `epoch` (0-based) and its validation; the metrics of the history. With `partial` the epoch goes on
    from a mid-epoch checkpoint; `pause()`, asked after every step, stops it there (`_Pause` carries where).

    The steps before the loop's steady state are timed on their own as `compile_time_s` and left out of images/s:
    with `first_step` (the first step this process trains, which compiles a compiled model) that step, and under
    `train.compile: graphs` every step up to and including the capture.

    Raises:
        Diverged: the loss became non-finite. On the CPU it is checked after every step; on a GPU the sums stay on
            the device and are read once at the end of the epoch (a host sync per step would stall the GPU), which
            still names the first step whose loss was not finite.
    """
    data, device = run.data, run.device
    first = partial.step if partial else 0
    data.train.set_epoch(epoch, first)
    run.net.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    tally = run.tally
    tally.reset()
    seen = skipped = 0
    began = time.perf_counter()
    compile_s = 0.0
    if partial is not None:  # a group's sums over its ranks, kept by rank 0 alone
        share = group.main()
        tally.restore(partial.loss_sum if share else 0.0, partial.correct if share else 0, partial.step)
        seen, skipped = (partial.seen, partial.skipped) if share else (0, 0)
        compile_s = partial.compile_s
        began -= partial.elapsed_s
    progress = progress or Progress()
    graphed = run.step if isinstance(run.step, GraphedStep) else None
    progress.batches = len(data.train)
    for step, (x, y) in enumerate(data.train, first):
        setting_up = (graphed is not None and not graphed.captured) or (
            step == first and first_step and run.cfg.train.compile not in ("off", "graphs")
        )
        run.step(x, y)
        progress.steps, progress.batch = progress.steps + 1, step + 1
        run.scheduler.step()
        seen += y.numel()
        if setting_up:
            _sync(device)
            compile_s, skipped = time.perf_counter() - began, seen
        if device.type == "cpu" and not group.active() and tally.first_bad() is not None:  # a group: at the end
            raise Diverged(epoch + 1, step)
        if pause is not None and step + 1 < len(data.train) and pause():
            bad = group.first_bad(tally)
            if bad is not None:
                raise Diverged(epoch + 1, bad)
            loss_sum, correct, seen, skipped = group.summed(*tally.read(), seen, skipped)
            elapsed = time.perf_counter() - began
            raise _Pause(Partial(epoch, step + 1, loss_sum, int(correct), int(seen), int(skipped), elapsed, compile_s))
    bad = group.first_bad(tally)
    if bad is not None:
        raise Diverged(epoch + 1, bad)
    _sync(device)
    elapsed = time.perf_counter() - began
    loss_sum, correct, seen, skipped = group.summed(*tally.read(), seen, skipped)  # every rank's images
    # eager: a compiled model would trace eval shapes; rank 0 of a group alone, its result broadcast
    val = group.from_main(lambda: evaluate(run.model, data.val, run.autocast, progress))
    run.schedule.end_epoch(val["loss"])
    metrics = {
        "epoch": epoch + 1,
        "train_loss": loss_sum / seen,
        "train_top1_err": 100.0 * (1 - correct / seen),
        "val_loss": val["loss"],
        "val_top1_err": val["top1_err"],
        "val_top5_err": val["top5_err"],
        "lr": run.optimizer.param_groups[0]["lr"],
        "epoch_time_s": elapsed,
        "epoch_images_per_s": (seen - skipped) / max(elapsed - compile_s, 1e-9),
        "epoch_peak_mem_mb": _memory_mb(device),
    }
    if compile_s:
        metrics["compile_time_s"] = compile_s
    return metrics


def _summary(run: Run, history: list[dict[str, float]], test: dict[str, float]) -> dict[str, float]:
    last = history[-1]
    best = min(history, key=lambda m: m["val_top1_err"])
    summary = {
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
        "params": run.cost.params,
        "gflops": run.cost.gflops,
    }
    compiled = [m["compile_time_s"] for m in history if "compile_time_s" in m]
    if compiled:
        summary["compile_time_s"] = sum(compiled)
    return summary


def train(
    cfg: RunConfig,
    run_dir: Path | None = None,
    callbacks: Sequence[Callback] = (),
    log: Callable[[str], None] = print,
    warm: Warm | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Train and test one configuration; resume from `run_dir/checkpoint.pt` when it holds an earlier epoch.

    Args:
        cfg: the resolved configuration, seed included.
        run_dir: where the checkpoint and `result.json` go; None keeps nothing on disk (no resume).
        callbacks: listeners for start, every epoch and the end.
        log: where human-readable notes go (resume, a corrupt checkpoint, divergence).
        warm: a long-lived worker's cache of datasets and compiled models; None builds everything afresh.
        progress: counts every training step and evaluation batch as it happens (a sweep worker watches it).

    Raises:
        SenetError: bad data or device settings (the sweep reports them as configuration errors).
    """
    if cfg.train.devices > 1 and not group.active():
        raise SenetError(f"train.devices: {cfg.train.devices} trains as a group of processes: start it with "
                         "ablations.training.ddp.train_trial (the sweep's workers do)")  # fmt: skip
    began = time.perf_counter()
    run = _setup(cfg, warm)
    ckpt = run_dir / CHECKPOINT if run_dir is not None else None
    run, history, notes, partial = restore(run, ckpt, log, lambda: _setup(cfg, warm))
    if not group.main():
        ckpt = run_dir = None  # rank 0 of a group writes the checkpoints and the result
    start = len(history)
    info = {"params": run.cost.params, "gflops": run.cost.gflops, "device": str(run.device), "resumed_from": start,
            "config_hash": run.digest, "precision": cfg.train.precision, "channels_last": cfg.train.channels_last,
            "compile": cfg.train.compile}  # fmt: skip
    for cb in callbacks:
        cb.on_start(info)
    asks = [cb for cb in callbacks if type(cb).pause_requested is not Callback.pause_requested]

    def pause() -> bool:
        return any(cb.pause_requested() for cb in asks)

    try:
        for epoch in range(start, cfg.train.epochs):
            resumed = partial if epoch == start else None
            try:
                metrics = train_one_epoch(run, epoch, epoch == start, progress, resumed, pause if asks else None)
            except _Pause as stop:
                for cb in callbacks:
                    cb.before_save(epoch)
                if ckpt is not None:
                    save_checkpoint(state_of(run, epoch, history) | {"partial": asdict(stop.partial)}, ckpt)
                raise Paused(epoch + 1, stop.partial.step) from None
            history.append(metrics)
            for cb in callbacks:
                cb.before_save(epoch + 1)
            if ckpt is not None:
                save_checkpoint(state_of(run, epoch + 1, history), ckpt)
            for cb in callbacks:
                cb.on_epoch_end(epoch + 1, metrics)
    except Diverged as err:
        log(f"diverged: {err}")
        summary = {"diverged_epoch": err.epoch, "epochs": err.epoch - 1}
        result = RunResult("diverged", history, summary, start, err.epoch, [*notes, str(err)])
    else:
        test = group.from_main(lambda: evaluate(run.model, run.data.test, run.autocast, progress))
        summary = _summary(run, history, test) | {"engine_s": time.perf_counter() - began}
        result = RunResult("finished", history, summary, start, None, notes)
    if run_dir is not None:
        for cb in callbacks:
            cb.before_save(0)
        write_result(result, run_dir)
    for cb in callbacks:
        cb.on_end(result)
    return result
