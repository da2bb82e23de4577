"""One optimisation step and one evaluation pass, as the engine runs them (the speed benchmarks step here too), and
the count of work done that a sweep's worker watches to tell a training that moves from one that hangs."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ablations.errors import SenetError

Autocast = Callable[[], AbstractContextManager[Any]]


@dataclass
class Progress:
    """Batches a run has processed (training steps and evaluation batches), counted as they happen: plain
    integers another thread may read (the sweep worker's heartbeat reports them and judges a stall by them; its
    progress file shows where the current epoch stands)."""

    steps: int = 0
    batch: int = 0  # training batches of the current epoch done
    batches: int = 0  # training batches in an epoch


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: Autocast = nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on the batch (x, y): forward and loss under `autocast`, gradients set to None,
    backward, optimizer step; returns (outputs, loss). The engine's loop and the speed benchmarks both step here."""
    with autocast():
        out = net(x)
        loss = criterion(out, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return out, loss


def _padded(x: torch.Tensor, size: int) -> torch.Tensor:
    """A short last batch padded with zero images to `size`: on a GPU every evaluation batch then has the shape
    cuDNN tuned for (a new shape is benchmarked again in every fresh process); in eval mode each image's output
    depends on that image alone, and the padding's outputs are dropped."""
    if len(x) >= size:
        return x
    layout = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else None
    pad = x.new_zeros((size - len(x), *x.shape[1:]))
    return torch.cat([x, pad.contiguous(memory_format=layout) if layout else pad])


@torch.no_grad()
def evaluate(
    net: nn.Module, loader: Any, autocast: Autocast = nullcontext, progress: Progress | None = None
) -> dict[str, float]:
    """Mean loss and top-1 / top-5 error (%) over a loader; top-5 becomes top-k for fewer than 5 classes.

    Sums stay on the device and are read once at the end: no host sync per batch.
    """
    net.eval()
    total: torch.Tensor | None = None
    count = 0
    full = 0
    for x, y in loader:
        full = full or len(x)
        with autocast():
            out = net(_padded(x, full) if x.is_cuda else x)[: len(x)]
        out = out.float()
        hits = out.topk(min(5, out.shape[1]), dim=1).indices == y[:, None]
        sums = torch.stack([F.cross_entropy(out, y, reduction="sum"), hits[:, 0].sum(), hits.any(dim=1).sum()])
        total = sums.double() if total is None else total + sums.double()
        count += y.numel()
        if progress is not None:
            progress.steps += 1
    if total is None or count == 0:
        raise SenetError("evaluation split is empty; give data subsets of at least one image")
    loss, top1, top5 = total.tolist()
    return {"loss": loss / count, "top1_err": 100.0 * (1 - top1 / count), "top5_err": 100.0 * (1 - top5 / count)}
