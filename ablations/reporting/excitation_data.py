"""What the role-of-excitation analysis (paper §7.2) works on and gives: a trained model to analyse (`Target`) and
its gate statistics over validation images (`Excitation`), apart so that the renderers need not import the analysis."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablations.config import RunConfig
from ablations.reporting.gate_stats import BlockStats


@dataclass(frozen=True)
class Target:
    """A trained model to analyse: its configuration and where its weights are."""

    config: RunConfig
    key: str  # trial key, the name of its run folder
    checkpoint: Path
    label: str  # how figures name it, e.g. "demo: sigmoid, seed 0"

    @property
    def model(self) -> str:
        """The label without its seed: the model every seed of it trains, e.g. "demo: sigmoid"."""
        return self.label.rsplit(", seed ", 1)[0]


@dataclass(frozen=True)
class Excitation:
    """Gate statistics of one model over validation images.

    Attributes:
        blocks: the last SE block of each stage, forward order (the ones Figs. 6-7 draw).
        classes: the classes drawn, as dataset class indices.
        images: images used per drawn class.
        mean, std: block → (classes, channels) per-class mean and std of the gate values.
        overall: block → (channels,) mean over every class (each class capped at the same image count).
        specificity: every SE block in forward order → the pooled, variance-weighted class share (blind to
            channels that barely vary; kept beside `stats` for comparison with earlier reports).
        eta: every SE block → (channels,) per-channel η² over every class (NaN for a constant channel).
        omega: every SE block → (channels,) per-channel ω², η² corrected for its bias.
        stats: every SE block → its ω² distribution, null, bootstrap interval and saturation.
        positions: every SE block → (stage, index in the stage), for mapping the paper's block names.
        hidden: every SE block → its bottleneck's hidden units (channels // r, as `hidden_width` rounds).
    """

    blocks: list[str]
    classes: list[int]
    images: list[int]
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    overall: dict[str, np.ndarray]
    specificity: dict[str, float]
    eta: dict[str, np.ndarray]
    omega: dict[str, np.ndarray]
    stats: dict[str, BlockStats]
    positions: dict[str, tuple[int, int]]
    hidden: dict[str, int]

    def scores(self) -> np.ndarray:
        """Every block's class-specificity (median ω²), forward order."""
        return np.array([s.median for s in self.stats.values()])
