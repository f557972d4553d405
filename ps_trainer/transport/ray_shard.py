"""A parameter-server shard as a Ray actor, and the PS client workers use to reach it.

Hot path (see DESIGN.md): putting a large array into Ray's object store costs ten memcpys, while a
`ray.get` of numpy is zero-copy. So the shard does not re-serialize its weights for every pull: it
keeps one published snapshot per weight set (raw, Polyak) and hands the same object reference to
every worker that asks, publishing a new one only when the weights have moved by `publish_every`
versions (and `publish_interval` seconds have passed). Pushes arrive as numpy arguments (read
zero-copy). The actor is threaded: pulls are answered while a push is being applied, and the
shard's lock only guards the arrays while they change.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import ray

from ..core.shard import PushResult, ShardState


class ParameterServerShard:
    """Wraps one `ShardState`. Create with `ray.remote(ParameterServerShard).options(...)`."""

    def __init__(self, index: int, params: np.ndarray, buffers: np.ndarray, *, optimizer,
                 schedule, policy, averager, publish_every: int = 1,
                 publish_interval: float = 0.0, threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.state = ShardState(index, params, buffers, optimizer=optimizer, schedule=schedule,
                                policy=policy, averager=averager)
        self.publish_every = publish_every  # versions between published snapshots
        self.publish_interval = publish_interval  # s, at least this long between publications
        self._published: dict[bool, tuple] = {}  # averaged -> ([ref], version, time)
        self._publish_lock = threading.Lock()
        self.publications = 0

    def pull(self, averaged: bool = False) -> tuple[int, list]:
        """(version, [ref]) of the current snapshot `[weights | BatchNorm statistics]`.

        The reference is wrapped in a list so Ray hands it over as a reference, not its value."""
        with self._publish_lock:
            held = self._published.get(averaged)
            now = time.monotonic()
            if held is None or (self.state.version - held[1] >= self.publish_every
                                and now - held[2] >= self.publish_interval):
                arr, version = self.state.snapshot(averaged)
                held = ([ray.put(arr)], version, now)
                self._published[averaged] = held
                self.publications += 1
        return held[1], held[0]

    def push(self, grad: np.ndarray, version_read: int, worker: int,
             bn_stats: np.ndarray | None = None, shard: int | None = None) -> PushResult:
        return self.state.push(grad, version_read, worker, bn_stats, shard)

    def stats(self) -> dict:
        return {**self.state.stats(), "publications": self.publications}

    def state_dict(self) -> dict:
        return self.state.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.state.load_state_dict(sd)
        self._published.clear()


class RayClient:
    """PS client over shard actor handles: pulls every shard concurrently, pushes asynchronously."""

    def __init__(self, shards: list):
        self.shards = shards

    def pull(self, averaged: bool = False) -> list[tuple[np.ndarray, int]]:
        metas = ray.get([s.pull.remote(averaged) for s in self.shards])  # all shards at once
        arrays = ray.get([refs[0] for _, refs in metas])  # zero-copy, read-only numpy
        return [(a, v) for a, (v, _) in zip(arrays, metas)]

    def push(self, shard: int, grad: np.ndarray, version_read: int, worker: int,
             bn_stats: np.ndarray | None):
        # Ray copies `grad` into the object store now, so the caller may reuse its buffer.
        return self.shards[shard].push.remote(grad, version_read, worker, bn_stats, shard)

    def results(self, handles: list) -> list[PushResult]:
        return ray.get(handles)
