"""The push that reads each gradient once: the check and the update in one pass, out of place.

A shard must leave its state unchanged when a push turns out to hold a NaN or an Inf
(shard.py's invariants), so it reads the whole gradient before it writes anything: once to check
it (`gradient_finite`), once more in the update's loop (push_kernel.py). In place the two reads
cannot become one: a one-pass loop that meets a NaN in its last block has already overwritten
the first blocks, and the old weights, momentum and average are gone.

Out of place they can. One loop reads the gradients and the state, sums each gradient (the
check: a sum is finite only if every element is) and writes the new state into a second copy of
the shard's arrays; the shard keeps the copy only if every sum is finite (`ShardState._drain`),
so a bad push leaves the state it read untouched. Plain stores into another array would make the
CPU read each cache line before writing it (an out-of-place add took 1.3x the in-place one on the
Xeon VM), more than the check costs; streaming (non-temporal) stores write whole lines without
reading them. Inductor emits no streaming stores, so this loop is a small C kernel (AVX-512, or
AVX2 with FMA), built once per machine with its C compiler and called through ctypes, which
releases the GIL while it runs. It runs on as many threads as torch's loops do
(`torch.get_num_threads()`, passed in): OpenMP's own count in a thread torch has not yet run in
is OMP_NUM_THREADS, which Ray sets to 1 in its workers, so a first version of this kernel ran on
one thread in a two-thread shard's actor threads (tests/test_transport_ray.py checks).

Measured on 25.6M parameters (benchmarks/bench_fused_check.py, Xeon VM, two threads): 0.83x the
time of the check and the compiled loop for one push, 0.60x for a group of 4. The price: twice
the shard's memory for its weights, momentum and average, and a C compiler with AVX2 at run time;
where either is missing the shard keeps the check and the in-place loop. The numbers are within
float32 rounding of the compiled loop's (both contract multiply-adds), checked once per process.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import numpy as np
import torch

__all__ = ["GROUP", "aligned_empty", "compiler", "library", "push", "threads"]

GROUP = 8  # pushes one call applies at most (the kernel keeps a running sum per gradient)
ALIGNMENT = 64  # bytes: a cache line, and an AVX-512 streaming store's alignment

KERNEL = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#if defined(__AVX512F__)
typedef __m512 V;
#define W 16
#define LD _mm512_loadu_ps
#define SET _mm512_set1_ps
#define ADD _mm512_add_ps
#define SUB _mm512_sub_ps
#define FMA _mm512_fmadd_ps
#define FNMA _mm512_fnmadd_ps
#define STREAM _mm512_stream_ps
#define ZERO _mm512_setzero_ps
#define STOREU _mm512_storeu_ps
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 V;
#define W 8
#define LD _mm256_loadu_ps
#define SET _mm256_set1_ps
#define ADD _mm256_add_ps
#define SUB _mm256_sub_ps
#define FMA _mm256_fmadd_ps
#define FNMA _mm256_fnmadd_ps
#define STREAM _mm256_stream_ps
#define ZERO _mm256_setzero_ps
#define STOREU _mm256_storeu_ps
#else
#error "the fused push needs AVX-512, or AVX2 with FMA"
#endif
#define GMAX 8

/* push_kernel.step for G gradients in turn, element by element; h: G rows of [lr, weight decay,
   momentum, Polyak weight]. Reads w, b (momentum), a (average, if averaged) and the gradients;
   writes w2, b2, a2 (W-float aligned) with streaming stores; sums[k]: gradient k's sum. Runs on
   `threads` threads; *used: how many it got. */
void fused_push(const float *w, const float *b, const float *a, const float *const *gs, int G,
                const float *h, float *w2, float *b2, float *a2, int64_t n, int nesterov,
                int averaged, float *sums, int threads, int *used) {
  const int64_t body = n / W * W;
  float total[GMAX] = {0};
  #pragma omp parallel num_threads(threads)
  {
    V acc[GMAX];
    for (int k = 0; k < G; ++k) acc[k] = ZERO();
    #pragma omp single nowait
    *used = omp_get_num_threads();
    #pragma omp for schedule(static)
    for (int64_t i = 0; i < body; i += W) {
      V x = LD(w + i), m = LD(b + i), av = averaged ? LD(a + i) : ZERO();
      for (int k = 0; k < G; ++k) {
        const float *r = h + 4 * k;
        V g = LD(gs[k] + i);
        acc[k] = ADD(acc[k], g);
        V d = FMA(SET(r[1]), x, g);
        m = FMA(SET(r[2]), m, d);
        x = FNMA(SET(r[0]), nesterov ? FMA(SET(r[2]), m, d) : m, x);
        if (averaged) av = FMA(SET(r[3]), SUB(x, av), av);
      }
      STREAM(w2 + i, x);
      STREAM(b2 + i, m);
      if (averaged) STREAM(a2 + i, av);
    }
    _mm_sfence();
    for (int k = 0; k < G; ++k) {
      float part[W], s = 0.f;
      STOREU(part, acc[k]);
      for (int j = 0; j < W; ++j) s += part[j];
      #pragma omp atomic
      total[k] += s;
    }
  }
  for (int64_t i = body; i < n; ++i) {
    float x = w[i], m = b[i], av = averaged ? a[i] : 0.f;
    for (int k = 0; k < G; ++k) {
      const float *r = h + 4 * k;
      float g = gs[k][i], d = g + r[1] * x;
      total[k] += g;
      m = r[2] * m + d;
      x = x - r[0] * (nesterov ? d + r[2] * m : m);
      if (averaged) av = av + r[3] * (x - av);
    }
    w2[i] = x;
    b2[i] = m;
    if (averaged) a2[i] = av;
  }
  for (int k = 0; k < G; ++k) sums[k] = total[k];
}
"""

FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
_building = threading.Lock()


def aligned_empty(n: int) -> np.ndarray:
    """n float32, uninitialized, starting on an ALIGNMENT-byte boundary (numpy aligns to 16)."""
    raw = np.empty(n + ALIGNMENT // 4, np.float32)
    skip = (-raw.ctypes.data % ALIGNMENT) // 4
    return raw[skip:skip + n]


def library():
    """The kernel's function, built and checked once per process (whichever thread asks first),
    or None where it cannot be built or does not compute `push_kernel.step` here."""
    with _building:
        return _library()


def _cpu() -> str:
    """What -march=native compiles for: the CPU's model and flags (a cached build is per CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags"))
                           )[:4096]
    except OSError:
        return platform.processor()


def compiler() -> str | None:
    """The C compiler the kernel is built with ($CC, else cc or gcc), or None: none here."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


@functools.cache
def _library():
    cc = compiler()
    if cc is None or platform.machine() not in ("x86_64", "AMD64"):
        return None
    tag = hashlib.sha1("\n".join([KERNEL, " ".join(FLAGS), cc, _cpu()]).encode()).hexdigest()
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), f"ps_trainer_{os.getuid() if hasattr(os, 'getuid') else 'user'}")
    lib = os.path.join(folder, f"fused_push_{tag[:16]}.so")
    try:
        if not os.path.exists(lib):
            os.makedirs(folder, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:  # several shards build at once
                src, out = os.path.join(tmp, "fused_push.c"), os.path.join(tmp, "fused_push.so")
                with open(src, "w") as f:
                    f.write(KERNEL)
                subprocess.run([cc, *FLAGS, src, "-o", out], check=True,
                               capture_output=True, timeout=120)
                os.replace(out, lib)
        fn = ctypes.CDLL(lib).fused_push  # a CDLL call releases the GIL
    except (OSError, subprocess.SubprocessError):
        return None
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int, ctypes.c_void_p] + [ctypes.c_void_p] * 3 \
        + [ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    return fn if _agrees(fn) else None


def _agrees(fn) -> bool:
    """Does `fn` compute push_kernel.step (eager, in order) within float32 rounding, sum each
    gradient, flag a NaN and leave the state it read as it was? On a few numbers, with a tail."""
    from . import push_kernel

    n, gen = 16 * 5 + 3, torch.Generator().manual_seed(0)
    gs = [torch.rand(n, generator=gen) - 0.5 for _ in range(3)]
    hs = torch.tensor([[0.1, 1e-2, 0.9, 0.3], [0.05, 1e-2, 0.9, 0.2], [0.2, 0.0, 0.5, 0.1]])
    for nesterov in (True, False):
        for averaged in (True, False):
            src = [torch.from_numpy(aligned_empty(n)).copy_(torch.rand(n, generator=gen))
                   for _ in range(3)]
            dst = [torch.from_numpy(aligned_empty(n)) for _ in range(3)]
            ref = [t.clone() for t in src]
            push_kernel.plain_push([(ref[0], ref[1], ref[2] if averaged else None, gs)], hs, nesterov)
            before = [t.clone() for t in src]
            sums, _ = _call(fn, src, dst, gs, hs, nesterov, averaged)
            if not all(torch.allclose(x, y, rtol=1e-5, atol=1e-6)
                       for x, y in zip(ref[:3 if averaged else 2], dst)):
                return False
            if not all(math.isclose(s, float(g.sum()), abs_tol=1e-3) for s, g in zip(sums, gs)):
                return False
            bad = gs[1].clone()
            bad[n - 1] = float("nan")  # in the tail
            bad[7] = float("inf")  # and in the vectors
            flagged = [math.isfinite(s) for s in _call(fn, src, dst, [gs[0], bad], hs[:2],
                                                      nesterov, averaged)[0]]
            if flagged != [True, False] or not all(torch.equal(x, y) for x, y in zip(before, src)):
                return False
    return True


def push(src: list, dst: list, gs: list, hs: torch.Tensor, nesterov: bool,
         averaged: bool) -> list[float]:
    """Apply the gradients `gs` (at most GROUP, float32, contiguous) in turn to the state `src`
    = [weights, momentum, average] (torch views of numpy arrays; the average unused unless
    `averaged`), writing the new state to `dst` (the same, ALIGNMENT-aligned) and leaving `src`
    as it was. `hs`: one row [lr, weight decay, momentum, Polyak weight] per gradient
    (`push_kernel.numbers`). Returns each gradient's sum: a push whose sum is not finite holds a
    NaN or an Inf, or values whose float32 sum overflows (`gradient_finite` tells them apart)."""
    return _call(_library(), src, dst, gs, hs, nesterov, averaged)[0]


def threads() -> int:
    """How many threads the kernel runs on when called from this thread now: torch's count, even
    in a Ray actor's threads (see the module docstring); 0 where the kernel cannot run here."""
    fn = library()
    if fn is None:
        return 0
    n = 4 * ALIGNMENT
    src = [torch.zeros(n) for _ in range(3)]
    dst = [torch.from_numpy(aligned_empty(n)) for _ in range(3)]
    return _call(fn, src, dst, [torch.zeros(n)], torch.zeros(1, 4), True, True)[1]


def _call(fn, src, dst, gs, hs, nesterov, averaged) -> tuple[list[float], int]:
    """(each gradient's sum, the threads the kernel ran on)."""
    assert fn is not None and 0 < len(gs) <= GROUP
    assert all(t.data_ptr() % ALIGNMENT == 0 for t in dst[:3 if averaged else 2])
    hs = hs.to(torch.float32).contiguous()
    ptrs = (ctypes.c_void_p * len(gs))(*[g.data_ptr() for g in gs])
    sums, used = np.zeros(len(gs), np.float32), ctypes.c_int(0)
    fn(*[t.data_ptr() for t in src], ptrs, len(gs), hs.data_ptr(), *[t.data_ptr() for t in dst],
       src[0].shape[0], int(nesterov), int(averaged), sums.ctypes.data, torch.get_num_threads(),
       ctypes.byref(used))
    return [float(s) for s in sums], used.value
