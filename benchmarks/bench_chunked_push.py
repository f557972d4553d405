"""Would a chunked push lift one worker's update rate (issue 15, item 1 at K=1)?

With one worker that waits for the answer to each push (K=1), nothing overlaps the shard's update:
an update takes the object store's time (the gradient's put, the weights' put) plus one pass of
the update, and on this machine that leaves about two thirds of the store's rate (the ceiling
the capacity benchmark prints). The one design that could overlap them without making the
worker's weights older is a push in C chunks: the worker puts chunk i+1 while the server applies
chunk i, and the server puts chunk i's new weights while it applies chunk i+1.

This measures that design in its most favourable form, before anyone builds it into the shard:
a resnet50-sized model (25,610,152 floats: parameters and BatchNorm statistics), one zero-compute
worker, and one server actor that runs the one-pass push (core/fused_push.py) over each chunk as
it arrives and answers with that chunk's weights `ray.put`; no versions, no lock, no swap, no
check of the sums: less work than a real shard does, so its rate bounds a real chunked shard's
from above. Chunks are answered in order (one call at a time); the worker sends all C calls of an
update before it waits for any. Baseline in the same run: (a), the same calls and bytes against
a server that only puts its weights (the capacity benchmark's sink), chunked the same way.

First, before Ray starts, whether overlapping can pay here at all: a one-thread copy of the same
floats and the one-thread pass, each in a process of its own, timed alone and side by side.

    python benchmarks/bench_chunked_push.py [--chunks 1 2 4 8] [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

SECTION = "Chunked push at K=1: a prototype (issue 15)"
SIZE = 25_557_032 + 53_120  # resnet50's parameters and BatchNorm statistics
THREADS = 2  # torch threads of the server: a one-shard run's (SHARD_THREADS)


def bounds(i: int, C: int, n: int) -> tuple[int, int]:
    """Chunk i of C over n floats; every chunk but the last a whole number of 64-byte lines (the
    kernel's streaming stores write aligned lines)."""
    step = n // C // 16 * 16
    return i * step, (i + 1) * step if i < C - 1 else n


def _copy_job(n: int, reps: int, out, start) -> None:
    """One thread copying n floats, `reps` times: ms per copy."""
    a = np.ones(n, np.float32)
    b = a.copy()
    start.wait()
    t = time.perf_counter()
    for _ in range(reps):
        np.copyto(b, a)
    out.put(("copy", 1e3 * (time.perf_counter() - t) / reps))


def _pass_job(n: int, reps: int, out, start) -> None:
    """The one-pass push over n floats on one thread, `reps` times: ms per pass."""
    from ps_trainer.core import fused_push, push_kernel as pk

    torch.set_num_threads(1)
    src = [torch.from_numpy(fused_push.aligned_empty(n)).fill_(v) for v in (0.01, 0.0, 0.01)]
    dst = [torch.from_numpy(fused_push.aligned_empty(n)).zero_() for _ in range(3)]
    g, hs = torch.full((n,), 1e-4), pk.numbers([(None, 0.05, 0.01)], 5e-4, 0.9)
    fused_push.push(src, dst, [g], hs, True, True)  # pages faulted in
    start.wait()
    t = time.perf_counter()
    for _ in range(reps):
        fused_push.push(src, dst, [g], hs, True, True)
    out.put(("pass", 1e3 * (time.perf_counter() - t) / reps))


def side_by_side(n: int, reps: int, rounds: int) -> dict:
    """Whether the copies and the pass can overlap at all: each in a process of its own, one
    thread each, alone and side by side (a copy with the pass, two copies). ms per operation,
    medians over rounds: {setting: {job: ms}}."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # before Ray starts
    settings = {"copy alone": [_copy_job], "pass alone": [_pass_job],
                "copy + pass": [_copy_job, _pass_job], "copy + copy": [_copy_job, _copy_job]}
    got: dict = {s: {} for s in settings}
    for _ in range(rounds):
        for name, jobs in settings.items():
            out, start = ctx.Queue(), ctx.Barrier(len(jobs))
            procs = [ctx.Process(target=j, args=(n, reps, out, start)) for j in jobs]
            for p in procs:
                p.start()
            results = [out.get() for _ in procs]
            for p in procs:
                p.join()
            for i, (job, ms) in enumerate(sorted(results)):
                got[name].setdefault(job if name != "copy + copy" else f"copy {i + 1}", []).append(ms)
    return {s: {j: statistics.median(v) for j, v in jobs.items()} for s, jobs in got.items()}


class Store:
    """(a): answers each chunk with its weights' put, nothing else."""

    def __init__(self, n: int):
        self.w = np.ones(n, np.float32)

    def exchange(self, i: int, C: int, grad: np.ndarray) -> list:
        import ray

        lo, hi = bounds(i, C, self.w.shape[0])
        return [ray.put(self.w[lo:hi])]


class ChunkServer:
    """The prototype: the one-pass push (Nesterov, weight decay, Polyak) over each chunk as it
    arrives, into the second copy, whose weights it puts."""

    def __init__(self, n: int, threads: int):
        from ps_trainer.core import fused_push, push_kernel as pk

        torch.set_num_threads(threads)
        self.fused, self.threads, self.n = fused_push, threads, n

        def array(value: float) -> torch.Tensor:
            return torch.from_numpy(fused_push.aligned_empty(n)).fill_(value)

        self.src = [array(0.01), array(0.0), array(0.01)]
        self.dst = [array(0.0) for _ in range(3)]
        self.hs = pk.numbers([(None, 0.05, 0.01)], 5e-4, 0.9)

    def exchange(self, i: int, C: int, grad: np.ndarray) -> list:
        import ray

        torch.set_num_threads(self.threads)  # the kernel runs on torch's count in this thread
        lo, hi = bounds(i, C, self.n)
        self.fused.push([t[lo:hi] for t in self.src], [t[lo:hi] for t in self.dst],
                        [torch.from_numpy(grad)], self.hs, True, True)
        return [ray.put(self.dst[0][lo:hi].numpy())]


class Worker:
    """One zero-compute worker: all C chunks of a push sent, then every chunk's weights got."""

    def __init__(self, n: int):
        torch.set_num_threads(1)
        self.grad = np.full(n, 1e-4, np.float32)

    def run(self, server, C: int, seconds: float, min_updates: int) -> float:
        import ray

        n, done = self.grad.shape[0], []
        stop = time.time() + seconds
        while time.time() < stop or len(done) < min_updates + 1:
            replies = [server.exchange.remote(i, C, self.grad[slice(*bounds(i, C, n))])
                       for i in range(C)]
            weights = ray.get([r[0] for r in ray.get(replies)])  # zero-copy
            del weights
            done.append(time.perf_counter())
        return (len(done) - 1) / (done[-1] - done[0])  # the first update is a warm-up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="small arrays, one short round; implies --no-write")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    n, min_updates = SIZE, 3
    if a.smoke:
        n, a.seconds, a.rounds, a.no_write, min_updates = 1 << 20, 0.3, 1, True, 2
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from ps_trainer.core import fused_push
    from ps_trainer.transport.ray_shard import INLINE_BYTES

    if fused_push.library() is None:
        print("no C compiler with AVX2 here: the one-pass push cannot run, nothing to measure")
        return
    load = os.getloadavg()
    overlap = side_by_side(n, 3 if a.smoke else 10, a.rounds)
    print(overlap, flush=True)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False,
             object_store_memory=max(1 << 30, 8 * 4 * n),
             _system_config={"max_direct_call_object_size": INLINE_BYTES})
    opts = {"num_cpus": 0}  # nothing waits for a CPU slot; they share the cores
    worker = ray.remote(Worker).options(**opts).remote(n)
    servers = {"(a) store": ray.remote(Store).options(**opts).remote(n),
               "chunked one pass": ray.remote(ChunkServer).options(**opts).remote(n, THREADS)}
    cells = [(p, C) for C in a.chunks for p in servers]
    for p, C in cells:  # warm-up: the pages of every array and of the store, faulted in
        ray.get(worker.run.remote(servers[p], C, 0.0, 2))
    rates: dict = {c: [] for c in cells}
    for r in range(a.rounds):
        for p, C in cells[r % len(cells):] + cells[:r % len(cells)]:  # rotating order
            rates[(p, C)].append(ray.get(worker.run.remote(servers[p], C, a.seconds, min_updates)))
            print(f"round {r + 1}  {p:16} C={C}: {rates[(p, C)][-1]:.2f} updates/s", flush=True)
    ray.shutdown()
    text = report(a, n, rates, overlap, (load, os.getloadavg()))
    print(text)
    if not a.no_write:
        write_section(SECTION, text)


