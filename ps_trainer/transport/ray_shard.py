"""A parameter-server shard as a Ray actor, and the PS client workers use to reach it.

Hot path (see DESIGN.md): putting a large array into Ray's object store costs ten memcpys, while a
`ray.get` of numpy is zero-copy. So the shard does not re-serialize its weights for every pull: it
keeps one published snapshot per weight set (raw, Polyak) and hands the same object reference to
every worker that asks, publishing a new one only when the weights have moved by `publish_every`
versions (and `publish_interval` seconds have passed). Pushes arrive as numpy arguments (read
zero-copy). The actor is threaded: pulls are answered while a push is being applied, and the
shard's lock only guards the arrays while they change.

Recovery: Ray restarts a shard whose process died by re-running `__init__` with the original
arguments, and arguments that went through the object store may be gone by then
(ray-project/ray#53727). So a run's shards are created with small arguments only: the initial
weights come from the run's checkpoint folder, where the trainer writes checkpoint 0 (the initial
weights) before any shard starts. The first incarnation loads its slice of that; a restarted one
loads its slice of the *latest* checkpoint (or says it cannot, naming the file: it never quietly
starts again from the initial weights while the other shards keep theirs). Until the driver has
told it the highest version anyone saw (`finish_recovery`), it is *recovering*: worker pulls are
held (they retry) and pushes are rejected as `recovering` (counted), so no version number is ever
issued twice. Tests and benchmarks that never restart a shard may pass the arrays directly.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np
import ray

from ..core import push_kernel
from ..core.publish import Published, Publisher
from ..core.shard import PushResult, ShardState


# Snapshots up to this size are returned inside the pull's reply instead of through the object
# store: for a small model (digits_cnn: 226 KB) the second round trip cost more than the copy.
INLINE_BYTES = 1 << 20


@dataclass(frozen=True)
class Push:
    """One gradient on its way to a shard: `ShardState.push`'s arguments as one object, plus the
    pushing worker's clock (its pushes, this one included) for the pull an exchange answers with.

    One object because Ray serializes every argument of a call on its own: sent as one argument
    instead of six, a digits_cnn push's round trip took 5-10% less time, and the caller's CPU
    (which holds the worker's GIL) 7-20% less (benchmarks/bench_worker.py, `call_cost`)."""
    grad: np.ndarray
    version_read: int
    worker: int
    bn_stats: np.ndarray | None = None
    shard: int | None = None
    clock: int = 0


class ParameterServerShard:
    """Wraps one `ShardState`. Create with `ray.remote(ParameterServerShard).options(...)`."""

    def __init__(self, index: int, params: np.ndarray | None = None,
                 buffers: np.ndarray | None = None, *, optimizer, schedule, policy, averager,
                 publish_every: int = 1, publish_interval: float = 0.0, threads: int = 1,
                 checkpoints: str = "", sizes: tuple[int, int] = (0, 0), crash_at: int = 0,
                 one_pass: bool = True):
        import torch

        torch.set_num_threads(threads)
        with warnings.catch_warnings():  # Ray marks the property deprecated, with no successor yet
            warnings.simplefilter("ignore")
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self.recovering: dict | None = None
        self.sequence = None  # the checkpoint this shard's state came from
        self.crash_at = 0 if restarted else crash_at  # --crash-shard-at: exit at this version
        sd, error = (None, "") if params is not None else self._slice(index, checkpoints)
        if sd is not None:
            params, buffers = sd["params"], sd["buffers"]
        elif params is None:  # nothing to serve: hold every pull until the driver stops the run
            params, buffers = np.zeros(sizes[0], np.float32), np.zeros(sizes[1], np.float32)
        self.state = ShardState(index, params, buffers, optimizer=optimizer, schedule=schedule,
                                policy=policy, averager=averager, one_pass=one_pass)
        if sd is not None:
            self.state.load_state_dict(sd)
        if restarted or error:
            self.recovering = {"shard": index, "checkpoint": self.sequence,
                               "restored_version": self.state.version, "error": error}
        # One snapshot per weight set, republished every `publish_every` versions and
        # `publish_interval` s (the rule is core's, shared with the simulator's client).
        self.publisher = Publisher(publish_every, publish_interval)
        self.warming: threading.Thread | None = None  # compiling the push loop, at first
        if self.state.params.shape[0] >= push_kernel.MIN_SIZE:  # (smaller shards stay eager)
            self.warming = threading.Thread(target=self._warm, name="warm-push-loop", daemon=True)
            self.warming.start()

    def _warm(self) -> None:
        """Compile the push loop's variants while the workers start, not at the pushes."""
        opt, averaged = self.state.optimizer, self.state.average is not None
        if opt.compiled_push(self.state.params.shape[0], averaged):
            push_kernel.warm(opt.nesterov, averaged)
            self.state.fuses()  # builds the one-pass push's kernel (fused_push.py), where it will run

    def _slice(self, index: int, checkpoints: str, tries: int = 3) -> tuple[dict | None, str]:
        """This shard's state in the latest checkpoint under `checkpoints`, or (None, why not).
        Read again on failure: the driver may be replacing the latest one at this very moment."""
        from ..core import checkpoint

        error = f"no checkpoint folder was given to shard {index}"
        for attempt in range(tries if checkpoints else 0):
            try:
                states, meta = checkpoint.load(checkpoints)
                self.sequence = meta["sequence"]
                return next(sd for sd in states if sd["index"] == index), ""
            except (ValueError, OSError, StopIteration) as e:
                error = f"shard {index} cannot read its checkpoint: {e or 'not in it'}"
                time.sleep(0.5 * (attempt + 1))
        return None, error

    def recovery(self) -> dict | None:
        """What this shard was restored from, while it waits for `finish_recovery`; else None.
        A non-empty "error" means it could not restore its state and must not be used."""
        return self.recovering

    def finish_recovery(self, version: int, clocks: dict[int, int], retired=()) -> dict:
        """Continue from `version`, above every version issued before the restart, with each
        worker's count of pushes as the workers know it and the workers that have finished
        (the checkpoint's are older: SSP would wait for a finished worker, BSP count it)."""
        with self.state.cond:
            info = dict(self.recovering or {}, version=max(version, self.state.version))
            self.state.version = info["version"]
            for w, c in clocks.items():
                self.state.clocks[int(w)] = max(self.state.clocks[int(w)], int(c))
            self.state.cond.notify_all()
        for w in retired:
            self.state.retire(int(w))
        self.publisher.clear()
        self.recovering = None
        return info

    def pull(self, averaged: bool = False, worker: int | None = None, clock: int = 0,
             timeout: float = 1.0) -> tuple[int, list | np.ndarray, float] | None:
        """(version, [ref] or the array, seconds waited) of the current snapshot `[weights |
        BatchNorm statistics]`: the array itself when it is at most INLINE_BYTES.

        The reference is wrapped in a list so Ray hands it over as a reference, not its value.
        A worker's pull (`worker` given) first waits, up to `timeout` s, until the policy lets it
        read; None means "not yet, ask again" (so no actor thread is held for long)."""
        state = self.state
        t0 = time.perf_counter()
        if worker is not None and self.recovering:
            time.sleep(min(timeout, 0.05))
            return None  # ask again: the version to continue from is not known yet
        if worker is not None and not state.wait_ready(worker, clock, timeout):
            return None
        waited = time.perf_counter() - t0

        def take(now: float) -> Published:
            nbytes = 4 * (state.params.shape[0] + state.buffers.shape[0])
            if nbytes <= INLINE_BYTES or state.policy.keeps_reads:
                arr, version = state.snapshot(averaged)
                # A small snapshot travels inside the reply (one copy, no object-store entry and
                # no second round trip to fetch it). DC-ASGD compares against the snapshot each
                # worker read: keep it (not a copy).
                held = arr if nbytes <= INLINE_BYTES else [ray.put(arr)]
                return Published(held, version, now, arr if state.policy.keeps_reads else None)
            # A large one is put once and read zero-copy by all: straight from the shard's
            # storage, under its lock (Ray has copied it into the store when `put` returns).
            with state.lock:
                arr, version = state.publication(averaged)
                return Published([ray.put(arr)], version, now)

        # A coordinating policy promises fresh weights to whoever it lets through.
        held = self.publisher.serve(averaged, state.version, time.monotonic(),
                                    state.policy.coordinates and not averaged, take)
        if worker is not None and held.array is not None:
            state.note_read(worker, held.version, held.array)
        return held.version, held.snapshot, waited

    def retire(self, worker: int) -> None:
        self.state.retire(worker)

    def push(self, push: Push) -> PushResult:
        if self.crash_at and self.state.version >= self.crash_at:
            os._exit(1)  # a real process death, as a lost machine would be
        if self.recovering:
            return self.state.reject(push.worker, "recovering: restored from a checkpoint; the "
                                                  "gradient was computed on weights it no longer has")
        return self.state.push(push.grad, push.version_read, push.worker, push.bn_stats,
                               push.shard)

    def exchange(self, push: Push) -> tuple[PushResult, tuple | None]:
        """A push, then the pull that follows it, in one round trip: (the push's result, what
        `pull` returns: None if the worker must ask again). Downpour's worker pushes its gradient
        and then fetches fresh weights (Dean et al. 2012, sec. 4.1); done as two calls, that is
        two actor calls, two replies and two `ray.get`s per step. The pull carries the push's
        `clock`. Only for policies that never hold a pull."""
        result = self.push(push)
        return result, self.pull(False, push.worker, push.clock, timeout=0.0)

    def stats(self) -> dict:
        return {**self.state.stats(), "publications": self.publisher.publications,
                "recovering": self.recovering}

    def state_dict(self) -> dict | None:
        """The state to checkpoint, or None while recovering (a checkpoint must not mix this
        shard's restored past with the others' present)."""
        return None if self.recovering else self.state.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.state.load_state_dict(sd)
        self.publisher.clear()


class Stopped(Exception):
    """The worker was told to stop while a shard held its pull."""


class RayClient:
    """PS client over shard actor handles: pulls every shard concurrently, pushes asynchronously.

    A shard that dies is restarted by Ray, which retries the calls in flight to it; the snapshot
    a dead incarnation published dies with it (it owned the object), so a pull that finds its
    snapshot gone simply asks again. `stop` (a threading.Event): give up a held pull once set."""

    # The arrays `pull` returns are sealed objects of Ray's object store (or, for a small model,
    # this reply's own): nobody writes them again, so a CPU worker may compute on them in place.
    sealed_snapshots = True

    def __init__(self, shards: list, stop: threading.Event | None = None):
        self.shards = shards
        self.stop = stop
        self.last_wait = 0.0  # s the last pull waited for a coordinating policy

    def pull(self, averaged: bool = False, worker: int | None = None,
             clock: int = 0) -> list[tuple[np.ndarray, int]]:
        """Every shard's snapshot, requested concurrently; shards that hold the pull (for a
        coordinating policy, or while recovering) are asked again until they let it through."""
        return self.complete(None, averaged, worker, clock)

    def complete(self, metas: list | None, averaged: bool = False, worker: int | None = None,
                 clock: int = 0) -> list[tuple[np.ndarray, int]]:
        """The snapshots the shards' replies `metas` (from `pull`, or `exchange`) point to,
        asking again the shards that held the pull; None: ask every shard first."""
        t0 = time.perf_counter()
        retried = False
        while True:
            if metas is None:
                metas = ray.get([s.pull.remote(averaged, worker, clock) for s in self.shards])
            while any(m is None for m in metas):
                if self.stop is not None and self.stop.is_set():
                    raise Stopped()
                retried = True
                waiting = [i for i, m in enumerate(metas) if m is None]
                for i, m in zip(waiting, ray.get([self.shards[i].pull.remote(averaged, worker, clock)
                                                  for i in waiting])):
                    metas[i] = m
            try:
                refs = [m[1][0] for m in metas if isinstance(m[1], list)]
                got = iter(ray.get(refs))  # zero-copy, read-only numpy
                arrays = [m[1] if not isinstance(m[1], list) else next(got) for m in metas]
                break
            except ray.exceptions.ObjectLostError:  # its shard died after publishing it
                time.sleep(0.05)
                metas = None
        # The time the shards held it, not the round trip every pull pays.
        self.last_wait = (time.perf_counter() - t0 if retried
                          else max(m[2] for m in metas))
        return [(a, m[0]) for a, m in zip(arrays, metas)]

    def exchange(self, pushes: list[tuple], clock: int) -> tuple[list[PushResult], list]:
        """One push to every shard (`push`'s arguments, one tuple per shard, in shard order),
        each answered with its result and the shard's weights after it (`ParameterServerShard.
        exchange`): (the results, the pull replies for `complete`). One round trip per step.
        `clock`: the pushing worker's pushes, these included."""
        replies = ray.get([self.shards[shard].exchange.remote(Push(grad, version, worker, bn, shard,
                                                                    clock))
                           for shard, grad, version, worker, bn in pushes])
        return [r for r, _ in replies], [m for _, m in replies]

    def push(self, shard: int, grad: np.ndarray, version_read: int, worker: int,
             bn_stats: np.ndarray | None):
        # Ray copies `grad` into the object store now, so the caller may reuse its buffer.
        return self.shards[shard].push.remote(Push(grad, version_read, worker, bn_stats, shard))

    def results(self, handles: list) -> list[PushResult]:
        return ray.get(handles)

    def retire(self, worker: int) -> None:
        ray.get([s.retire.remote(worker) for s in self.shards])
