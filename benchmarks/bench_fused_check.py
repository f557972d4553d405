"""A prototype, not used by the shard: could the push read each gradient once (issue 15, item 1)?

The shard reads every gradient twice: once to check it (`gradient_finite`: a NaN or Inf push must
leave the state unchanged, so the whole gradient is read before anything is written) and once in
the update's loop (core/push_kernel.py). In place, the two reads cannot become one: by the time a
one-pass loop meets a NaN in its last block, it has overwritten the first blocks, and the old
values of the weights, the momentum and the average are gone.

Out of place they can: one loop reads the gradients, the weights, the momentum and the average,
sums each gradient (the check) and writes the new state into a second copy of the shard's arrays;
the shard keeps the new copy only if every sum is finite, so a bad push leaves the old copy as it
was. Plain stores into another array make the CPU read each of its cache lines first (a
read-for-ownership: 1.3x for an out-of-place add here), which costs more than the check saves;
streaming (non-temporal) stores write whole lines without reading them. Inductor emits no
streaming stores, so this prototype is a small C kernel with AVX-512 or AVX2 intrinsics, built
with the machine's C compiler and called through ctypes (which releases the GIL).

It measures, on 25.6M parameters (ResNet-50) with Nesterov momentum, weight decay and the Polyak
average, for one push and for a group of 4 (group commit), on 1 and 2 threads:
  now         the shard's path: the compiled check of every gradient, then the compiled in-place loop
  loop alone  the in-place loop without the check (what the update costs if the check were free)
  streaming   the fused kernel: sums and update in one pass, streaming stores into a second copy
  plain       the same kernel with ordinary stores (the read-for-ownership's price)
and checks that the fused kernel's new state is within float32 rounding of the compiled loop's
and its sums equal the gradients' sums. Medians of --repeats, interleaved.

Its price, were the shard to take it: twice the shard's memory for the weights, the momentum and
the average (+300 MB for ResNet-50), and a push's outcome known only after its loop (a
non-finite push would send its group back to be decided again without it).

    python benchmarks/bench_fused_check.py [--repeats 11] [--smoke] [--no-write]
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

from ps_trainer.core import push_kernel as pk  # noqa: E402

SECTION = "Prototype: the check fused into the update (issue 15)"
WIDE = 16  # floats per vector in the C kernel's widest form (AVX-512); it handles any n

KERNEL = r"""
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
typedef __m512 V;
#define W 16
#define LD _mm512_load_ps
#define SET _mm512_set1_ps
#define ADD _mm512_add_ps
#define SUB _mm512_sub_ps
#define FMA _mm512_fmadd_ps
#define FNMA _mm512_fnmadd_ps
#define STREAM _mm512_stream_ps
#define STORE _mm512_store_ps
#define ZERO _mm512_setzero_ps
#define STOREU _mm512_storeu_ps
#else
typedef __m256 V;
#define W 8
#define LD _mm256_load_ps
#define SET _mm256_set1_ps
#define ADD _mm256_add_ps
#define SUB _mm256_sub_ps
#define FMA _mm256_fmadd_ps
#define FNMA _mm256_fnmadd_ps
#define STREAM _mm256_stream_ps
#define STORE _mm256_store_ps
#define ZERO _mm256_setzero_ps
#define STOREU _mm256_storeu_ps
#endif
/* Nesterov momentum with weight decay, then the Polyak lerp, for G gradients in turn (h: G rows
   of [lr, weight decay, momentum, Polyak weight], as push_kernel.step); the new state goes to
   w2, b2, a2 and the sum of each gradient to sums[g]. n: a multiple of W, arrays 64-byte aligned. */
