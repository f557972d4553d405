"""Solution of exercise 1 (docs/exercises.md): a staleness policy, lr * exp(-staleness / tau).

Where it goes: the class into ps_trainer/core/policy.py, above `POLICIES` (add `import math` at the
top of that file), and `"staleness_exp": ExponentialStalenessLR` into `POLICIES`. Then
`ps-train --simulate --policy staleness_exp` runs it, and `pytest tests/test_exercises.py -k policy`
passes. `install` does the same for tests/test_exercise_solutions.py without editing the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ps_trainer.core.policy import APPLIED, SCALED, Decision, Policy


@dataclass
class ExponentialStalenessLR(Policy):
    """Scale the learning rate by exp(-staleness / tau): a smooth cousin of Zhang et al. 2016's
    lr / staleness ("Staleness-aware async-SGD"). A fresh gradient keeps the full rate; every tau
    versions of staleness cost another factor e."""

    tau: float = 4.0  # versions of staleness that divide the lr by e (about K workers' worth)
    name = "staleness_exp"

    def __post_init__(self):
        if not self.tau > 0:
            raise ValueError(f"staleness_exp: tau must be > 0, got {self.tau}")

    def decide(self, staleness: int) -> Decision:
        if staleness <= 0:
            return Decision(APPLIED)
        return Decision(SCALED, math.exp(-staleness / self.tau))


def install(monkeypatch) -> None:
    """Put the solution where the exercise says, for the duration of one test."""
    from ps_trainer.core import policy

    monkeypatch.setattr(policy, "ExponentialStalenessLR", ExponentialStalenessLR, raising=False)
    monkeypatch.setitem(policy.POLICIES, "staleness_exp", ExponentialStalenessLR)
