"""Scaling curve (issue 15, item 7): updates/s and staleness of K workers against S shards, and how
many shards a 16- or 64-GPU Inception v3 run needs.

A model, fed with costs measured in this run: the queueing model of ps_trainer/harness/scaling.py
(pushes occupy their shard; a shard that comes free applies every push that queued meanwhile in
one pass, as `ShardState.push` does: group commit; workers as `Worker` runs them on a GPU:
max_inflight 2, prefetched pulls), where k pushes applied together take

    shard time(S, k) = ShardState.push of k pushes at P/S parameters  (measured here for k = 1 to
                       4, each push with a gradient of its own: k validations + one pass of Nesterov,
                       weight decay and Polyak for all k; one torch thread, caches flushed before
                       each call; CPU time; k > 4 as groups of 4 and the rest, as the loop runs them)
                     + (k + 1) memcpys of P/S float32  (measured here: k gradients in, one copy of
                       the new weights out; or bytes / --link-gbps for a network link instead)

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
from common import DOC, group_push, machine, write_section  # noqa: E402

from ps_trainer.core import LRSchedule, NesterovMomentum, PolyakAverage, ShardState  # noqa: E402
from ps_trainer.core.push_kernel import GROUP  # noqa: E402
from ps_trainer.harness.scaling import shards_needed, simulate_scaling  # noqa: E402

SECTION = "Scaling curve: K workers against S shards (model fed by measured costs)"
H200_STEP = 128 / 2231  # s: inception_v3, bf16 + channels_last, batch 128, H200 (docs/benchmarks.md)
EVICT = 1 << 24  # float32 elements (64 MiB) read between timed pushes: the shard starts cold
WORKER = dict(inflight=2, prefetch=True, jitter=0.1)  # a GPU worker's defaults; +-10% step times


NOTES = """How to read it. Each cell is the model's steady state (after a fifth of the run) for workers
that never wait for each other. Until the shards saturate, updates/s = K / step and a push's
staleness is about 2K (the pull is prefetched one step early, and a worker's own pushes are still
in flight). As K grows, pushes start to queue at a shard, and a shard that comes free applies
all that queued in one pass (group commit: `ShardState.push`), which costs less per push than
one pass each; so a loaded shard's ceiling rises from 1 / (shard time alone) towards its rate in
groups of 4, and past it the pushes queue (up to max_inflight + 1 per worker) and the staleness
grows to about 4K. The shard time falls almost as 1/S until a push is a few hundred thousand
parameters; below that a push's fixed cost (the Python call, the kernel launches, cold caches)
dominates, which is what sets the 64-GPU answer. Below 2M parameters a shard runs torch's fused
kernel, where a group saves less than in the compiled loop of larger shards. A shard here is one
core; torch threads in a shard, or the transfers overlapping the update (Ray fetches arguments in
other threads), would lower the counts. The staleness policies change what a stale push does,
not these rates.

Session 15 (2026-12-02): the model gained group commit. Before, it served one push at a time,
which no shard of ps-trainer has done since group commit came in (session 13), and so it
overstated the shards a run needs (the "one push at a time" line gives that answer from the same
costs). The model's convoy at K = 4 with one shard (groups of 1 and 3 in turn: 75% of the
pushes applied together, tests/test_bench_update_scaling.py) is what the server-capacity
benchmark measured (74% together at S = 1, K = 4). The costs above were measured on the 2-core
Xeon VM; the table before this session's was measured on the EPYC, with the code of then."""


def model_params(name: str) -> int:
    """Parameters of `name` as the shards hold them (built on the meta device: no memory)."""
    from ps_trainer.models import build

    with torch.device("meta"):
        model = build(name, num_classes=1000)
    return sum(p.numel() for p in model.parameters())


