"""Controlled staleness for real runs and the simulator: stragglers and random extra delay.

Staleness in asynchronous SGD comes from workers running at different speeds, so the harness
injects exactly that, seeded so a run can be repeated:

- a straggler's step takes `slowdown` times as long as its computation (the last `stragglers`
  workers of a run, as in the backup-worker experiments of Chen et al. 2016);
- every step may also wait an extra random time: `constant`, `uniform` on [0, 2 * mean], or
  `exponential` with the given mean (a memoryless stall, as from a shared host).

A real worker sleeps for the delay after computing; the simulator adds it to its virtual clock.
Both record it in the push rows (`delay` column).
"""

from __future__ import annotations

import numpy as np

DELAY_KINDS = ("none", "constant", "uniform", "exponential")


class StepDelay:
    """The extra time one worker's step takes, given how long its computation took."""

    def __init__(self, kind: str = "none", mean: float = 0.0, slowdown: float = 1.0, seed: int = 0):
        if kind not in DELAY_KINDS:
            raise ValueError(f"--delay {kind!r} is not one of: {', '.join(DELAY_KINDS)}")
        self.kind, self.mean, self.slowdown = kind, mean, slowdown
        self.rng = np.random.default_rng(seed)

    def __call__(self, compute_seconds: float) -> float:
        return (self.slowdown - 1.0) * compute_seconds + self.extra()

    def extra(self) -> float:
        if self.kind == "none" or self.mean <= 0:
            return 0.0
        if self.kind == "constant":
            return self.mean
        if self.kind == "uniform":
            return float(self.rng.uniform(0.0, 2.0 * self.mean))
        return float(self.rng.exponential(self.mean))

    @property
    def active(self) -> bool:
        return self.slowdown != 1.0 or (self.kind != "none" and self.mean > 0)


def worker_delays(cfg) -> list[StepDelay]:
    """One `StepDelay` per worker from the run's settings; the last `stragglers` are slowed."""
    first_slow = cfg.workers - cfg.stragglers
    return [StepDelay(cfg.delay, cfg.delay_mean,
                      cfg.straggler_slowdown if i >= first_slow else 1.0,
                      seed=(cfg.seed * 1_000_003 + i) & 0x7FFFFFFF)
            for i in range(cfg.workers)]
