"""Worker pull path (issue 15, item 2): from a worker's pull request to the weights in its model,
against `ray.get` of the same arrays plus one memcpy (target: at most 1.5x).

ps-trainer's side is the real thing: a `Worker` over a `FlatModel` of ResNet-50 (25,557,032
parameters + 53,120 BatchNorm statistics) and a `RayClient` to S `ParameterServerShard` actors;
`Worker.pull()` hands the request to its communication thread, which asks every shard for its
snapshot (one call each, concurrently) and `ray.get`s the references (zero-copy), and lands each
snapshot in the model (`Worker._land`). On a CPU it lands in place (`FlatModel.alias`: the
parameters become views of the snapshots in the object store, only the tensors a shard boundary
cuts are copied); a second worker, `land="copy"`, times the landing copy it replaced (a GPU
worker's path: it must copy to the device). The baseline reads the very same snapshot objects
(the shards' references) with one `ray.get` and copies them into a flat numpy buffer of the
model's size: the least a pull that copies could do.

The shards' weights do not move here, so every pull is served from the published snapshot; the
cost of publishing one (its `ray.put` after a push) is the server's, measured in
bench_server_capacity.py. Each round times both sides for every S, back to back, in an order that
rotates from round to round; the report gives medians and the median (with quartiles) of each
round's own ratio.

    python benchmarks/bench_pull_path.py [--rounds 25] [--shards 1 2 4] [--model resnet50]
        [--smoke] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

from ps_trainer.core import LRSchedule, NesterovMomentum, PolyakAverage  # noqa: E402
from ps_trainer.core.layout import FlatModel  # noqa: E402
from ps_trainer.core.policy import Async  # noqa: E402

SECTION = "Worker pull path (issue 15)"


def baseline(refs: list, flat: np.ndarray, bounds: list[tuple[int, int]]) -> None:
    """`ray.get` of the snapshots (zero-copy) and one memcpy of each into the flat buffer."""
    import ray

    for arr, (start, stop) in zip(ray.get(refs), bounds):
        np.copyto(flat[start:stop], arr)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=25, help="interleaved rounds (default 25)")
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4], help="S (default 1 2 4)")
    ap.add_argument("--model", default="resnet50", help="from ps_trainer.models (default resnet50)")
    ap.add_argument("--smoke", action="store_true", help="resnet110 (1.8M), S 1 2, 5 rounds; implies --no-write")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    a = ap.parse_args()
    if a.smoke:
        a.model, a.shards, a.rounds, a.no_write = "resnet110", [1, 2], 5, True
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    from ps_trainer.models import build
    from ps_trainer.trainer.cluster import start_ray
    from ps_trainer.transport.ray_shard import ParameterServerShard, RayClient
    from ps_trainer.worker.worker import Worker

    torch.set_num_threads(1)  # as a CPU worker
    load = os.getloadavg()
    start_ray(None, num_cpus=os.cpu_count())
    flat = FlatModel(build(a.model))
    layout = flat.layout
    P, B = layout.num_params, layout.num_buffers
    params, buffers = flat.params.numpy().copy(), flat.buffers.numpy().copy()
    opts = dict(optimizer=NesterovMomentum(0.9, 5e-4), schedule=LRSchedule(0.05), policy=Async(),
                averager=PolyakAverage(0.99))
    shards = {S: [ray.remote(ParameterServerShard).options(num_cpus=0, max_concurrency=4).remote(
        s.index, params[s.params[0]:s.params[1]], buffers[s.buffers[0]:s.buffers[1]], **opts)
        for s in layout.shards(S)] for S in a.shards}  # all at once: they start side by side
    flat_copy = FlatModel(build(a.model), layout)
    sides, copying, refs, bounds = {}, {}, {}, {}
    for S in a.shards:
        specs = layout.shards(S)
        # batches=None: these workers only ever pull
        sides[S] = Worker(0, flat, specs, RayClient(shards[S]), None)
        copying[S] = Worker(0, flat_copy, specs, RayClient(shards[S]), None, land="copy")
        assert sides[S].alias and not copying[S].alias
        metas = ray.get([s.pull.remote() for s in shards[S]])  # the published snapshots' references
        refs[S] = [m[1][0] if isinstance(m[1], list) else ray.put(m[1]) for m in metas]
        sizes = np.cumsum([0] + [s.num_params + s.num_buffers for s in specs])
        bounds[S] = list(zip(sizes[:-1], sizes[1:]))
    dst = np.zeros(P + B, np.float32)  # the baseline's flat buffer, touched once
    # ours: the whole pull; copy: the same with a landing copy; client: its RayClient.pull alone
    # (no landing); base: the baseline
    variants = [(S, side) for S in a.shards for side in ("ours", "copy", "client", "base")]
    run = {(S, side): (sides[S].pull if side == "ours" else copying[S].pull if side == "copy"
                       else sides[S].client.pull if side == "client"
                       else (lambda S=S: baseline(refs[S], dst, bounds[S]))) for S, side in variants}
    for v in variants:  # warm-up: pages, connections, the comm thread
        for _ in range(2):
            run[v]()
    times = {v: [] for v in variants}
    for r in range(a.rounds):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            times[v].append(timed(run[v]))
    for w in (*sides.values(), *copying.values()):
        w.flush()
    for f in (flat, flat_copy):  # read back through the models' own tensors
        landed = np.concatenate([f.wire_params().numpy(), f.buffers.numpy()])
        assert np.array_equal(landed, np.concatenate([params, buffers])), "the pull landed other weights"
    ray.shutdown()
    mb = 4 * (P + B) / 1e6
    lines = [f"Machine: {machine()}, ray {ray.__version__}, {time.strftime('%Y-%m-%d')}; load "
             f"average (1 min) {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after. {a.model}: "
             f"{P:,} parameters + {B:,} BatchNorm statistics ({mb:.0f} MB); {a.rounds} rounds, each "
             f"timing both sides for every S back to back in rotating order.", "",
             "    python benchmarks/bench_pull_path.py" + (f" --rounds {a.rounds}" if a.rounds != 25 else ""), "",
             "| S | Worker.pull (RayClient + landing in place), ms | of which RayClient.pull, ms | "
             "ray.get + one memcpy, ms | ratio of medians | per-round ratio: median (quartiles) | "
             "pull MB/s | with a landing copy, ms | its per-round ratio |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    worst = worst_copy = 0.0
    for S in a.shards:
        ours, base = np.array(times[(S, "ours")]), np.array(times[(S, "base")])
        copy = np.array(times[(S, "copy")])
        q1, q2, q3 = np.percentile(ours / base, [25, 50, 75])
        c2 = np.median(copy / base)
        worst, worst_copy = max(worst, q2), max(worst_copy, c2)
        lines.append(f"| {S} | {1e3 * np.median(ours):.1f} | {1e3 * np.median(times[(S, 'client')]):.1f} | "
                     f"{1e3 * np.median(base):.1f} | {np.median(ours) / np.median(base):.2f}x | "
                     f"{q2:.2f}x ({q1:.2f}-{q3:.2f}x) | {mb / np.median(ours):.0f} | "
                     f"{1e3 * np.median(copy):.1f} | {c2:.2f}x |")
    lines += ["", f"**Worker pull = at most {worst:.2f}x the baseline** (the largest per-round median "
                  f"over S; target: at most 1.5x): {'met' if worst <= 1.5 else 'missed'}. With a "
                  f"landing copy (a GPU worker's path, `land=\"copy\"`): at most {worst_copy:.2f}x.", "",
              "A CPU worker lands a pull in place: its parameters become views of the snapshots, "
              "so it pays no memcpy where the baseline pays one. What remains is the RayClient's "
              "round trip: one call to every shard (answered from its published snapshot), then "
              "a `ray.get` of the references, where the baseline holds them already. That round "
              "trip is a fixed cost per shard, so the ratio grows with S. Where the landing copy is "
              "made, it adds a memcpy's worth or more (torch's `copy_` into the flat buffer, one "
              "thread)."]
    text = "\n".join(lines)
    print(text)
    if not a.no_write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