void fused(const float *w, const float *b, const float *a, const float **gs, int G, const float *h,
           float *w2, float *b2, float *a2, int64_t n, int streaming, float *sums) {
  for (int k = 0; k < G; ++k) sums[k] = 0.f;
  #pragma omp parallel
  {
    V acc[4] = {ZERO(), ZERO(), ZERO(), ZERO()};
    #pragma omp for schedule(static)
    for (int64_t i = 0; i < n; i += W) {
      V x = LD(w + i), m = LD(b + i), av = LD(a + i);
      for (int k = 0; k < G; ++k) {
        V g = LD(gs[k] + i);
        acc[k] = ADD(acc[k], g);
        V d = FMA(SET(h[4 * k + 1]), x, g);
        m = FMA(SET(h[4 * k + 2]), m, d);
        x = FNMA(SET(h[4 * k]), FMA(SET(h[4 * k + 2]), m, d), x);
        av = FMA(SET(h[4 * k + 3]), SUB(x, av), av);
      }
      if (streaming) { STREAM(w2 + i, x); STREAM(b2 + i, m); STREAM(a2 + i, av); }
      else { STORE(w2 + i, x); STORE(b2 + i, m); STORE(a2 + i, av); }
    }
    _mm_sfence();
    for (int k = 0; k < G; ++k) {
      float part[W], s = 0.f;
      STOREU(part, acc[k]);
      for (int j = 0; j < W; ++j) s += part[j];
      #pragma omp atomic
      sums[k] += s;
    }
  }
}
"""


def build() -> ctypes.CDLL | None:
    """The kernel, compiled for this machine once (cached by its source's hash); None where
    there is no compiler or no AVX2."""
    flags = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
    tag = hashlib.sha1((KERNEL + " ".join(flags)).encode()).hexdigest()[:12]
    lib = Path(tempfile.gettempdir()) / f"ps_trainer_fused_{tag}.so"
    try:
        if not lib.exists():
            src = lib.with_suffix(".c")
            src.write_text(KERNEL)
            subprocess.run([os.environ.get("CC", "cc"), *flags, str(src), "-o", str(lib)],
                           check=True, capture_output=True)
        dll = ctypes.CDLL(str(lib))  # a CDLL call releases the GIL
    except (OSError, subprocess.CalledProcessError):
        return None
    f = dll.fused
    f.restype = None
    f.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int, ctypes.c_void_p] + [ctypes.c_void_p] * 3 \
        + [ctypes.c_int64, ctypes.c_int, ctypes.c_void_p]
    return dll


def aligned(n: int, value: float) -> torch.Tensor:
    """n float32 starting on a 64-byte boundary (streaming stores need whole, aligned lines)."""
    raw = np.empty(n + 16, np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    t = torch.from_numpy(raw[skip:skip + n])
    t.fill_(value)
    return t


def fused(dll, state, out, gs, hs, streaming: bool) -> list[float]:
    """The kernel on `state` (w, buf, avg) into `out`; the gradients' sums."""
    ptrs = (ctypes.c_void_p * len(gs))(*[g.data_ptr() for g in gs])
    sums = np.zeros(len(gs), np.float32)
    dll.fused(*[t.data_ptr() for t in state], ptrs, len(gs), hs.data_ptr(),
              *[t.data_ptr() for t in out], state[0].shape[0], int(streaming), sums.ctypes.data)
    return sums.tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=int, default=25_557_024, help="elements (a multiple of 16)")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--smoke", action="store_true", help="small arrays, 3 repeats; implies --no-write")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.params, a.repeats, a.no_write = 1 << 18, 3, True
    n = a.params // WIDE * WIDE
    dll = build()
    if dll is None or pk.compiled(True, True) is None:
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
            sums = fused(dll, state, out, g, hs, True)
            agree &= all(torch.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(ref, out))
            agree &= all(abs(s - float(x.sum())) <= 1e-3 * max(1.0, float(x.abs().sum()))
                         for s, x in zip(sums, g))
            paths = {"now": lambda: ([pk.total(x) for x in g], pk.push(*state, g, hs, nesterov=True)),
                     "loop alone": lambda: pk.push(*state, g, hs, nesterov=True),
                     "streaming": lambda: fused(dll, state, out, g, hs, True),
                     "plain": lambda: fused(dll, state, out, g, hs, False)}
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
    sums = fused(dll, state, out, [gs[0], gs[1], bad, gs[3]],
                 pk.numbers([(None, 0.01, 0.01)] * 4, 5e-4, 0.9), True)
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
             "| threads | G | now: check + in-place loop | loop alone | fused, streaming stores "
             "| fused, plain stores | fused / now | now, per push | fused, per push |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for threads, G, ms in rows:
        lines.append(f"| {threads} | {G} | {ms['now']:.1f} | {ms['loop alone']:.1f} | "
                     f"{ms['streaming']:.1f} | {ms['plain']:.1f} | "
                     f"{ms['streaming'] / ms['now']:.2f}x | {ms['now'] / G:.1f} | "
                     f"{ms['streaming'] / G:.1f} |")
    lines += ["", f"- The fused kernel's new state {'is' if agree else 'is NOT'} within float32 "
                  f"rounding of the compiled loop's, and its sums equal the gradients' sums.",
              f"- A NaN in gradient 3 of a group of 4: the sums flagged gradients "
              f"{[i + 1 for i, f in enumerate(flagged) if f]}; the state the kernel read is "
              f"{'unchanged' if untouched else 'CHANGED'}, bit for bit."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
