"""Training steps as the engine runs them, and the fused SE epilogue experiment (benchmark-local).

`timed_step` calls the engine's own step (`ablations.training.steps.train_step`: forward and loss under autocast,
`zero_grad(set_to_none=True)`, backward, optimizer step), eager or captured as a CUDA graph, with the engine's
defaults: bf16 autocast and channels_last on CUDA, fp32 NCHW on the CPU, SGD with momentum 0.9 and weight decay
1e-4 (fused on CUDA).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import MethodType

import torch
from torch import nn

from ablations.training.graphs import GraphedStep, Tally
from ablations.training.steps import train_step
from senet_core import BasicBlock, Bottleneck

Batch = tuple[torch.Tensor, torch.Tensor]
STEP = "forward + backward + SGD step (momentum 0.9, weight decay 1e-4)"  # what one timed step does, for the report


@dataclass(frozen=True)
class Setup:
    """Device, precision and memory layout of a training step."""

    device: torch.device
    bf16: bool  # bf16 autocast; False = fp32
    channels_last: bool

    @classmethod
    def for_device(cls, device: torch.device) -> Setup:
        """The training engine's defaults: bf16 autocast and channels_last on CUDA, fp32 NCHW on the CPU."""
        cuda = device.type == "cuda"
        return cls(device, bf16=cuda, channels_last=cuda)

    def describe(self) -> str:
        precision = "bf16 autocast" if self.bf16 else "fp32"
        return f"{precision}, {'channels_last' if self.channels_last else 'NCHW'}"

    def autocast(self) -> AbstractContextManager[object]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def autocast_for_graphs(self) -> AbstractContextManager[object]:
        """bf16 autocast without its weight-cast cache, as the engine captures a step (`engine.make_autocast`)."""
        return (
            torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False) if self.bf16 else nullcontext()
        )

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def random_batch(setup: Setup, batch: int, size: int, num_classes: int, seed: int = 0) -> Batch:
    """Normal images and uniform labels on the device, laid out as the step expects."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=gen).to(setup.device, memory_format=setup.memory_format())
    y = torch.randint(0, num_classes, (batch,), generator=gen).to(setup.device)
    return x, y


def repeat(batch: Batch) -> Callable[[], Batch]:
    """The same batch at every call: a step that measures the model alone, with no data production."""
    return itertools.repeat(batch).__next__


def endless(loader: Iterable[Batch]) -> Iterator[Batch]:
    """Batches of `loader`, epoch after epoch (a DeviceLoader draws a new order and augmentation each pass)."""
    while True:
        yield from loader


def timed_step(
    model: nn.Module, batches: Callable[[], Batch], setup: Setup, *, compile: bool = False, graphs: bool = False
) -> Callable[[], None]:
    """One optimisation step of the engine per call on the next batch from `batches`; moves `model` to the device.

    The engine's optimizer (the fused SGD on CUDA, the reference loop on the CPU) and its step: `steps.train_step`,
    or with `graphs` the whole step captured as one CUDA graph and replayed (`graphs.GraphedStep`, what
    `train.compile: graphs` trains with; its first calls are the eager warm-up and the capture).

    Args:
        model: the network, in training mode from here on.
        batches: gives the (images, labels) of each step.
        setup: device, precision and layout.
        compile: wrap the model in `torch.compile` (mode default); the first calls compile it.
        graphs: capture the step as a CUDA graph (CUDA only).
    """
    model = model.to(setup.device).to(memory_format=setup.memory_format()).train()
    net = torch.compile(model) if compile else model
    cuda = setup.device.type == "cuda"
    # The learning rate does not change the cost of a step; a small one keeps random-label training finite
    # for the whole run, so no NaN or denormal arithmetic skews the timing.
    optimizer = torch.optim.SGD(
        model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4, **({"fused": True} if cuda else {})
    )
    criterion = nn.CrossEntropyLoss()
    if graphs:
        graphed = GraphedStep(net, optimizer, criterion, setup.autocast_for_graphs, Tally(setup.device))

        def replay() -> None:
            graphed(*batches())

        return replay

    def step() -> None:
        train_step(net, optimizer, criterion, *batches(), setup.autocast)

    return step


# ---- Fused SE epilogue ----------------------------------------------------------------------------------------
# The standard SE unit computes y = ReLU(F(x) * s + S(x)) in three passes over the feature map (scale, add,
# ReLU), each reading and writing it whole; the official Caffe code fused them into one layer (REFERENCE §6).
# Here the three become one function that inductor turns into one kernel forward and one backward, while the
# rest of the network stays eager. Under a whole-model torch.compile inductor sees the same graph either way and
# fuses these pointwise ops by itself, so the fused variant is only timed eager.


def scale_add_relu(branch: torch.Tensor, scale: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """ReLU(branch · scale + shortcut): the SE scaling, the residual sum and the unit's ReLU in one expression."""
    return torch.relu(branch * scale + shortcut)


# dynamic=False: one kernel specialised to each stage's shape, as a whole-model compile would make.
fused_scale_add_relu = torch.compile(scale_add_relu, dynamic=False)

Epilogue = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def fuse_se_epilogue(model: nn.Module, op: Epilogue = fused_scale_add_relu) -> int:
    """Make every residual unit with a `standard` SE block end in `op`; returns how many units changed.

    Only the instances in `model` change (their `forward` is replaced), never the senet_core classes.

    Raises:
        ValueError: `model` has no unit with a standard SE block.
    """

    def forward(unit: BasicBlock | Bottleneck, x: torch.Tensor) -> torch.Tensor:
        branch = unit.residual(x)
        assert unit.se is not None
        return op(branch, unit.se.excite(branch), unit.shortcut(x))

    units = [m for m in model.modules() if isinstance(m, BasicBlock | Bottleneck) and m.placement == "standard"]
    if not units:
        raise ValueError("no residual unit with a standard SE block to fuse")
    for unit in units:
        unit.forward = MethodType(forward, unit)  # type: ignore[method-assign]
    return len(units)
