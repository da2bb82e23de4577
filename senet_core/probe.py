"""Read the excitation (gate) values of every SE block by its paper name, e.g. SE_4_6 (paper §7.2, Figs. 6-7).

The probe attaches forward hooks only while it is open, so a model without a probe runs exactly as before and
the probe never changes the model's output.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING

import torch
from torch import nn

from senet_core.se import SEBlock

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11


def se_blocks(model: nn.Module) -> dict[str, SEBlock]:
    """The model's SE blocks by name, in forward order."""
    return {m.name: m for m in model.modules() if isinstance(m, SEBlock)}


class GateHooks:
    """Forward hooks on the gates of named SE blocks, attached only while the context is open.

    Subclasses say what each hook does (`_hook`); an unknown block name raises KeyError listing the model's blocks.
    """

    def __init__(self, model: nn.Module, names: Iterable[str] | None) -> None:
        blocks = se_blocks(model)
        wanted = list(names) if names is not None else list(blocks)
        missing = sorted(set(wanted) - set(blocks))
        if missing:
            raise KeyError(f"{missing[0]} is not an SE block of this model; blocks: {', '.join(blocks)}")
        self._blocks = {n: blocks[n] for n in wanted}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str, block: SEBlock) -> Callable[..., torch.Tensor | None]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for name, block in self._blocks.items():
            self._hooks.append(block.gate.register_forward_hook(self._hook(name, block)))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


class ExcitationProbe(GateHooks):
    """Context manager recording gate values per sample and channel for the named SE blocks.

    Example:
        >>> with ExcitationProbe(model, ["SE_4_6"]) as probe:
        ...     model(images)
        >>> probe.values()["SE_4_6"].shape  # (images, channels)

    Args:
        model: a model built by `build_model`.
        names: block names to record; None records every SE block. An unknown name raises KeyError listing the
            model's names.

    For NoSqueeze (one gate per position) the recorded value is the gate's spatial mean.
    """

    def __init__(self, model: nn.Module, names: list[str] | None = None) -> None:
        super().__init__(model, names)
        self._values: dict[str, list[torch.Tensor]] = defaultdict(list)

    def _hook(self, name: str, block: SEBlock) -> Callable[..., None]:
        def record(_module: nn.Module, _args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            self._values[name].append(out.detach().float().mean(dim=(2, 3)).cpu())

        return record

    def values(self) -> dict[str, torch.Tensor]:
        """Gate values recorded so far: name → (samples, channels)."""
        return {n: torch.cat(v) for n, v in self._values.items()}

    def clear(self) -> None:
        self._values.clear()
