"""How many shards a run needs: K workers and S shards as a closed queueing network, on virtual
time, fed with measured costs (benchmarks/bench_scaling.py).

The simulator (`simulate.py`) runs the real workers and shards but gives a shard's work no
duration; here a push *occupies* its shard. Each shard is one FIFO server (its lock): a push of
the worker's gradient slice takes `shard_time` seconds of it (the update, and moving the bytes).
Each worker, as `worker.Worker` does with fetch_every = push_every = 1:

    begin step: read every shard's version (with `prefetch`: the read made when the step before began)
    compute `step_time` s, then push one slice to every shard at once (the pushes queue there)
    go on while at most `inflight` of its pushes are unacknowledged (`max_inflight`), else wait

A push is acknowledged when every shard has applied it. Staleness of a push at a shard = the
updates that shard applied before it - the version the worker read, as `core.shard` counts it.

This is the machine-repairman model (a finite population of K sources, "think" time `step_time`,
one server per shard; Kleinrock 1975, vol. 1, sec. 3.10): a shard saturates at 1 / shard_time
updates/s, so throughput is min(K / cycle, 1 / shard_time) for fixed times, cycle = step_time
(+ shard_time when a worker waits for its push, inflight = 0); with exponential times and one
shard it is the Engset/M/M/1//K formula (`machine_repairman_throughput`), which the tests check.
Not modelled: pull traffic beyond a fixed per-push cost, network latency, several threads per
shard, the driver. Runs in milliseconds, so K up to thousands is cheap.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScalingPoint:
    workers: int
    shards: int
    updates_per_s: float  # versions per second of each shard = worker steps per second, all workers
    ideal_per_s: float  # K / step_time: what the workers would do with an infinitely fast server
    staleness_mean: float  # over pushes after warm-up
    staleness_p99: float
    utilization: float  # fraction of the time a shard is busy (mean over shards)

    @property
    def efficiency(self) -> float:
        """updates/s as a fraction of the workers' own rate (1.0: the shards keep up)."""
        return self.updates_per_s / self.ideal_per_s


