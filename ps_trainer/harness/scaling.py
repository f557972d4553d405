"""How many shards a run needs: K workers and S shards as a closed queueing network, on virtual
time, fed with measured costs (benchmarks/bench_scaling.py).

The simulator (`simulate.py`) runs the real workers and shards but gives a shard's work no
duration; here a push *occupies* its shard. Each shard is one FIFO server (its lock): a push of
the worker's gradient slice takes `shard_time` seconds of it (the update, and moving the bytes).
With group commit (`ShardState.push`), a shard that comes free takes every push that queued
while it was busy and applies them in one pass, which costs less than one pass each: then
`shard_time` is a function of how many it takes. That is a batch-service queue (Bailey 1954's
bulk service): a shard's ceiling rises with the queue in front of it.
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
Closed with group commit and no think time, K pushes convoy: a push that finds the shard idle is
applied alone while the other K - 1 queue, and then they go together while it comes back alone:
groups of 1 and K - 1 in turn, K pushes per shard_time(1) + shard_time(K - 1) (tested; the
server-capacity benchmark saw exactly that at K = 4).
Not modelled: pull traffic beyond a fixed per-push cost, network latency, several threads per
shard, the driver. Runs in milliseconds, so K up to thousands is cheap.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Callable
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
    grouped: float = 0.0  # fraction of the pushes applied together with others (group commit)

    @property
    def efficiency(self) -> float:
        """updates/s as a fraction of the workers' own rate (1.0: the shards keep up)."""
        return self.updates_per_s / self.ideal_per_s


def simulate_scaling(workers: int, shards: int, step_time: float,
                     shard_time: float | Callable[[int], float], *, inflight: int = 2,
                     prefetch: bool = False, jitter: float = 0.0, exponential: bool = False,
                     steps: int | None = None, warmup: float = 0.2, seed: int = 0) -> ScalingPoint:
    """Simulate `steps` worker steps in all (default max(50 K, 4000)) of K workers against S
    shards. Statistics are over a window of virtual time: from the first `warmup` fraction of it
    to the last step's beginning (after that, workers finish and the load falls).

    step_time: s of compute per step (drawn uniformly within +-`jitter` of it, or exponential).
    shard_time: s a push occupies one shard, applied one at a time in arrival order; or a
    function k -> s a shard takes to apply k pushes together: group commit, as
    `ShardState.push` does it (a shard that comes free takes every push that queued meanwhile
    and applies them in one pass). Fixed, or exponential with that mean."""
    if workers < 1 or shards < 1 or step_time <= 0 or inflight < 0 or \
            (not callable(shard_time) and shard_time < 0):
        raise ValueError("need workers >= 1, shards >= 1, step_time > 0, shard_time >= 0, "
                         "inflight >= 0")
    rng = np.random.default_rng(seed)
    total = steps or max(50 * workers, 4000)
    together = callable(shard_time)
    time_of = shard_time if together else (lambda k: shard_time)

    def compute() -> float:
        if exponential:
            return float(rng.exponential(step_time))
        if jitter:
            return step_time * (1.0 + jitter * (2.0 * float(rng.random()) - 1.0))
        return step_time

    def service(k: int) -> float:
        mean = time_of(k)
        return float(rng.exponential(mean)) if exponential else mean

    # With fixed service times every shard sees the same arrivals and does the same: one stands
    # for all. (Exponential ones differ, so each is simulated.)
    distinct = shards if exponential else 1
    ends = [[] for _ in range(distinct)]  # per shard: when each push it applied was applied
    sizes = [[] for _ in range(distinct)]  # ... and with how many pushes together
    arrived = [0] * distinct  # pushes each shard received: the version the next one will make
    queued = [deque() for _ in range(distinct)]  # pushes waiting for their shard
    serving: list[list[int]] = [[] for _ in range(distinct)]  # pushes each shard is applying
    busy = [0.0] * distinct  # s of service each shard has been given
    owner: list[int] = []  # push -> its worker
    missing: list[int] = []  # push -> shards that have not applied it yet
    unacked = [deque() for _ in range(workers)]  # per worker: its pushes not yet applied everywhere
    waiting = [False] * workers  # held back by max_inflight
    reads: list[list[int] | None] = [None] * workers  # versions the current step computes on
    prefetched: list[list[int] | None] = [None] * workers
    pushes: list[tuple[float, int]] = []  # (arrival, staleness) at every (distinct) shard
    # (time, order, seq, kind, who): at one instant a shard's pushes are applied (order 0) before
    # anyone reads the versions or pushes (order 1)
    events = [(0.0, 1, i, "begin", i) for i in range(workers)]
    heapq.heapify(events)
    seq, started, last_begin = workers, 0, 0.0

    def at(t: float, order: int, kind: str, who: int) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, order, seq, kind, who))

    def serve(j: int, t: float) -> None:  # shard j is free at t: take what queued
        take = list(queued[j]) if together else [queued[j][0]]
        for _ in take:
            queued[j].popleft()
        serving[j] = take
        s = service(len(take))
        busy[j] += s
        at(t + s, 0, "applied", j)

    while events:
        t, _, _, kind, who = heapq.heappop(events)
        if kind == "applied":  # shard `who` finished what it was applying
            for p in serving[who]:
                ends[who].append(t)
                sizes[who].append(len(serving[who]))
                missing[p] -= 1
                if missing[p] == 0:  # applied everywhere: acknowledged (in order, FIFO shards)
                    i = owner[p]
                    unacked[i].remove(p)
                    if waiting[i] and len(unacked[i]) <= inflight:
                        waiting[i] = False
                        at(t, 1, "begin", i)
            serving[who] = []
            if queued[who]:
                serve(who, t)
            continue
        i = who
        if kind == "begin":
            if started >= total:
                continue
            started, last_begin = started + 1, t
            now = [len(e) for e in ends]  # versions applied by t
            reads[i] = (prefetched[i] or now) if prefetch else now
            prefetched[i] = now
            at(t + compute(), 1, "end", i)
            continue
        # the step ends: one push to every shard, queued behind what each already has
        p = len(owner)
        owner.append(i)
        missing.append(distinct)
        for j in range(distinct):
            pushes.append((t, arrived[j] - reads[i][j]))
            arrived[j] += 1
            queued[j].append(p)
            if not serving[j]:
                serve(j, t)
        unacked[i].append(p)
        if len(unacked[i]) > inflight:  # back-pressure: wait for the oldest acknowledgement
            waiting[i] = True
        else:
            at(t, 1, "begin", i)

    t0, t1 = warmup * last_begin, last_begin
    window = [(bisect.bisect_right(e, t0), bisect.bisect_right(e, t1)) for e in ends]
    applied = sum(b - a for a, b in window) / distinct
    together_n = sum(sum(k > 1 for k in z[a:b]) for z, (a, b) in zip(sizes, window)) / distinct
    late = np.array([s for a, s in pushes if t0 < a <= t1] or [0], dtype=float)
    rate = applied / (t1 - t0) if t1 > t0 else 0.0
    horizon = max(max(e, default=0.0) for e in ends)
    return ScalingPoint(workers, shards, rate, workers / step_time, float(late.mean()),
                        float(np.percentile(late, 99)),
                        min(1.0, sum(busy) / distinct / horizon) if horizon else 0.0,
                        together_n / applied if applied else 0.0)


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
