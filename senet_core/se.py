"""The Squeeze-and-Excitation block (Hu et al., TPAMI, §3) with every variant the paper ablates.

Squeeze (Table 11, 16), excitation gate (Table 12), reduction ratio (Table 10) and the FC biases that the
ablations removed (§6) are plain constructor options, so a variant differs from the standard block only in
the ablated part.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal, get_args

import torch
from torch import nn

from senet_core.errors import SenetError

Squeeze = Literal["avg", "max", "none"]
Excitation = Literal["sigmoid", "tanh", "relu"]
Placement = Literal["standard", "pre", "post", "identity", "inner"]
Rounding = Literal["floor", "divisible8"]

_GATES: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
# r per stage: (stage, r) pairs in stage order, r None where the stage has no SE block ("off")
PerStage = tuple[tuple[int, int | None], ...]
_REDUCTION_ALLOWED = "an integer >= 1, or a map stage -> integer >= 1 or off, e.g. {2: 8, 3: 16, 4: off}"


def _check_choice(field_name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        raise SenetError(f"{field_name}: {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class SEConfig:
    """Where SE blocks go and what they look like; user-facing names are `se.<field>`.

    Attributes:
        enabled: add SE blocks at all. False gives the baseline with the very same unit classes.
        reduction: r, the bottleneck ratio of the two FC layers (paper default 16): one for every stage, or per
            stage as a map stage -> r or off (None): `{2: 8, 3: 16}` puts SE blocks in stages 2 and 3 only, with
            8 and 16. Stored as (stage, r) pairs; `reduction_at` reads it.
        squeeze: `avg` (paper), `max` (Table 11) or `none` = NoSqueeze (Table 16).
        excitation: the gate after the second FC: `sigmoid` (paper), `tanh` or `relu` (Table 12).
        placement: `standard` (residual branch before the sum), `pre`, `post`, `identity` (Table 14) or
            `inner` (after the 3×3 conv, SE_3×3 of Table 15).
        stages: residual stages that get SE, numbered as in the paper (stage 1 is the stem); None means all.
        bias: FC biases. The paper's ablations removed them (§6); timm and the released Caffe models keep them.
        rounding: hidden width C/r as `floor` (paper) or `divisible8` (timm: nearest multiple of 8, min 8).
    """

    enabled: bool = True
    reduction: int | PerStage = 16  # channels per hidden unit of the first FC; a map (pairs): per stage
    squeeze: Squeeze = "avg"
    excitation: Excitation = "sigmoid"
    placement: Placement = "standard"
    stages: tuple[int, ...] | None = None
    bias: bool = True
    rounding: Rounding = "floor"

    def __post_init__(self) -> None:
        object.__setattr__(self, "reduction", parse_reduction(self.reduction))
        _check_choice("se.squeeze", self.squeeze, get_args(Squeeze))
        _check_choice("se.excitation", self.excitation, get_args(Excitation))
        _check_choice("se.placement", self.placement, get_args(Placement))
        _check_choice("se.rounding", self.rounding, get_args(Rounding))
        if self.stages is not None:
            stages = tuple(sorted(set(self.stages)))
            if any(isinstance(s, bool) or not isinstance(s, int) for s in stages):
                raise SenetError(f"se.stages: {self.stages!r} is not allowed; allowed: a list of stage numbers")
            object.__setattr__(self, "stages", stages)

    def replace(self, **changes: object) -> SEConfig:
        return replace(self, **changes)  # type: ignore[arg-type]

    def reduction_at(self, stage: int) -> int | None:
        """r of the SE blocks of `stage`; None where the stage has none (SE off, a stage left out by `stages`, or
        one a per-stage `reduction` does not give an r)."""
        if not self.enabled or (self.stages is not None and stage not in self.stages):
            return None
        if isinstance(self.reduction, int):
            return self.reduction
        return dict(self.reduction).get(stage)

    def active_in(self, stage: int) -> bool:
        """Whether units of `stage` get an SE block."""
        return self.reduction_at(stage) is not None


def parse_reduction(value: object) -> int | PerStage:
    """`se.reduction` as stored: an int, or (stage, r or None) pairs in stage order from a map or pairs."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        items = list(value)
    else:
        raise SenetError(f"se.reduction: {value!r} is not allowed; allowed: {_REDUCTION_ALLOWED}")
    pairs: dict[int, int | None] = {}
    for stage, r in items:
        if isinstance(stage, str) and stage.isdigit():  # JSON keys (`--set se.reduction={"2": 8}`)
            stage = int(stage)
        if isinstance(stage, bool) or not isinstance(stage, int):
            raise SenetError(f"se.reduction: stage {stage!r} is not a stage number; allowed: {_REDUCTION_ALLOWED}")
        if r is None or r is False or r == "off":  # YAML reads a bare `off` as false
            pairs[stage] = None
        elif isinstance(r, int) and not isinstance(r, bool) and r >= 1:
            pairs[stage] = r
        else:
            raise SenetError(f"se.reduction: stage {stage}: {r!r} is not allowed; allowed: an integer >= 1 or off")
    return tuple(sorted(pairs.items()))


