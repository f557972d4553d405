"""The one-pass push (core/fused_push.py) against the shard's check and in-place loop (issue 15).

The shard reads every gradient twice where it cannot use the one-pass push: once to check it
(`gradient_finite`: a NaN or Inf push must leave the state unchanged, so the whole gradient is
read before anything is written) and once in the update's loop (core/push_kernel.py). The
one-pass push sums each gradient as it applies it and writes the new state into a second copy of
the arrays with streaming stores, which the shard keeps only if every sum is finite.

It measures, on 25.6M parameters (ResNet-50) with Nesterov momentum, weight decay and the Polyak
average, for one push and for a group of 4 (group commit), on 1 and 2 threads:
  check + loop  the path without it: the compiled check of every gradient, then the compiled
                in-place loop (push_kernel.py)
  loop alone    the in-place loop without the check (what the update costs if the check were free)
  one pass      fused_push.push: sums and update in one pass, into the second copy
and checks that the one pass's new state is within float32 rounding of the compiled loop's and
its sums equal the gradients' sums, and that a NaN in one gradient of a group is flagged with the
state it read untouched. Medians of --repeats, interleaved.

    python benchmarks/bench_fused_check.py [--repeats 11] [--smoke] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

from ps_trainer.core import fused_push, push_kernel as pk  # noqa: E402
from ps_trainer.core.fused_push import aligned_empty  # noqa: E402

SECTION = "The one-pass push: the check fused into the update (issue 15)"


def aligned(n: int, value: float) -> torch.Tensor:
    t = torch.from_numpy(aligned_empty(n))
    t.fill_(value)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=int, default=25_557_024, help="elements (default: ResNet-50's)")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--smoke", action="store_true", help="small arrays, 3 repeats; implies --no-write")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.params, a.repeats, a.no_write = 1 << 18, 3, True
    n = a.params
    if fused_push.library() is None or pk.compiled(True, True) is None:
        print("no C compiler with AVX2 here, or no compiled loop: nothing to measure")
        return
    pk.warm(True, True)
    gen = torch.Generator().manual_seed(0)
    gs = [aligned(n, 0.0).uniform_(-1e-3, 1e-3, generator=gen) for _ in range(4)]
    state = [aligned(n, 0.01), aligned(n, 0.0), aligned(n, 0.01)]
    out = [aligned(n, 0.0) for _ in range(3)]
    rows, agree = [], True
    for threads in a.threads:
        torch.set_num_threads(threads)  # the kernel's OpenMP too: the process has one libgomp
        for G in (1, 4):
            g = gs[:G]
            hs = pk.numbers([(None, 0.01, 0.01)] * G, 5e-4, 0.9)
            # the same numbers both ways, from the same state
            ref = [t.clone() for t in state]
            pk.push(*ref, g, hs, nesterov=True)
            sums = fused_push.push(state, out, g, hs, True, True)
            agree &= all(torch.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(ref, out))
            agree &= all(abs(s - float(x.sum())) <= 1e-3 * max(1.0, float(x.abs().sum()))
                         for s, x in zip(sums, g))
            paths = {"now": lambda: ([pk.total(x) for x in g], pk.push(*state, g, hs, nesterov=True)),
                     "loop alone": lambda: pk.push(*state, g, hs, nesterov=True),
                     "one pass": lambda: fused_push.push(state, out, g, hs, True, True)}
            times = {p: [] for p in paths}
            for _ in range(a.repeats):  # interleaved: host load hits every path alike
                for p, f in paths.items():
                    t = time.perf_counter()
                    f()
                    times[p].append(time.perf_counter() - t)
            ms = {p: 1e3 * statistics.median(ts) for p, ts in times.items()}
            rows.append((threads, G, ms))
            print(f"threads {threads} G={G}: " + ", ".join(f"{p} {v:.1f} ms" for p, v in ms.items()),
                  flush=True)
    # A NaN in the third gradient of a group: its sum says so, and the state the kernel read is
    # as it was, bit for bit (the new state went to the other copy, which the shard would drop).
    before = [t.clone() for t in state]
    bad = gs[2].clone()
    bad[n // 2] = float("nan")
    sums = fused_push.push(state, out, [gs[0], gs[1], bad, gs[3]],
                           pk.numbers([(None, 0.01, 0.01)] * 4, 5e-4, 0.9), True, True)
    flagged = [not np.isfinite(s) for s in sums]
    untouched = all(torch.equal(x, y) for x, y in zip(before, state))
    text = report(a, n, rows, agree, flagged, untouched)
    print(text)
    if not a.no_write:
        write_section(SECTION, text)


def report(a, n: int, rows: list, agree: bool, flagged: list, untouched: bool) -> str:
    lines = [f"Machine: {machine()}, {time.strftime('%Y-%m-%d')}. {n:,} parameters, Nesterov "
             f"momentum 0.9, weight decay 5e-4, Polyak average; medians of {a.repeats} interleaved "
             f"repeats. Per call (G pushes), ms; the last two columns per push.", "",
             "    python benchmarks/bench_fused_check.py", "",
             "| threads | G | check + in-place loop | loop alone | one pass | one pass / check + "
             "loop | check + loop, per push | one pass, per push |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for threads, G, ms in rows:
        lines.append(f"| {threads} | {G} | {ms['now']:.1f} | {ms['loop alone']:.1f} | "
                     f"{ms['one pass']:.1f} | {ms['one pass'] / ms['now']:.2f}x | "
                     f"{ms['now'] / G:.1f} | {ms['one pass'] / G:.1f} |")
    lines += ["", f"- The one pass's new state {'is' if agree else 'is NOT'} within float32 "
                  f"rounding of the compiled loop's, and its sums equal the gradients' sums.",
              f"- A NaN in gradient 3 of a group of 4: the sums flagged gradients "
              f"{[i + 1 for i, f in enumerate(flagged) if f]}; the state the kernel read is "
              f"{'unchanged' if untouched else 'CHANGED'}, bit for bit."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
