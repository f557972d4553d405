"""Controlled staleness for real runs and the simulator: stragglers and random extra delay.

Staleness in asynchronous SGD comes from workers running at different speeds, so the harness
injects exactly that, seeded so a run can be repeated:

- a straggler's step takes `slowdown` times as long as its computation (the last `stragglers`
  workers of a run, as in the backup-worker experiments of Chen et al. 2016);
- every step may also wait an extra random time: `constant`, `uniform` on [0, 2 * mean], or
  `exponential` with the given mean (a memoryless stall, as from a shared host).

Each kind of extra delay is one small function `kind(rng, mean) -> seconds` in `DELAYS`, drawing
from the worker's own seeded generator; `--delay KIND` names one (also list it in
`TrainConfig.CHOICES["delay"]`, which checks the flag before anything starts).

A real worker sleeps for the delay after computing; the simulator adds it to its virtual clock.
Both record it in the push rows (`delay` column).
"""

from __future__ import annotations

import numpy as np


def constant(rng: np.random.Generator, mean: float) -> float:
    return mean


def uniform(rng: np.random.Generator, mean: float) -> float:
    return float(rng.uniform(0.0, 2.0 * mean))


def exponential(rng: np.random.Generator, mean: float) -> float:
    return float(rng.exponential(mean))


# --delay KIND -> its draw: one extra delay in seconds with the given mean (> 0), from `rng`.
# Looked up at run time, so a kind added here (exercise 3 of docs/exercises.md) is usable at once.
DELAYS = {"constant": constant, "uniform": uniform, "exponential": exponential}


def delay_kinds() -> tuple[str, ...]:
    """The values `--delay` takes: none, then every kind in `DELAYS`."""
    return ("none", *DELAYS)


class StepDelay:
    """The extra time one worker's step takes, given how long its computation took."""

    def __init__(self, kind: str = "none", mean: float = 0.0, slowdown: float = 1.0, seed: int = 0):
        if kind not in delay_kinds():
            raise ValueError(f"--delay {kind!r} is not one of: {', '.join(delay_kinds())}")
        self.kind, self.mean, self.slowdown = kind, mean, slowdown
        self.rng = np.random.default_rng(seed)

    def __call__(self, compute_seconds: float) -> float:
        return (self.slowdown - 1.0) * compute_seconds + self.extra()

    def extra(self) -> float:
        if self.kind == "none" or self.mean <= 0:
            return 0.0
        return DELAYS[self.kind](self.rng, self.mean)

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
