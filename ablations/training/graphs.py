"""The whole training step as one CUDA graph (`train.compile: graphs`), and the running sums of an epoch kept on
the device so that the loop never waits for the GPU between steps.

A CIFAR ResNet-20 step is about 550 small kernels: eager, the host takes longer to launch them than the GPU to run
them at every batch up to 512. Captured once, the step is one `replay()`: forward, loss, backward, the fused SGD
step and the epoch's sums, with the batch copied into fixed input tensors. Following PyTorch's whole-network
capture recipe (CUDA semantics, "CUDA Graphs"): the first steps run eagerly on a side stream (cuDNN picks its
algorithms, the optimizer allocates its momentum), then the next one is captured and replayed. Every step, the
warm-up ones included, is a real step on a real batch, so the run trains on exactly the batches an eager run
sees. The learning rate is read from a device tensor that is filled before each replay, so the schedule moves
while the graph stays the same.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from ablations.training.steps import Autocast, train_step

WARMUP_STEPS = 3  # eager steps on a side stream before the capture (PyTorch's recipe uses 3 to 11)
Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Tally:
    """Loss sum, correct predictions and the first non-finite step of an epoch, accumulated on the device: read
    once at the end (`read`), or after every step on the CPU where reading costs nothing."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.bad_step = torch.full((), -1, device=device, dtype=torch.long)  # first step whose loss was not finite
        self.step = torch.zeros((), device=device, dtype=torch.long)

    def reset(self) -> None:
        """Zero the sums in place (a captured graph keeps adding into these very tensors)."""
        self.loss_sum.zero_()
        self.correct.zero_()
        self.bad_step.fill_(-1)
        self.step.zero_()

    def restore(self, loss_sum: float, correct: int, step: int) -> None:
        """The sums of a paused epoch's first `step` steps (its loss was finite: a paused run had not diverged)."""
        self.loss_sum.fill_(loss_sum)
        self.correct.fill_(correct)
        self.step.fill_(step)

    def add(self, out: torch.Tensor, loss: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss.detach().float()
        self.loss_sum += loss * y.numel()
        self.correct += (out.detach().argmax(1) == y).sum()
        self.bad_step.copy_(torch.where((self.bad_step < 0) & ~torch.isfinite(loss), self.step, self.bad_step))
        self.step += 1

    def first_bad(self) -> int | None:
        """The 0-based step of the epoch whose loss was first NaN or infinite, or None (a host sync)."""
        step = int(self.bad_step)
        return None if step < 0 else step

    def read(self) -> tuple[float, int]:
        """(loss sum, correct predictions) so far (a host sync)."""
        return float(self.loss_sum), int(self.correct)


class GraphedStep:
    """`train_step` plus `tally.add`, captured as one CUDA graph after `WARMUP_STEPS` eager steps and replayed for
    every later batch of the same shape (the loop drops the short last batch: `train.drop_last`).

    Attributes:
        replays: steps run by replaying the graph (the GPU tests count them).
        captured: the graph exists; the steps before it (warm-up and capture) are the run's set-up time.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: nn.Module,
        autocast: Autocast,
        tally: Tally,
    ) -> None:
        if not all(group.get("fused") for group in optimizer.param_groups):
            raise ValueError("a captured step needs the fused SGD, which reads its learning rate from a tensor")
        self.net, self.optimizer, self.criterion, self.autocast, self.tally = net, optimizer, criterion, autocast, tally
        self.graph: torch.cuda.CUDAGraph | None = None
        self.replays = 0
        self.eager = 0
        self._side = torch.cuda.Stream()
        self._lr: list[torch.Tensor] = []

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tallied_step(self.net, self.optimizer, self.criterion, self.autocast, self.tally, x, y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graph is not None and x.shape == self._x.shape:
            for tensor, group in zip(self._lr, self.optimizer.param_groups, strict=True):
                tensor.fill_(group["lr"])
            self._x.copy_(x)
            self._y.copy_(y)
            self.graph.replay()
            self.replays += 1
            return self._out, self._loss
        if self.graph is not None or self.eager < WARMUP_STEPS:
            return self._warm(x, y)  # a batch of another shape runs eagerly (a resumed epoch's tail, say)
        return self._capture(x, y)

    def _warm(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One eager step on the side stream (PyTorch's recipe: warm-up work must not run on the capturing one)."""
        self._side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._side):
            result = self._step(x, y)
        torch.cuda.current_stream().wait_stream(self._side)
        self.eager += 1
        return result

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Capture the step on fixed inputs holding this batch, then replay it once: this batch's real step."""
        self._x, self._y = x.clone(), y.clone()
        groups = self.optimizer.param_groups
        floats = [group["lr"] for group in groups]
        self._lr = [torch.tensor(float(lr), device=x.device) for lr in floats]
        self.optimizer.zero_grad(set_to_none=True)  # the gradients are allocated inside the graph's memory pool
        graph = torch.cuda.CUDAGraph()
        try:
            for group, tensor in zip(groups, self._lr, strict=True):
                group["lr"] = tensor
            with torch.cuda.graph(graph):
                self._out, self._loss = self._step(self._x, self._y)
        finally:
            for group, lr in zip(groups, floats, strict=True):
                group["lr"] = lr  # the scheduler and the checkpoints keep a float
        self.graph = graph
        graph.replay()
        self.replays += 1
        return self._out, self._loss


def make_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    autocast: Autocast,
    tally: Tally,
    graphs: bool,
) -> Step | GraphedStep:
    """The loop's step: captured as a CUDA graph with `graphs`, else `train_step` and `tally.add` eagerly."""
    if graphs:
        return GraphedStep(net, optimizer, criterion, autocast, tally)
    return functools.partial(tallied_step, net, optimizer, criterion, autocast, tally)


def tallied_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    autocast: Autocast,
    tally: Tally,
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`train_step` on (x, y), its loss and hits added to `tally`: what the loop runs eagerly and what a graph holds."""
    out, loss = train_step(net, optimizer, criterion, x, y, autocast)
    tally.add(out, loss, y)
    return out, loss
