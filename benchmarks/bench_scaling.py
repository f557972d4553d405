"""Scaling curve (issue 15, item 7): updates/s and staleness of K workers against S shards, and how
many shards a 16- or 64-GPU Inception v3 run needs.

A model, fed with costs measured in this run: the queueing model of ps_trainer/harness/scaling.py
(a push occupies its shard for `shard time`; FIFO; workers as `Worker` runs them on a GPU:
max_inflight 2, prefetched pulls), where

    shard time(S) = ShardState.push at P/S parameters  (measured here: validate + Nesterov + weight
                    decay + Polyak, one torch thread, caches flushed before each push; CPU time)
                  + 2 memcpys of P/S float32            (measured here: the gradient in, the new
                    weights out; or bytes / --link-gbps for a network link instead)

and a worker's step is a GPU step of Inception v3: by default 128 / 2231 s, the plain bf16
channels_last loop at batch 128 on an H200 (docs/benchmarks.md, "GPU: a Ray worker against a
plain loop (H200)"). The transfers are counted in series with the update (a conservative shard;
Ray fetches arguments in other threads).

    python benchmarks/bench_scaling.py [--model inception_v3] [--step-time S] [--workers 1 2 ...]
        [--shards 1 2 4 8 16] [--link-gbps G] [--smoke] [--no-write] [--plot PATH]
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
from common import DOC, machine, write_section  # noqa: E402

from ps_trainer.core import LRSchedule, NesterovMomentum, PolyakAverage, ShardState  # noqa: E402
from ps_trainer.harness.scaling import shards_needed, simulate_scaling  # noqa: E402

SECTION = "Scaling curve: K workers against S shards (model fed by measured costs)"
H200_STEP = 128 / 2231  # s: inception_v3, bf16 + channels_last, batch 128, H200 (docs/benchmarks.md)
EVICT = 1 << 24  # float32 elements (64 MiB) read between timed pushes: the shard starts cold
WORKER = dict(inflight=2, prefetch=True, jitter=0.1)  # a GPU worker's defaults; +-10% step times


NOTES = """How to read it. Each cell is the model's steady state (after a fifth of the run) for workers
that never wait for each other. Until the shards saturate, updates/s = K / step and a push's
staleness is about 2K (the pull is prefetched one step early, and a worker's own pushes are still
in flight); once the K workers ask for more than 1 / shard time, updates/s stays at that ceiling
and pushes queue at the shards (up to max_inflight + 1 per worker), so the staleness grows to about
4K. The shard time falls almost as 1/S until a push is a few hundred thousand parameters; below
that a push's fixed cost (the Python call, the kernel launches, cold caches) dominates, which is
what sets the 64-GPU answer. A shard here is one core; torch threads in a shard, or the transfers
overlapping the update (Ray fetches arguments in other threads), would lower the counts. The
staleness policies change what a stale push does, not these rates."""


def model_params(name: str) -> int:
    """Parameters of `name` as the shards hold them (built on the meta device: no memory)."""
    from ps_trainer.models import build

    with torch.device("meta"):
        model = build(name, num_classes=1000)
    return sum(p.numel() for p in model.parameters())


def measure_costs(params: int, shard_counts: list[int], rounds: int) -> dict[int, tuple[float, float]]:
    """{S: (s per ShardState.push, s per memcpy)} at P/S parameters, each timed cold (after a
    64 MiB read) in CPU time of this thread (one torch thread: the work is all here; other
    processes on a shared machine do not count): medians over interleaved rounds."""
    rng = np.random.default_rng(0)
    evict = torch.ones(EVICT)
    sizes = {s: -(-params // s) for s in shard_counts}
    largest = max(sizes.values())
    grad_all = rng.standard_normal(largest, dtype=np.float32)
    grad_all.flags.writeable = False  # as it arrives from Ray's object store
    src, dst = torch.from_numpy(rng.standard_normal(largest, dtype=np.float32)), torch.empty(largest)
    dst.zero_()
    shards = {s: ShardState(0, rng.standard_normal(n, dtype=np.float32),
                            optimizer=NesterovMomentum(0.9, 1e-4), schedule=LRSchedule(0.01),
                            averager=PolyakAverage(0.999)) for s, n in sizes.items()}
    push_t = {s: [] for s in sizes}
    copy_t = {s: [] for s in sizes}
    for _ in range(rounds):
        for s, n in sizes.items():
            grad, shard = grad_all[:n], shards[s]
            for times, fn in ((push_t[s], lambda: shard.push(grad, shard.version)),
                              (copy_t[s], lambda: dst[:n].copy_(src[:n]))):
                evict.sum()  # read, not written: no dirty lines for the timed call to write back
                t = time.thread_time()  # CPU s of this thread: what the shard's core spends
                fn()
                times.append(time.thread_time() - t)
    return {s: (statistics.median(push_t[s][1:] or push_t[s]),
                statistics.median(copy_t[s][1:] or copy_t[s])) for s in sizes}


def shard_time_of(costs: dict[int, tuple[float, float]], params: int, link_gbps: float | None):
    """s a push occupies a shard of P / S parameters: measured at the S in `costs`, linear in the
    shard's size between them."""
    ns = sorted((-(-params // s), push, copy) for s, (push, copy) in costs.items())
    n_at, push_at, copy_at = (np.array(c, dtype=float) for c in zip(*ns))

    def of(shards: int) -> float:
        n = -(-params // shards)
        push = float(np.interp(n, n_at, push_at))
        move = 4.0 * n / (link_gbps * 1e9 / 8) if link_gbps else float(np.interp(n, n_at, copy_at))
        return push + 2.0 * move

    return of


def plot(points, ks, shard_counts, step: float, path: Path) -> None:
    import matplotlib.pyplot as plt

    from ps_trainer.harness.plots import STYLE, _axes, _save

    with plt.rc_context(STYLE):
        fig, (a, b) = _axes(2, width=6)
        a.plot(ks, [k / step for k in ks], "k--", lw=1, label="workers' own rate (K / step)")
        for s in shard_counts:
            a.plot(ks, [points[k, s].updates_per_s for k in ks], "o-", ms=3, label=f"S = {s}")
            b.plot(ks, [points[k, s].staleness_mean for k in ks], "o-", ms=3, label=f"S = {s}")
        for ax, what in ((a, "updates/s (each shard)"), (b, "mean staleness (versions)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("workers K")
            ax.set_ylabel(what)
            ax.legend()
        a.set_title("throughput")
        b.set_title("staleness")
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(fig, path, [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="inception_v3", help="whose parameter count P (default inception_v3)")
    ap.add_argument("--step-time", type=float, default=H200_STEP,
                    help=f"s per worker step (default {H200_STEP:.4f}: Inception v3 on an H200, "
                         f"bf16, batch 128)")
    ap.add_argument("--batch", type=int, default=128, help="images per step, for images/s (default 128)")
    ap.add_argument("--workers", type=int, nargs="+", default=[2 ** i for i in range(9)])
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--link-gbps", type=float, default=None,
                    help="move the bytes at this link rate instead of the measured memcpy rate")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds of the costs (default 5)")
    ap.add_argument("--plot", type=Path, default=None,
                    help="write the plot here (default docs/figures/scaling.png, unless --no-write)")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md or the plot")
    ap.add_argument("--smoke", action="store_true",
                    help="1M parameters, a few K and S, short runs, nothing written (the suite's smoke test)")
    a = ap.parse_args()
    steps = None
    if a.smoke:
        a.workers, a.shards, a.rounds, a.no_write, steps = [1, 4, 16], [1, 4], 2, True, 600
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    t_start = time.perf_counter()
    params = 1_000_000 if a.smoke else model_params(a.model)
    measured_s = sorted(set(a.shards) | {32, 64, 128, 256})
    costs = measure_costs(params, measured_s, a.rounds)
    c = shard_time_of(costs, params, a.link_gbps)
    step = a.step_time
    opts = dict(WORKER, steps=steps)
    points = {(k, s): simulate_scaling(k, s, step, c(s), **opts) for k in a.workers for s in a.shards}

    move = f"{a.link_gbps:g} Gb/s link" if a.link_gbps else "memcpy"
    source = ("128 / 2231 s, the plain bf16 channels_last loop of Inception v3 on an H200 in the "
              "section \"GPU: a Ray worker against a plain loop (H200)\"" if step == H200_STEP
              else "--step-time")
    lines = [f"Machine: {machine()}; 1 torch thread; load average {load:.1f} at the start. "
             f"Model: {'none (--smoke)' if a.smoke else a.model}, P = {params:,} parameters; worker step {1e3 * step:.1f} ms for "
             f"{a.batch} images ({source}); workers with max_inflight 2, prefetched pulls, step "
             f"times +-10%; shard time = ShardState.push + 2 x {move} of P/S float32, measured in "
             f"this run (CPU time, cold caches, medians of {a.rounds} rounds).", "",
             "| S | parameters per shard | ShardState.push, ms | memcpy, ms | shard time per push, ms "
             "| one shard saturates at, updates/s |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in measured_s:
        push, copy = costs[s]
        lines.append(f"| {s} | {-(-params // s):,} | {1e3 * push:.2f} | {1e3 * copy:.2f} | "
                     f"{1e3 * c(s):.2f} | {1 / c(s):.0f} |")
    lines += ["", "Updates/s of each shard (= worker steps/s of all workers together) and, in "
              "brackets, the fraction of the workers' own rate K / step:", "",
              "| K | K / step | " + " | ".join(f"S = {s}" for s in a.shards) + " |",
              "| ---: | ---: | " + " | ".join("---:" for _ in a.shards) + " |"]
    for k in a.workers:
        cells = [f"{points[k, s].updates_per_s:.0f} ({100 * points[k, s].efficiency:.0f}%)"
                 for s in a.shards]
        lines.append(f"| {k} | {k / step:.0f} | " + " | ".join(cells) + " |")
    lines += ["", "Mean staleness (versions) of a push, same runs:", "",
              "| K | " + " | ".join(f"S = {s}" for s in a.shards) + " |",
              "| ---: | " + " | ".join("---:" for _ in a.shards) + " |"]
    for k in a.workers:
        lines.append(f"| {k} | " + " | ".join(f"{points[k, s].staleness_mean:.1f}"
                                             for s in a.shards) + " |")

    # Where one shard saturates, and the shards 16 and 64 GPUs need (95% of their own rate).
    one = 1 / c(1)
    lines += ["", f"One shard saturates at {one:.0f} updates/s ({one * a.batch:.0f} images/s): "
              f"the workers' rate K / step reaches it at K = {one * step:.1f}."]
    need = {}
    for k in (16, 64):
        need[k] = shards_needed(k, step, c, most=256, **opts)
        lines.append(f"- **{k} GPUs: {need[k] if need[k] else 'more than 256'} shards** for 95% of "
                     f"the workers' rate ({k / step:.0f} updates/s, {k * a.batch / step:.0f} images/s)"
                     f"; shard time at that S: {1e3 * c(need[k] or 256):.2f} ms.")
    if not a.link_gbps:
        for gbps in (100.0, 25.0):
            cl = shard_time_of(costs, params, gbps)
            got = {k: shards_needed(k, step, cl, most=256, **opts) for k in (16, 64)}
            lines.append(f"- the same with the bytes moved over a {gbps:g} Gb/s link per shard "
                         f"instead of memcpy: 16 GPUs {got[16] or '> 256'}, 64 GPUs "
                         f"{got[64] or '> 256'} shards.")
    text = "\n".join(lines + ["", NOTES])
    print(text)
    print(f"\n(model and measurements took {time.perf_counter() - t_start:.1f} s)")
    figure = a.plot or (None if a.no_write else DOC.parent / "figures" / "scaling.png")
    if figure:
        plot(points, a.workers, a.shards, step, figure)
        print(f"plot: {figure}")
    if not a.no_write:
        link = figure.resolve()
        link = link.relative_to(DOC.parent.resolve()) if link.is_relative_to(DOC.parent.resolve()) else link
        write_section(SECTION, text + f"\n\n![updates/s and staleness against K]({link})\n")


if __name__ == "__main__":
    main()
