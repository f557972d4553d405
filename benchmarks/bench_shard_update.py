"""Shard update cost against one memcpy of the same bytes (issue 2's target: at most 3x).

A push on a 25.6M-parameter shard (ResNet-50 size) = validation (finite check) + Nesterov momentum
with weight decay + Polyak average, as `ShardState.push` runs it. Baselines measured in the same
run, interleaved, medians of repeats: memcpy (torch `copy_`, one thread), torch's fused SGD alone,
and the obvious alternatives (six numpy ufuncs, the unblocked fused kernel + lerp).

    python benchmarks/bench_shard_update.py [--params 25600000] [--repeats 9] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_time, write_section  # noqa: E402

from ps_trainer.core import LRSchedule, NesterovMomentum, PolyakAverage, ShardState  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=int, default=25_600_000)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    n = a.params
    rng = np.random.default_rng(0)
    grad = rng.standard_normal(n, dtype=np.float32)
    grad.flags.writeable = False  # as it arrives from Ray's object store
    src, dst = torch.from_numpy(rng.standard_normal(n, dtype=np.float32)), torch.empty(n)
    shard = ShardState(0, rng.standard_normal(n, dtype=np.float32), optimizer=NesterovMomentum(0.9, 1e-4),
                       schedule=LRSchedule(0.01), averager=PolyakAverage(0.999))
    version = [0]

    def push():
        r = shard.push(grad, shard.version)
        assert r.outcome == "applied"

    w, buf, avg = shard._w, shard._buf, shard._avg
    g = torch.from_numpy(grad)
    opt = NesterovMomentum(0.9, 1e-4)
    pn, bn_, an = shard.params, shard.momentum, shard.average
    tmp = np.empty(n, np.float32)

    def numpy_ufuncs():  # the straightforward numpy version: six ufunc passes
        np.multiply(pn, 1e-4, out=tmp); np.add(tmp, grad, out=tmp)  # noqa: E702  d = g + wd w
        np.multiply(bn_, 0.9, out=bn_); np.add(bn_, tmp, out=bn_)  # noqa: E702  buf = m buf + d
        np.add(tmp, 0.9 * bn_, out=tmp); np.subtract(pn, 0.01 * tmp, out=pn)  # noqa: E702

    cases = {
        "memcpy (torch copy_)": lambda: dst.copy_(src),
        "memcpy (numpy copyto)": lambda: np.copyto(dst.numpy(), src.numpy()),
        "validate only (aminmax)": lambda: shard._validate(grad, 0, None, None),
        "fused Nesterov SGD only": lambda: opt.step(w, buf, g, 0.01),
        "fused SGD + lerp, unblocked": lambda: (opt.step(w, buf, g, 0.01), avg.lerp_(w, 0.001)),
        "ShardState.push (validate + SGD + Polyak, blocked)": push,
        "six numpy ufuncs (Nesterov, no Polyak)": numpy_ufuncs,
    }
    results = {k: [] for k in cases}
    for _ in range(3):  # interleave rounds, so host-load drift hits every case alike
        for k, fn in cases.items():
            results[k].append(median_time(fn, repeats=a.repeats // 3 + 1))
    med = {k: float(np.median(v)) for k, v in results.items()}
    base = med["memcpy (torch copy_)"]
    lines = [f"Machine: {machine()}; {a.threads} torch thread(s); shard of {n:,} float32 "
             f"({4 * n / 2**20:.0f} MiB); medians of interleaved repeats.", "",
             "| operation | ms | x memcpy |", "| --- | ---: | ---: |"]
    for k, v in med.items():
        lines.append(f"| {k} | {1e3 * v:.1f} | {v / base:.2f} |")
    ratio = med["ShardState.push (validate + SGD + Polyak, blocked)"] / base
    lines += ["", f"**Shard push = {ratio:.2f}x memcpy** (target: at most 3x)."]
    text = "\n".join(lines)
    print(text)
    if not a.no_write:
        write_section("Shard update (Nesterov + weight decay + Polyak)", text)


if __name__ == "__main__":
    main()
