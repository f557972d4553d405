"""Staleness policies: what a shard does with a push that was computed on old weights.

A policy is data, not a branch in the shard: `decide(staleness)` returns a `Decision` (the outcome
to record and the factor on the learning rate), and the shard applies it. Every push ends in exactly
one recorded outcome.

- `Async`: Downpour SGD applies every push as it arrives (Dean et al. 2012).
- `StalenessAwareLR`: divide the learning rate by the staleness, lr / max(1, tau)
  (Zhang, Gupta, Lian & Liu 2016, "Staleness-aware async-SGD").
- `DropStale`: reject pushes older than a bound (counted as 'rejected', never silently lost).
"""

from __future__ import annotations

from dataclasses import dataclass

APPLIED, SCALED, REJECTED = "applied", "scaled", "rejected"
OUTCOMES = (APPLIED, SCALED, "compensated", "waited", REJECTED)


@dataclass(frozen=True)
class Decision:
    outcome: str
    lr_scale: float = 1.0
    reason: str = ""


class Async:
    name = "async"

    def decide(self, staleness: int) -> Decision:
        return Decision(APPLIED)


@dataclass(frozen=True)
class StalenessAwareLR:
    name = "staleness_lr"

    def decide(self, staleness: int) -> Decision:
        if staleness <= 1:
            return Decision(APPLIED)
        return Decision(SCALED, 1.0 / staleness)


@dataclass(frozen=True)
class DropStale:
    max_staleness: int = 4
    name = "drop_stale"

    def decide(self, staleness: int) -> Decision:
        if staleness > self.max_staleness:
            return Decision(REJECTED, 0.0, f"staleness {staleness} > bound {self.max_staleness}")
        return Decision(APPLIED)


POLICIES = {"async": Async, "staleness_lr": StalenessAwareLR, "drop_stale": DropStale}


def make_policy(name: str, **options):
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}")
    return POLICIES[name](**options)
