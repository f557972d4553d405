"""What the gRPC servicer serves: S shards, reached by per-shard calls (the route_guide pattern:
the servicer is a thin adapter over plain objects).

Two backends with the same calls:
- `LocalBackend`: `ShardState` objects in this process (`ps-train serve`). Snapshots are served
  the way the in-process client serves them (`core.publish.Publisher`, DC-ASGD's `note_read`),
  by the same code (`InProcessClient._published`).
- `RayBackend`: `ParameterServerShard` actor handles (`ps-train --serve-grpc`), so outside workers
  join a Ray run. Its pulls are the actor's own (one published snapshot per version, read
  zero-copy from the object store); `pull` returns None ("ask again") while the policy holds it.

Invariant: every push that names an existing shard ends in exactly one outcome recorded *by that
shard* (`push`, or `reject` for a stream refused before the shard could look at it), so the
shard's counters and its per-worker clocks (SSP, BSP) agree with what the worker sent.
"""

from __future__ import annotations

import time

import numpy as np

from ..core.publish import Publisher
from ..core.shard import PushResult, ShardState
from .inprocess import InProcessClient


class LocalBackend:
    """Shards held in this process; a thread per RPC, the update kernels release the GIL."""

    def __init__(self, shards: list[ShardState], publishers: list[Publisher] | None = None):
        self.shards = shards
        # One per shard, shared by every reader: a new snapshot only when the weights moved.
        self.publishers = publishers or [Publisher() for _ in shards]

    def sizes(self) -> list[tuple[int, int]]:
        """(parameters, BatchNorm statistics) of each shard."""
        return [(s.params.shape[0], s.buffers.shape[0]) for s in self.shards]

    def pull(self, shard: int, averaged: bool, worker: int | None, clock: int,
             timeout: float) -> tuple[np.ndarray, int, float] | None:
        """(snapshot `[weights | BatchNorm statistics]`, version, s held), or None when the
        policy still holds this worker after `timeout` s (ask again)."""
        s, t0 = self.shards[shard], time.perf_counter()
        if worker is not None and not s.wait_ready(worker, clock, timeout):
            return None
        waited = time.perf_counter() - t0
        arr, version = InProcessClient._published(s, self.publishers[shard], averaged, worker,
                                                  time.monotonic())
        return arr, version, waited

    def push(self, shard: int, grad: np.ndarray, version_read: int, worker: int,
             bn_stats: np.ndarray | None) -> PushResult:
        return self.shards[shard].push(grad, version_read, worker, bn_stats, shard=shard)

    def reject(self, shard: int, worker: int, reason: str) -> PushResult:
        return self.shards[shard].reject(worker, reason)

    def retire(self, worker: int) -> None:
        for s in self.shards:
            s.retire(worker)

    def clock(self, worker: int) -> tuple[int, bool]:
        """(pushes every shard recorded for `worker`: the least, whether it retired)."""
        return (min(s.clocks[worker] for s in self.shards),
                any(worker in s.retired for s in self.shards))

    def workers(self) -> set[int]:
        """Worker ids the shards know (e.g. those of a resumed run)."""
        return {int(w) for s in self.shards for w in (*s.clocks, *s.retired)}

    def stats(self) -> list[dict]:
        out = []
        for s, p in zip(self.shards, self.publishers):
            with s.lock:  # a push may be adding a worker to the counters being copied
                out.append({**s.stats(), "publications": p.publications})
        return out


# Run inside a ParameterServerShard actor (`actor.__ray_call__`): the actor has no method for
# these, and transport/ray_shard.py keeps its API.
def _actor_sizes(actor) -> tuple[int, int]:
    return actor.state.params.shape[0], actor.state.buffers.shape[0]


def _actor_reject(actor, worker: int, reason: str) -> PushResult:
    return actor.state.reject(worker, reason)


def _actor_clock(actor, worker: int) -> tuple[int, bool, list[int]]:
    s = actor.state
    return s.clocks[worker], worker in s.retired, [int(w) for w in (*s.clocks, *s.retired)]


class RayBackend:
    """`ParameterServerShard` actor handles of a running Ray job, in shard order."""

    def __init__(self, actors: list):
        import ray

        from .ray_shard import Push

        self.ray, self.Push = ray, Push
        self.actors = actors
        self._sizes = ray.get([a.__ray_call__.remote(_actor_sizes) for a in actors])

    def sizes(self) -> list[tuple[int, int]]:
        return [tuple(s) for s in self._sizes]

    def pull(self, shard: int, averaged: bool, worker: int | None, clock: int,
             timeout: float) -> tuple[np.ndarray, int, float] | None:
        got = self.ray.get(self.actors[shard].pull.remote(averaged, worker, clock, timeout))
        if got is None:
            return None
        version, held, waited = got
        if not isinstance(held, list):  # a small snapshot came inside the reply
            return held, version, waited
        return self.ray.get(held[0]), version, waited  # zero-copy, read-only numpy

    def push(self, shard: int, grad: np.ndarray, version_read: int, worker: int,
             bn_stats: np.ndarray | None) -> PushResult:
        # `.remote` serializes the arrays into the object store before it returns, so the
        # caller may reuse its buffers as soon as this returns.
        return self.ray.get(self.actors[shard].push.remote(self.Push(grad, version_read, worker,
                                                                bn_stats, shard)))

    def reject(self, shard: int, worker: int, reason: str) -> PushResult:
        return self.ray.get(self.actors[shard].__ray_call__.remote(_actor_reject, worker, reason))

    def retire(self, worker: int) -> None:
        self.ray.get([a.retire.remote(worker) for a in self.actors])

    def _clocks(self, worker: int) -> list:
        return self.ray.get([a.__ray_call__.remote(_actor_clock, worker) for a in self.actors])

    def clock(self, worker: int) -> tuple[int, bool]:
        got = self._clocks(worker)
        return min(c for c, _, _ in got), any(r for _, r, _ in got)

    def workers(self) -> set[int]:
        return {w for _, _, ws in self._clocks(-1) for w in ws}

    def stats(self) -> list[dict]:
        return self.ray.get([a.stats.remote() for a in self.actors])
