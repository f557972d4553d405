"""Solution of exercise 3 (docs/exercises.md): a heavy-tailed (log-normal) step delay.

Where it goes: the function into ps_trainer/worker/delays.py, next to `exponential`, with
`"lognormal": lognormal` added to `DELAYS`, and "lognormal" added to `TrainConfig.CHOICES["delay"]`
in ps_trainer/config.py (which checks the flag before anything starts). Then
`ps-train --simulate --delay lognormal --delay-mean 0.005` runs it. `install` does the same for
tests/test_exercise_solutions.py.
"""

from __future__ import annotations

import math

import numpy as np


def lognormal(rng: np.random.Generator, mean: float, sigma: float = 1.0) -> float:
    """A log-normal stall with the given mean: exp(N(mu, sigma**2)) with
    mu = ln(mean) - sigma**2 / 2, so that E = exp(mu + sigma**2 / 2) = mean. Most steps wait less
    than the mean, a few far longer: the long tail of real machines (Dean & Barroso 2013, "The
    tail at scale")."""
    mu = math.log(mean) - sigma ** 2 / 2
    return float(rng.lognormal(mu, sigma))


def install(monkeypatch) -> None:
    from ps_trainer.config import TrainConfig
    from ps_trainer.worker import delays

    monkeypatch.setattr(delays, "lognormal", lognormal, raising=False)
    monkeypatch.setitem(delays.DELAYS, "lognormal", lognormal)
    kinds = TrainConfig.CHOICES["delay"]
    if "lognormal" not in kinds:
        monkeypatch.setitem(TrainConfig.CHOICES, "delay", (*kinds, "lognormal"))