SE_OFF = SEConfig(enabled=False)


def hidden_width(channels: int, reduction: int, rounding: Rounding = "floor") -> int:
    """Width of the SE bottleneck, never below 1.

    `floor` is the paper's C/r (integral for every ResNet-50 width). `divisible8` follows timm's
    `make_divisible(C / r, 8)`: round to the nearest multiple of 8, at least 8, and never more than 10% below
    C / r. On small CIFAR widths the two differ a lot (C=16, r=16: 1 vs 8 units).
    """
    if rounding == "floor":
        return max(1, channels // reduction)
    value = channels / reduction
    width = max(8, int(value + 4) // 8 * 8)
    if width < 0.9 * value:
        width += 8
    return width


class SEBlock(nn.Module):
    """Squeeze, excite, scale: x̃_c = s_c · x_c with s = gate(W2 · ReLU(W1 · squeeze(x))) (paper Eq. 2-4).

    The FCs are 1×1 convolutions, which is the same math as Linear layers on the pooled vector, keeps the
    block layout-agnostic (channels_last in, channels_last out) and lets NoSqueeze apply them at every position.

    Args:
        channels: C, the width of the feature map being recalibrated.
        reduction: r; the hidden width is `hidden_width(C, r, rounding)`.
        squeeze: `avg`, `max`, or `none` (NoSqueeze: no pooling, FCs at every spatial position, Table 16).
        excitation: gate nonlinearity, `sigmoid`, `tanh` or `relu` (Table 12).
        bias: FC biases on or off.
        rounding: `floor` or `divisible8`.

    Attributes:
        stage: the paper's stage number of the unit that holds the block (0 until a backbone places it).
        index: the unit's 1-based position within its stage (0 until placed).
        name: the paper's block name `SE_<stage>_<index>` (e.g. SE_4_6).
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        squeeze: Squeeze = "avg",
        excitation: Excitation = "sigmoid",
        bias: bool = True,
        rounding: Rounding = "floor",
    ) -> None:
        super().__init__()
        SEConfig(reduction=reduction, squeeze=squeeze, excitation=excitation, rounding=rounding)  # validates
        hidden = hidden_width(channels, reduction, rounding)
        self.channels = channels
        self.squeeze = squeeze
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=bias)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=bias)
        self.gate = _GATES[excitation]()
        self.stage = 0
        self.index = 0

    @classmethod
    def from_config(cls, channels: int, cfg: SEConfig, stage: int | None = None) -> SEBlock:
        """The block `cfg` gives a unit of `stage` (needed when `cfg.reduction` is per stage)."""
        if isinstance(cfg.reduction, int):
            reduction: int | None = cfg.reduction
        elif stage is None:
            raise ValueError("SEBlock.from_config: a per-stage se.reduction needs the stage")
        else:
            reduction = cfg.reduction_at(stage)
        if reduction is None:
            raise ValueError(f"SEBlock.from_config: stage {stage} has no SE block in {cfg}")
        return cls(
            channels,
            reduction=reduction,
            squeeze=cfg.squeeze,
            excitation=cfg.excitation,
            bias=cfg.bias,
            rounding=cfg.rounding,
        )

    def place(self, stage: int, index: int) -> SEBlock:
        """Record where the backbone put the block: `stage` in the paper's numbering, `index` counted from 1."""
        self.stage, self.index = stage, index
        return self

    @property
    def name(self) -> str:
        """`SE_<stage>_<index>`, the names of the paper's §7.2 (SE_2_3, SE_4_6, ...); empty until placed."""
        return f"SE_{self.stage}_{self.index}" if self.stage else ""

    def excite(self, x: torch.Tensor) -> torch.Tensor:
        """The gate values s: shape (N, C, 1, 1), or (N, C, H, W) for NoSqueeze."""
        if self.squeeze == "avg":
            z = x.mean(dim=(2, 3), keepdim=True)
        elif self.squeeze == "max":
            z = x.amax(dim=(2, 3), keepdim=True)
        else:
            z = x
        return self.gate(self.fc2(self.act(self.fc1(z))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excite(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, squeeze={self.squeeze!r}"

    def pool_and_scale_macs(self, height: int, width: int) -> int:
        """Multiply-adds of the pooling and scaling passes, which `torch.utils.flop_counter` does not see."""
        pool = 0 if self.squeeze == "none" else self.channels * height * width
        return pool + self.channels * height * width


def se_param_count(blocks_and_widths: list[tuple[int, int]], reduction: int, *, bias: bool = False) -> int:
    """Paper Eq. 5, (2/r) Σ_s N_s C_s², for N_s blocks of width C_s; exact for the paper's `floor` width.

    With `bias`, adds the FC biases (C/r + C per block) that Eq. 5 leaves out as "typically negligible".
    """
    total = 0
    for n, c in blocks_and_widths:
        hidden = hidden_width(c, reduction)
        total += n * (2 * c * hidden + ((hidden + c) if bias else 0))
    return total
