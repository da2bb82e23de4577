"""What one run trains with (`Run`), what its checkpoint holds, and restoring a freshly built run from it (or
starting over when the checkpoint cannot serve)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ablations.config import RunConfig
from ablations.data.build import DataBundle
from ablations.errors import SenetError
from ablations.training import group
from ablations.training.checkpoint import CheckpointError, load_checkpoint, set_aside
from ablations.training.ends import Partial
from ablations.training.graphs import GraphedStep, Step, Tally
from ablations.training.schedule import Schedule
from ablations.training.steps import Autocast
from senet_core import Complexity


@dataclass
class Run:
    """Everything one run trains with, built by `_setup`."""

    cfg: RunConfig
    device: torch.device
    data: DataBundle
    model: nn.Module  # the eager module: checkpoints, evaluation
    net: nn.Module  # what trains: the model, or its compiled form
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scheduler: torch.optim.lr_scheduler.LambdaLR
    cost: Complexity
    autocast: Autocast
    digest: str
    tally: Tally  # the epoch's sums, on the device
    step: Step | GraphedStep  # one training step on a batch (captured as a CUDA graph under compile: graphs)


def restore(
    run: Run, ckpt: Path | None, log: Callable[[str], None], rebuild: Callable[[], Run]
) -> tuple[Run, list[dict[str, float]], list[str], Partial | None]:
    """Resume from the run's checkpoint when it holds an earlier epoch, or part of one, of this configuration and
    seed.

    A checkpoint this code cannot resume from (torn, refused by the safe unpickler, another network's state dict,
    another configuration or seed) is set aside beside it and the run starts over in this attempt, from a freshly
    built run (`rebuild()`): a refused state dict may already have overwritten part of the network before it was
    refused.

    Raises:
        SenetError: the checkpoint was written by a group of another size (`train.devices` is in the trial key, so
            only a checkpoint moved by hand gets here): its batches were split another way.
    """
    partial = None
    if ckpt is None or not ckpt.exists():
        return run, [], [], None
    try:
        state = load_checkpoint(ckpt)
        if state.get("config_hash") != run.digest or state.get("seed") != run.cfg.seed:
            raise CheckpointError(f"{ckpt}: belongs to another configuration or seed")
        if state.get("world", 1) != group.world():
            raise SenetError(f"train.devices: {ckpt} was written by a group of {state.get('world', 1)} devices, this "
                             f"attempt has {group.world()}; allowed: a resume at the same world size")  # fmt: skip
        try:
            run.model.load_state_dict(state["model"])
            run.optimizer.load_state_dict(state["optimizer"])
            run.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng_cpu"])
            if run.device.type == "cuda" and "rng_cuda" in state:
                torch.cuda.set_rng_state(state["rng_cuda"])
            history = list(state["history"])
            partial = Partial(**state["partial"]) if state.get("partial") else None
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
            cause = " ".join(str(err).split())[:200]  # one line: load_state_dict lists each mismatch on its own
            raise CheckpointError(f"{ckpt}: does not fit this code's network ({type(err).__name__}: {cause})") from None
        note = f"resumed after epoch {state['epoch']} from {ckpt}"
        if partial is not None:
            note = f"resumed in epoch {partial.epoch + 1} at step {partial.step} from {ckpt}"
    except CheckpointError as err:
        aside = set_aside(ckpt)
        note = f"{err}; set aside as {aside.name}, restarting from scratch"
        run, history, partial = rebuild(), [], None
    log(note)
    return run, history, [note], partial


def state_of(run: Run, epoch: int, history: list[dict[str, float]]) -> dict[str, Any]:
    """What a checkpoint holds after `epoch`: weights, optimizer, schedule and RNG states, the history so far."""
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "epoch": epoch,
        "history": history,
        "config_hash": run.digest,
        "seed": run.cfg.seed,
        "world": group.world(),
    }
    if run.device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(run.device)
    return state
