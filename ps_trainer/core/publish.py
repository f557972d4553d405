"""When a shard publishes a new snapshot of its weights for workers to pull.

Serializing a shard's weights for every pull costs ten memcpys on Ray (DESIGN.md, the hot path),
so a shard keeps one published snapshot per weight set (raw, Polyak) and hands the same one to
every reader until the weights have moved by `every` versions and `interval` seconds have passed
(DistBelief's workers likewise fetched only every n_fetch steps, Dean et al. 2012). A coordinating
policy (SSP, BSP) promises fresh weights to whoever it lets through, so its raw reads always get
the latest version.

The rule is written once, here, and used by the Ray shard (real seconds, a snapshot in the object
store) and by the in-process client of the simulator (virtual seconds, the array itself), so a
sweep over `--publish-every` / `--publish-interval` has the same effect in both. Invariant: the
version served to a reader never decreases, and differs from the shard's by less than `every`
(unless `interval` holds it back, or the policy coordinates and it is always current).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    snapshot: object  # what readers get: the array itself, or a list holding its object reference
    version: int  # the shard version it holds
    time: float  # s (the publisher's clock: real or virtual) when it was taken
    array: object = None  # the array, when a policy must remember what each worker read (DC-ASGD)


class Publisher:
    """One shard's published snapshots and the rule for taking a new one (thread-safe)."""

    def __init__(self, every: int = 1, interval: float = 0.0):
        self.every = every  # versions between published snapshots
        self.interval = interval  # s, at least this long between publications
        self.held: dict[bool, Published] = {}  # averaged -> the snapshot served now
        self.publications = 0
        self.lock = threading.Lock()  # one publication at a time; readers of `held` share it

    def due(self, averaged: bool, version: int, now: float, fresh: bool) -> bool:
        """Must a reader at `now`, with the shard at `version`, get a new snapshot? `fresh`: the
        reader was promised the latest weights (a coordinating policy's worker)."""
        held = self.held.get(averaged)
        if held is None:
            return True
        if fresh:
            return version > held.version
        return version - held.version >= self.every and now - held.time >= self.interval

    def serve(self, averaged: bool, version: int, now: float, fresh: bool, take) -> Published:
        """The snapshot to hand out, publishing one first if it is due; `take(now)` makes it."""
        with self.lock:
            if self.due(averaged, version, now, fresh):
                self.held[averaged] = take(now)
                self.publications += 1
            return self.held[averaged]

    def clear(self) -> None:
        """Forget what was published (the shard's state was replaced): the next read publishes."""
        with self.lock:
            self.held.clear()
