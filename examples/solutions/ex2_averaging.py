"""Solution of exercise 2 (docs/exercises.md): polynomial-decay averaging of the iterates.

Where it goes: the class into ps_trainer/core/polyak.py, below `PolyakAverage`. A shard takes it as
`ShardState(..., averager=PolynomialAverage(eta=3.0))`: all a shard asks of an averager is
`weight(version)`. `install` does the same for tests/test_exercise_solutions.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PolynomialAverage:
    """Polynomial-decay averaging (Shamir & Zhang 2013, "Stochastic gradient descent for non-smooth
    optimization: convergence results and optimal averaging schemes"): after the n-th update
    avg <- avg + (eta + 1) / (n + eta) * (w - avg), so iterate i weighs about i**eta. eta = 0 is
    the running mean; a larger eta forgets the early, poor iterates faster."""

    eta: float = 3.0  # >= 0; 0 = running mean, 1 = weights proportional to the step
    start: int = 0  # version from which averaging starts; before it the average tracks the weights

    def __post_init__(self):
        if self.eta < 0:
            raise ValueError(f"PolynomialAverage: eta must be >= 0, got {self.eta}")
        if self.start < 0:
            raise ValueError(f"PolynomialAverage: start must be >= 0, got {self.start}")

    def weight(self, version: int) -> float:
        """Weight of the new weights after the update that produced `version` (1, 2, ...)."""
        n = version - self.start  # updates averaged so far, this one included
        if n <= 0:
            return 1.0  # not started: the average is the weights
        return (self.eta + 1.0) / (n + self.eta)


def install(monkeypatch) -> None:
    from ps_trainer.core import polyak

    monkeypatch.setattr(polyak, "PolynomialAverage", PolynomialAverage, raising=False)
