"""A soak test of the parameter server: many zero-compute workers hammer the shards.

K logical workers (threads, spread over a few Ray actor processes so that 32 of them fit on a
laptop) each loop: pull every `fetch_every` pushes, push a gradient to every shard, with at most
`max_inflight` pushes unacknowledged (the same back-pressure real workers use). A share of the
pushes is malformed on purpose (NaN), so the rejection path is under load too. It measures:

- accounting: pushes sent = the sum of the shards' outcomes (every one of policy.OUTCOMES, zeros
  included; with `Async` only applied and rejected occur), in all and per worker (nothing lost,
  nothing counted twice): `accounted` in the result;
- push latency (submit to acknowledgement) p50/p99, and throughput;
- memory: Ray object-store bytes in use and the shards' private resident memory, sampled every second,
  to show they stay flat (in-flight work is bounded by back-pressure, snapshots are shared).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from ..core import LRSchedule, NesterovMomentum, PolyakAverage
from ..core.policy import OUTCOMES, REJECTED, Async


class Hammer:
    """Zero-compute workers in one actor process, one thread each."""

    def run(self, shards: list, worker_ids: list[int], seconds: float, sizes: list[int],
            max_inflight: int = 2, fetch_every: int = 4, bad_every: int = 20) -> dict:
        import ray

        from ..transport.ray_shard import RayClient

        rng = np.random.default_rng(worker_ids[0])
        grads = [rng.standard_normal(n).astype(np.float32) * 1e-3 for n in sizes]
        bad = [g.copy() for g in grads]
        for b in bad:
            b[0] = np.nan
        out = {}

        def loop(w: int) -> None:
            client = RayClient(shards)
            versions, inflight, lat, sent = [0] * len(shards), [], [], 0
            deadline = time.time() + seconds
            while time.time() < deadline:
                if sent % fetch_every == 0:
                    versions = [v for _, v in client.pull(worker=w, clock=sent)]
                g = bad if bad_every and sent % bad_every == bad_every - 1 else grads
                t = time.perf_counter()
                inflight.append((t, [client.push(i, g[i], versions[i], w, None)
                                     for i in range(len(shards))]))
                sent += 1
                while len(inflight) > max_inflight:  # back-pressure
                    t0, refs = inflight.pop(0)
                    ray.get(refs)
                    lat.append(time.perf_counter() - t0)
            for t0, refs in inflight:
                ray.get(refs)
                lat.append(time.perf_counter() - t0)
            out[w] = {"sent": sent * len(shards), "latency": lat}

        threads = [threading.Thread(target=loop, args=(w,)) for w in worker_ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out


def _store_bytes() -> float:
    """Bytes in Ray's object store, from its memory summary (no public API gives the number)."""
    import ray
    from ray._private.internal_api import memory_summary

    # This cluster's, by address: with none, Ray refuses if another instance runs on the machine.
    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    for line in text.splitlines():
        if "Plasma memory usage" in line:  # "Plasma memory usage 0 MiB, 2 objects, ..."
            return float(line.split("usage")[1].split("MiB")[0]) * 2**20
    return float("nan")


def run_soak(workers: int = 32, shards: int = 4, seconds: float = 10.0, params: int = 100_000,
             processes: int = 4, max_inflight: int = 2) -> dict:
    """Run the soak on the Ray already initialized; returns counts, latency and memory samples."""
    import os

    import ray

    from ..transport.ray_shard import ParameterServerShard

    sizes = [len(a) for a in np.array_split(np.arange(params), shards)]
    actors = [ray.remote(ParameterServerShard).options(num_cpus=0.01, max_concurrency=workers + 4)
              .remote(i, np.zeros(n, np.float32), np.zeros(0, np.float32),
                      optimizer=NesterovMomentum(0.9, 0.0), schedule=LRSchedule(0.01),
                      policy=Async(), averager=PolyakAverage(0.99))
              for i, n in enumerate(sizes)]
    pids = ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in actors])
    hammers = [ray.remote(Hammer).options(num_cpus=0.01, max_concurrency=2).remote()
               for _ in range(processes)]
    ids = np.array_split(np.arange(workers), processes)
    t0 = time.time()
    refs = [h.run.remote(actors, [int(w) for w in part], seconds, sizes, max_inflight)
            for h, part in zip(hammers, ids)]
    samples = []  # (s, object-store bytes, shard RSS bytes)
    while not all(r in ray.wait(refs, num_returns=len(refs), timeout=0)[0] for r in refs):
        samples.append((time.time() - t0, _store_bytes(), sum(_rss(p) for p in pids)))
        time.sleep(1.0)
    results = {}
    for part in ray.get(refs):
        results.update(part)
    elapsed = time.time() - t0
    stats = ray.get([a.stats.remote() for a in actors])
    for a in actors + hammers:
        ray.kill(a)
    sent = {int(w): r["sent"] for w, r in results.items()}
    recorded = {w: sum(sum(s["worker_counters"].get(w, {}).values()) for s in stats) for w in sent}
    # Every outcome a shard can give, zeros included, so a table of them is complete and adds up.
    outcomes = {o: sum(s["counters"].get(o, 0) for s in stats) for o in OUTCOMES}
    unknown = {k for s in stats for k in s["counters"]} - set(OUTCOMES)
    if unknown:  # a new outcome must be added to OUTCOMES, not dropped from the accounting here
        raise RuntimeError(f"shard outcomes {sorted(unknown)} are not in policy.OUTCOMES")
    reasons: dict[str, int] = {}  # why the rejected ones were (NaN gradients, recovering, ...)
    for s in stats:
        for k, v in s["reject_reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    lat = np.concatenate([r["latency"] for r in results.values()]) * 1e3
    total = sum(sent.values())
    return {"workers": workers, "shards": shards, "params": params, "seconds": elapsed,
            "sent": total, "recorded": sum(recorded.values()),
            "sent_per_worker": sent,
            "per_worker_equal": sent == recorded, "outcomes": outcomes, "reject_reasons": reasons,
            # the accounting: each push sent has exactly one outcome, per worker and in all
            "accounted": sent == recorded and sum(outcomes.values()) == total
            and sum(reasons.values()) == outcomes[REJECTED],
            "pushes_per_s": total / elapsed,
            "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p99": float(np.percentile(lat, 99)), "samples": samples}


def _rss(pid: int) -> float:
    """Private resident memory (RssAnon): VmRSS also counts the pages of Ray's shared-memory
    object store the process has touched, which grow up to the store's size and are not its own."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("nan")
