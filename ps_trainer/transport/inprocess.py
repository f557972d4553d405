"""The in-process transport: a PS client that calls `ShardState` objects directly.

Used by the optimizer-oracle tests, the single-process student example and the simulator. It has
the same three calls as the Ray client (`pull`, `push`, `results`), so the worker cannot tell them
apart.
"""

from __future__ import annotations

import numpy as np

from ..core.shard import PushResult, ShardState


class InProcessClient:
    def __init__(self, shards: list[ShardState]):
        self.shards = shards

    def pull(self, averaged: bool = False) -> list[tuple[np.ndarray, int]]:
        """`[weights | BatchNorm statistics]` and version of every shard."""
        return [s.snapshot(averaged) for s in self.shards]

    def push(self, shard: int, grad: np.ndarray, version_read: int, worker: int,
             bn_stats: np.ndarray | None) -> PushResult:
        # The shard applies synchronously; the "handle" is the result itself.
        return self.shards[shard].push(grad, version_read, worker, bn_stats, shard=shard)

    def results(self, handles: list) -> list[PushResult]:
        return list(handles)