def simulate_scaling(workers: int, shards: int, step_time: float, shard_time: float, *,
                     inflight: int = 2, prefetch: bool = False, jitter: float = 0.0,
                     exponential: bool = False, steps: int | None = None,
                     warmup: float = 0.2, seed: int = 0) -> ScalingPoint:
    """Simulate `steps` worker steps in all (default max(50 K, 4000)) of K workers against S
    shards. Statistics are over a window of virtual time: from the first `warmup` fraction of it
    to the last step's beginning (after that, workers finish and the load falls).

    step_time: s of compute per step (drawn uniformly within +-`jitter` of it, or exponential);
    shard_time: s a push occupies one shard (fixed, or exponential with that mean)."""
    if workers < 1 or shards < 1 or step_time <= 0 or shard_time < 0 or inflight < 0:
        raise ValueError("need workers >= 1, shards >= 1, step_time > 0, shard_time >= 0, "
                         "inflight >= 0")
    rng = np.random.default_rng(seed)
    total = steps or max(50 * workers, 4000)

    def compute() -> float:
        if exponential:
            return float(rng.exponential(step_time))
        if jitter:
            return step_time * (1.0 + jitter * (2.0 * float(rng.random()) - 1.0))
        return step_time

    def service() -> float:
        return float(rng.exponential(shard_time)) if exponential else shard_time

    # With fixed service times every shard sees the same arrivals and does the same: one stands
    # for all. (Exponential ones differ, so each is simulated.)
    distinct = shards if exponential else 1
    ends = [[] for _ in range(distinct)]  # per shard: when each push it received is applied (FIFO)
    free = [0.0] * distinct  # when each shard finishes the work it has queued
    busy = [0.0] * distinct  # s of service each shard has been given
    acks = [deque() for _ in range(workers)]  # per worker: when its unacknowledged pushes are
    reads: list[list[int] | None] = [None] * workers  # versions the current step computes on
    prefetched: list[list[int] | None] = [None] * workers
    pushes: list[tuple[float, int]] = []  # (arrival, staleness) at every (distinct) shard
    events = [(0.0, 0, i, "begin") for i in range(workers)]  # (time, seq, worker, kind)
    heapq.heapify(events)
    seq, started, last_begin = workers, 0, 0.0
    while events:
        t, _, i, kind = heapq.heappop(events)
        if kind == "begin":
            if started >= total:
                continue
            started, last_begin = started + 1, t
            now = [bisect.bisect_right(e, t) for e in ends]  # versions applied by t
            reads[i] = (prefetched[i] or now) if prefetch else now
            prefetched[i] = now
            seq += 1
            heapq.heappush(events, (t + compute(), seq, i, "end"))
            continue
        # the step ends: one push to every shard, queued behind what each already has
        done = t
        for j in range(distinct):
            s = service()
            start = max(t, free[j])
            free[j] = start + s
            busy[j] += s
            pushes.append((t, len(ends[j]) - reads[i][j]))
            ends[j].append(free[j])
            done = max(done, free[j])
        acks[i].append(done)
        while len(acks[i]) > inflight:  # back-pressure: wait for the oldest acknowledgement
            t = max(t, acks[i].popleft())
        seq += 1
        heapq.heappush(events, (t, seq, i, "begin"))

    t0, t1 = warmup * last_begin, last_begin
    applied = sum(bisect.bisect_right(e, t1) - bisect.bisect_right(e, t0) for e in ends) / distinct
    late = np.array([s for a, s in pushes if t0 < a <= t1] or [0], dtype=float)
    rate = applied / (t1 - t0) if t1 > t0 else 0.0
    horizon = max(free)
    return ScalingPoint(workers, shards, rate, workers / step_time, float(late.mean()),
                        float(np.percentile(late, 99)),
                        min(1.0, sum(busy) / distinct / horizon) if horizon else 0.0)


def throughput_bound(workers: int, step_time: float, shard_time: float, inflight: int = 2) -> float:
    """The fixed-time answer: min(K / cycle, 1 / shard_time) updates/s, cycle = step_time, plus
    shard_time when a worker waits for its own push (inflight = 0)."""
    cycle = step_time + (shard_time if inflight == 0 else 0.0)
    return min(workers / cycle, 1.0 / shard_time if shard_time > 0 else math.inf)


def machine_repairman_throughput(workers: int, step_time: float, shard_time: float) -> float:
    """Exact throughput of K sources with exponential think time (mean step_time) and one
    exponential server (mean shard_time), a source waiting for its own request (M/M/1//K):
    X = (1 - p0) / shard_time, 1 / p0 = sum_k K! / (K - k)! * (shard_time / step_time)^k."""
    r, term, total = shard_time / step_time, 1.0, 1.0
    for k in range(1, workers + 1):
        term *= (workers - k + 1) * r
        total += term
    return (1.0 - 1.0 / total) / shard_time


def shards_needed(workers: int, step_time: float, shard_time_of, *, efficiency: float = 0.95,
                  most: int = 256, **options) -> int | None:
    """The fewest shards (1, 2, 3, ... up to `most`) at which K workers run at `efficiency` of
    their own rate, by simulation; `shard_time_of(S)`: s a push occupies a shard of P / S
    parameters. None if even `most` shards do not."""
    lo = 1
    while lo <= most:  # shard time falls with S: double until enough, then bisect
        if simulate_scaling(workers, lo, step_time, shard_time_of(lo), **options).efficiency \
                >= efficiency:
            break
        lo *= 2
    else:
        return None
    below = lo // 2
    while lo - below > 1:
        mid = (lo + below) // 2
        point = simulate_scaling(workers, mid, step_time, shard_time_of(mid), **options)
        if point.efficiency >= efficiency:
            lo = mid
        else:
            below = mid
    return lo
