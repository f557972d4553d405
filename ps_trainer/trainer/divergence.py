"""Noticing that a run has diverged, so it stops with a message instead of burning a cluster.

One worker with a NaN loss is not a diverged run: its pushes are rejected by the shards (counted,
state unchanged) and the others carry on. A run has diverged when nearly every recent push is
non-finite: over the last `window` push rows, at least `fraction` have a non-finite loss or were
rejected for NaN/Inf gradients. Then the driver stops, and keeps its last *good* checkpoint: one
is only written while the recent pushes are healthy and every weight is finite.
"""

from __future__ import annotations

import math
from collections import deque


class DivergenceWatch:
    def __init__(self, window: int = 200, fraction: float = 0.9):
        self.window, self.fraction = window, fraction
        self.recent: deque = deque(maxlen=window)  # True for a non-finite push

    def add(self, rows: list[dict]) -> None:
        for r in rows:
            self.recent.append(not math.isfinite(r["loss"]) or "NaN or Inf" in (r["reason"] or ""))

    def bad_share(self) -> float:
        return sum(self.recent) / len(self.recent) if self.recent else 0.0

    def diverged(self) -> bool:
        return len(self.recent) == self.window and self.bad_share() >= self.fraction

    def healthy(self) -> bool:
        """Recent pushes are mostly finite: a checkpoint now would be a good one."""
        return self.bad_share() < 0.5

    def message(self) -> str:
        return (f"training diverged: {100 * self.bad_share():.0f}% of the last {len(self.recent)} "
                f"pushes had a non-finite loss or gradient (all rejected: no NaN reached the "
                f"weights); lower --lr, or raise --warmup-epochs")


class Diverged(RuntimeError):
    """The run stopped because it diverged; everything was written, `summary` says what it did."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary
