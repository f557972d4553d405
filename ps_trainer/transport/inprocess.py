"""The in-process transport: a PS client that calls `ShardState` objects directly.

Used by the optimizer-oracle tests, the single-process student example and the simulator. It has
the same calls as the Ray client (`pull`, `push`, `results`, `retire`), so the worker cannot tell
them apart. Worker threads sharing it may block in `pull` while a coordinating policy (SSP, BSP)
makes them wait.

Given `publishers` (one `core.publish.Publisher` per shard, shared by every client of the same
shards), it serves snapshots as the Ray shard does: a new one only every `every` versions and
`interval` seconds of its `clock` (the simulator's is virtual). Without, every pull reads the
current weights.
"""

from __future__ import annotations

import time

import numpy as np

from ..core.publish import Published, Publisher
from ..core.shard import PushResult, ShardState


class InProcessClient:
    def __init__(self, shards: list[ShardState], clock=time.perf_counter,
                 publishers: list[Publisher] | None = None):
        self.shards = shards
        self.clock = clock  # the simulator's is virtual: its waits are its own events
        self.publishers = publishers
        self.last_wait = 0.0  # s the last pull waited for the policy (per client: one per worker)

    def pull(self, averaged: bool = False, worker: int | None = None,
             clock: int = 0) -> list[tuple[np.ndarray, int]]:
        """`[weights | BatchNorm statistics]` and version of every shard; `worker` and `clock`
        (pushes it made) let a coordinating policy hold the pull until the worker may read."""
        t0 = self.clock()
        if worker is not None:
            for s in self.shards:
                while not s.wait_ready(worker, clock, timeout=1.0):
                    pass
        now = self.clock()
        self.last_wait = now - t0
        if self.publishers is None:
            return [s.snapshot(averaged, worker) for s in self.shards]
        return [self._published(s, p, averaged, worker, now)
                for s, p in zip(self.shards, self.publishers)]

    @staticmethod
    def _published(s: ShardState, publisher: Publisher, averaged: bool, worker: int | None,
                   now: float) -> tuple[np.ndarray, int]:
        def take(t: float) -> Published:
            arr, version = s.snapshot(averaged)
            arr.flags.writeable = False  # served to every reader, as the object store's is
            return Published(arr, version, t, arr)

        # A coordinating policy promises fresh weights to whoever it lets through (as on Ray).
        held = publisher.serve(averaged, s.version, now, s.policy.coordinates and not averaged, take)
        if worker is not None and s.policy.keeps_reads:
            s.note_read(worker, held.version, held.array)  # DC-ASGD: what this worker read
        return held.snapshot, held.version

    def push(self, shard: int, grad: np.ndarray, version_read: int, worker: int,
             bn_stats: np.ndarray | None) -> PushResult:
        # The shard applies synchronously; the "handle" is the result itself.
        return self.shards[shard].push(grad, version_read, worker, bn_stats, shard=shard)

    def results(self, handles: list) -> list[PushResult]:
        return list(handles)

    def retire(self, worker: int) -> None:
        for s in self.shards:
            s.retire(worker)