def report(a, n: int, rates: dict, overlap: dict, loads) -> str:
    base = rates[("(a) store", min(a.chunks))]
    lines = [f"Machine: {machine()}, {time.strftime('%Y-%m-%d')}; load average (1 min) "
             f"{loads[0][0]:.2f} before, {loads[1][0]:.2f} after. {n:,} floats, one worker, the "
             f"server on {THREADS} torch threads; {a.seconds:g} s per cell, {a.rounds} rounds in "
             f"rotating order; medians over rounds, ratios the medians of per-round ratios.", "",
             "    python benchmarks/bench_chunked_push.py", "",
             f"| C | (a) store, updates/s | chunked one pass, updates/s | one pass / (a) at C={min(a.chunks)} "
             f"| one pass / (a) at the same C |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for C in a.chunks:
        store_, ours = rates[("(a) store", C)], rates[("chunked one pass", C)]
        lines.append(f"| {C} | {statistics.median(store_):.2f} | {statistics.median(ours):.2f} | "
                     f"{100 * statistics.median([x / y for x, y in zip(ours, base)]):.0f}% | "
                     f"{100 * statistics.median([x / y for x, y in zip(ours, store_)]):.0f}% |")
    one = statistics.median(rates[("chunked one pass", min(a.chunks))])
    best = max(a.chunks, key=lambda C: statistics.median(rates[("chunked one pass", C)]))
    lines += ["", f"- Best chunk count for the one pass: C={best} "
                  f"({statistics.median(rates[('chunked one pass', best)]):.2f} updates/s against "
                  f"{one:.2f} unchunked).", "",
              "Can a copy and the pass overlap at all? Each in a process of its own on one thread, "
              "alone and side by side, ms per operation over the same floats (medians over rounds; "
              "side by side takes no longer than alone where the two cores, not the memory, are "
              "the limit):", "",
              "| setting | copy, ms | pass, ms |", "| --- | ---: | ---: |"]
    for name, jobs in overlap.items():
        copies = [v for j, v in jobs.items() if j.startswith("copy")]
        lines.append(f"| {name} | {' and '.join(f'{v:.1f}' for v in copies) or '-'} | "
                     f"{jobs['pass']:.1f} |" if "pass" in jobs else
                     f"| {name} | {' and '.join(f'{v:.1f}' for v in copies)} | - |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
