"""Weight initialisation shared by every backbone, from torch's global generator or keyed by seed and module name."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from senet_core.se import SEBlock


def init_weights(model: nn.Module) -> None:
    """He (Kaiming) normal init for convs (paper §5.1 cites He et al. 2015), unit BN, zero conv biases.

    Linear layers keep PyTorch's default init, as torchvision's ResNets do. A network built on the `meta` device
    (to count its cost) has no values to initialise: it is left as is, which also spares the 1.5 s that torch's
    first `normal_` on a meta tensor spends importing its decompositions.
    """
    if any(p.is_meta for p in model.parameters()):
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_by_name(model: nn.Module, seed: int) -> None:
    """Redraw every randomly initialised tensor of `model` from a generator keyed by (`seed`, the module's name).

    Common random numbers (issue 23): the backbones draw their initial weights from torch's global generator, so
    the SE blocks a variant builds shift every later draw, and a network without SE shared none of ResNet-20's 19
    conv weights with its SE version at the same seed; only the data order was common to a seed's pair. Here each
    module draws from its own generator, seeded by SHA-256 of the seed and its stable name (`stable_names`), so
    every module a variant shares with its reference (same name, same shape) starts identical at a seed whatever
    other modules exist. The distributions are those of the backbones: Kaiming normal (fan_out, ReLU) for convs,
    and for Linear layers PyTorch's default, Kaiming uniform (a=√5) weights and uniform ±1/√fan_in biases.

    The deterministic tensors are the constructor's and are left as they are: BN's ones and zeros (and the
    residual BN gammas `zero_init` zeroes), zero conv biases. A network on the `meta` device is left as is.

    Raises:
        ValueError: a module with parameters of a kind no backbone has (it would keep the global generator's draw).
    """
    if any(p.is_meta for p in model.parameters()):
        return
    for name, m in stable_names(model):
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=_generator(seed, name, m))
        elif isinstance(m, nn.Linear):
            gen = _generator(seed, name, m)
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
            if m.bias is not None:
                bound = 1 / math.sqrt(m.in_features) if m.in_features > 0 else 0.0
                nn.init.uniform_(m.bias, -bound, bound, generator=gen)
        elif not isinstance(m, nn.BatchNorm2d) and any(True for _ in m.parameters(recurse=False)):
            raise ValueError(f"{name} ({type(m).__name__}): no keyed initialisation for this kind of module")


def stable_names(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) for every module of `model`, named as in `named_modules()` except that an SE block inserted
    into an `nn.Sequential` (VGG's features) does not renumber its siblings: they are counted without SE blocks,
    and the block is named after the sibling before it, `<sibling>.se`, as the residual units name theirs."""
    yield from _walk(model, "")


def _walk(module: nn.Module, name: str) -> Iterator[tuple[str, nn.Module]]:
    yield name, module
    position, before = 0, ""
    for child_name, child in module.named_children():
        if isinstance(module, nn.Sequential):
            if isinstance(child, SEBlock):
                child_name = f"{before}.se" if before else "se"
            else:
                child_name, position, before = str(position), position + 1, str(position)
        yield from _walk(child, f"{name}.{child_name}" if name else child_name)


def _generator(seed: int, name: str, module: nn.Module) -> torch.Generator:
    """A generator on `module`'s device seeded by the first 63 bits of SHA-256 over `seed` and `name`."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    device = next(module.parameters()).device
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "big") >> 1)
