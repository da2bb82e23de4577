"""The learning-rate schedule of a run: linear warm-up, then multistep, cosine, plateau or constant."""

from __future__ import annotations

import math

from ablations.config import TrainSection


class Schedule:
    """Learning-rate multiplier per optimizer step, for `torch.optim.lr_scheduler.LambdaLR`.

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