def measure_costs(params: int, shard_counts: list[int], rounds: int) -> dict[int, tuple[list, float]]:
    """{S: ([s for k pushes applied together, k = 1..GROUP], s per memcpy)} at P/S parameters,
    each timed cold (after a 64 MiB read) in CPU time of this thread (one torch thread: the
    work is all here; other processes on a shared machine do not count): medians over
    interleaved rounds. k pushes: k - 1 queued (each validated, as its own thread would) and the
    k-th applying them all, each with a gradient of its own (`ShardState.push`, group commit)."""
    rng = np.random.default_rng(0)
    evict = torch.ones(EVICT)
    sizes = {s: -(-params // s) for s in shard_counts}
    largest = max(sizes.values())
    grads = [rng.standard_normal(largest, dtype=np.float32) for _ in range(GROUP)]
    for g in grads:
        g.flags.writeable = False  # as they arrive from Ray's object store
    src, dst = torch.from_numpy(rng.standard_normal(largest, dtype=np.float32)), torch.empty(largest)
    dst.zero_()
    shards = {s: ShardState(0, rng.standard_normal(n, dtype=np.float32),
                            optimizer=NesterovMomentum(0.9, 1e-4), schedule=LRSchedule(0.01),
                            averager=PolyakAverage(0.999)) for s, n in sizes.items()}

    def together(shard, n, k):
        return lambda: group_push(shard, grads[0][:n], [g[:n] for g in grads[1:k]])

    push_t = {(s, k): [] for s in sizes for k in range(1, GROUP + 1)}
    copy_t = {s: [] for s in sizes}
    for _ in range(rounds):
        for s, n in sizes.items():
            cases = [(push_t[s, k], together(shards[s], n, k)) for k in range(1, GROUP + 1)]
            for times, fn in cases + [(copy_t[s], lambda: dst[:n].copy_(src[:n]))]:
                evict.sum()  # read, not written: no dirty lines for the timed call to write back
                t = time.thread_time()  # CPU s of this thread: what the shard's core spends
                fn()
                times.append(time.thread_time() - t)
    med = lambda ts: statistics.median(ts[1:] or ts)  # noqa: E731 (the first round warms up)
    return {s: ([med(push_t[s, k]) for k in range(1, GROUP + 1)], med(copy_t[s])) for s in sizes}


def shard_time_of(costs: dict[int, tuple[list, float]], params: int, link_gbps: float | None,
                  group_commit: bool = True):
    """For S shards, what the model takes as `shard_time`: a function k -> s to apply k pushes
    together at a shard of P / S parameters (or, without `group_commit`, s per push, one at a
    time): measured at the S in `costs`, linear in the shard's size between them."""
    ns = sorted((-(-params // s), *push, copy) for s, (push, copy) in costs.items())
    n_at, *push_at, copy_at = (np.array(c, dtype=float) for c in zip(*ns))

    def of(shards: int):
        n = -(-params // shards)
        group = [float(np.interp(n, n_at, at)) for at in push_at]  # s for k = 1..GROUP together
        move = 4.0 * n / (link_gbps * 1e9 / 8) if link_gbps else float(np.interp(n, n_at, copy_at))

        def together(k: int) -> float:
            full, rest = divmod(k, GROUP)
            return full * group[-1] + (group[rest - 1] if rest else 0.0) + (k + 1) * move

        return together if group_commit else together(1)

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
             f"times +-10%; k pushes applied together (group commit) take ShardState.push of k "
             f"+ (k + 1) x {move} of P/S float32, measured in this run (CPU time, cold caches, "
             f"medians of {a.rounds} rounds).", "",
             "| S | parameters per shard | ShardState.push, ms | 4 together, ms per push | "
             f"{move}, ms | shard time alone, ms | 4 together, ms per push | one shard saturates "
             "at, updates/s: alone | in groups of 4 |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in measured_s:
        push, copy = costs[s]
        alone, four = c(s)(1), c(s)(GROUP) / GROUP
        lines.append(f"| {s} | {-(-params // s):,} | {1e3 * push[0]:.2f} | "
                     f"{1e3 * push[-1] / GROUP:.2f} | {1e3 * copy:.2f} | {1e3 * alone:.2f} | "
                     f"{1e3 * four:.2f} | {1 / alone:.0f} | {1 / four:.0f} |")
    lines += ["", "Updates/s of each shard (= worker steps/s of all workers together) and, in "
              "brackets, the fraction of the workers' own rate K / step:", "",
              "| K | K / step | " + " | ".join(f"S = {s}" for s in a.shards) + " |",
              "| ---: | ---: | " + " | ".join("---:" for _ in a.shards) + " |"]
    for k in a.workers:
        cells = [f"{points[k, s].updates_per_s:.0f} ({100 * points[k, s].efficiency:.0f}%)"
                 for s in a.shards]
        lines.append(f"| {k} | {k / step:.0f} | " + " | ".join(cells) + " |")
    for title, value, fmt in (("Mean staleness (versions) of a push, same runs:",
                               lambda p: p.staleness_mean, "{:.1f}"),
                              ("Pushes a shard applied together with others (group commit), same "
                               "runs:", lambda p: 100 * p.grouped, "{:.0f}%")):
        lines += ["", title, "", "| K | " + " | ".join(f"S = {s}" for s in a.shards) + " |",
                  "| ---: | " + " | ".join("---:" for _ in a.shards) + " |"]
        for k in a.workers:
            lines.append(f"| {k} | " + " | ".join(fmt.format(value(points[k, s]))
                                                 for s in a.shards) + " |")

    # Where one shard saturates, and the shards 16 and 64 GPUs need (95% of their own rate).
    alone, four = 1 / c(1)(1), GROUP / c(1)(GROUP)
    lines += ["", f"One shard saturates at {alone:.0f} updates/s ({alone * a.batch:.0f} images/s) "
              f"one push at a time, and at {four:.0f} ({four * a.batch:.0f} images/s) in groups of "
              f"{GROUP}: the workers' rate K / step reaches those at K = {alone * step:.1f} and "
              f"{four * step:.1f}."]
    need = {}
    for k in (16, 64):
        need[k] = shards_needed(k, step, c, most=256, **opts)
        lines.append(f"- **{k} GPUs: {need[k] if need[k] else 'more than 256'} shards** for 95% of "
                     f"the workers' rate ({k / step:.0f} updates/s, {k * a.batch / step:.0f} images/s)"
                     f"; shard time at that S: {1e3 * c(need[k] or 256)(1):.2f} ms a push alone.")
    fifo = shard_time_of(costs, params, a.link_gbps, group_commit=False)
    got = {k: shards_needed(k, step, fifo, most=256, **opts) for k in (16, 64)}
    lines.append(f"- one push at a time (no group commit): 16 GPUs {got[16] or '> 256'}, "
                 f"64 GPUs {got[64] or '> 256'} shards.")
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
