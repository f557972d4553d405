"""Polyak averaging of the parameter trajectory, kept on the server.

Polyak & Juditsky (1992) average the iterates; GoogLeNet used "Polyak averaging to create the final
model used at inference time" (Szegedy et al. 2014, sec. 6). Two forms are in use:
- running mean from a start update (the original; also SWA, Izmailov et al. 2018): decay=None;
- exponential moving average with a decay (Inception v3 / TensorFlow's ExponentialMovingAverage),
  with TF's warm-up `min(decay, (1 + n) / (10 + n))` so an early average is not dominated by the
  initialization.

Either way an update is one `lerp` of the average towards the new weights with weight `weight(n)`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PolyakAverage:
    decay: float | None = 0.999  # None: running mean; else exponential with this decay
    start: int = 0  # version from which averaging starts; before it the average tracks the weights

    def __post_init__(self):
        if self.decay is not None and not 0.0 < self.decay < 1.0:
            raise ValueError(f"--polyak-decay must be in (0, 1) or 'mean', got {self.decay}")
        if self.start < 0:
            raise ValueError(f"--polyak-start must be >= 0, got {self.start}")

    def weight(self, version: int) -> float:
        """Weight of the new weights after the update that produced `version` (1, 2, ...)."""
        n = version - self.start  # updates averaged so far, this one included
        if n <= 0:
            return 1.0  # not started: the average is the weights
        if self.decay is None:
            return 1.0 / n  # running mean of n iterates
        return 1.0 - min(self.decay, (1.0 + n) / (10.0 + n))
