"""Learning-rate schedules, as functions of a shard's version (the number of updates it applied).

GoogLeNet: "decreasing the learning rate by 4% every 8 epochs" (Szegedy et al. 2014, sec. 6), i.e.
step decay with gamma = 0.96; a linear warm-up (Goyal et al. 2017) helps many workers start
together. Epochs are converted to updates by the trainer: one update = one pushed mini-batch,
or under BSP one step on K - b of them (`Policy.gradients_per_update`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    base_lr: float
    kind: str = "constant"  # 'constant' | 'step'
    gamma: float = 0.96  # multiplicative decay per `step_size` updates ('step' only)
    step_size: int = 1  # updates between decays ('step' only)
    warmup: int = 0  # updates of linear warm-up from base_lr / warmup to base_lr

    KINDS = ("constant", "step")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown lr schedule {self.kind!r}; choose one of: {', '.join(self.KINDS)}")
        if self.base_lr <= 0:
            raise ValueError(f"--lr must be > 0, got {self.base_lr}")
        if self.step_size < 1:
            raise ValueError(f"lr step size must be >= 1 update, got {self.step_size}")

    def __call__(self, version: int) -> float:
        lr = self.base_lr
        if self.kind == "step":
            lr *= self.gamma ** (version // self.step_size)
        if self.warmup and version < self.warmup:
            lr *= (version + 1) / self.warmup
        return lr
