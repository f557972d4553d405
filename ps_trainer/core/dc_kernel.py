"""DC-ASGD's whole push as one loop over the shard, compiled by torch.compile.

A delay-compensated push (Zheng et al. 2017) is the compensation g + lambda_t * g * g * (w_now -
w_read), then Nesterov momentum with weight decay (optim.py), then the Polyak average (polyak.py).
Written in torch operations (`DelayCompensated.compensate`, then the SGD kernel and the lerp,
block by block: `ShardState._steps`) that is ten passes over each block, and a single thread pays
for every pass: about 3x the plain push's time. Here the same arithmetic is one function that
TorchInductor fuses into a single loop (C++ on a CPU): it reads g, w, w_read, the mean square, the
momentum buffer and the average once and writes four of them, and costs about what the plain push
costs (benchmarks/bench_shard_update.py).

Its price: a C++ compiler at run time and one compilation per process (3-9 s here; reused from
torch's on-disk cache by the next process), and numbers within float32 rounding of the eager push,
not bit for bit (the compiler fuses and reorders; tests/test_dc_kernel.py). So `kernel="auto"`
takes it only for shards of `MIN_SIZE` parameters or more, where a push costs milliseconds and the
compilation pays for itself within a few hundred pushes, and only where `compiled()` built it and
checked it against the eager formula; everything else takes the eager blocks.
"""

from __future__ import annotations

import functools

import torch

# the same threshold, build options (the GIL) and the plain push's arithmetic
from .push_kernel import MIN_SIZE, OPTIONS, step
KERNELS = ("auto", "compiled", "eager")


def dc_push(w: torch.Tensor, buf: torch.Tensor, avg: torch.Tensor | None, ms: torch.Tensor | None,
            g: torch.Tensor, w_read: torch.Tensor, h: torch.Tensor, nesterov: bool) -> None:
    """One compensated push, in place: `w`, `buf` (momentum), `avg` (Polyak, or None) and `ms`
    (the running mean square of g: DC-ASGD-a; None for a constant lambda). `h` holds the step's
    numbers, as a tensor so that new values reuse the compiled code: [lr, weight decay, momentum,
    Polyak weight, lambda, mean-square decay, eps]. The same formula, in the same order, as the
    eager path: `DelayCompensated.compensate`, then `NesterovMomentum.step`, then the lerp."""
    lr, wd, mom, weight, lam, m, eps = h.unbind()
    if ms is None:
        g = g + lam * ((w - w_read) * g * g)
    else:
        ms.copy_(ms * m + (1 - m) * (g * g))
        g = g + lam * ((w - w_read) * g * g / (torch.sqrt(ms) + eps))
    step(w, buf, avg, g, lr, wd, mom, weight, nesterov)


@functools.cache
def compiled():
    """`dc_push` compiled (dynamic shapes: one compilation serves every shard size), or None
    where it cannot be built or does not match the eager function on a few numbers here (no C++
    compiler, an unsupported platform, a torch whose compiler changed). Once per process; the
    probe compiles the default case (DC-ASGD-a, Nesterov, Polyak), the others compile at their
    first push (tests/test_dc_kernel.py checks three)."""
    try:
        kernel = torch.compile(dc_push, dynamic=True, fullgraph=True, options=OPTIONS)
        gen = torch.Generator().manual_seed(0)
        arrays = [torch.rand(37, generator=gen) for _ in range(6)]
        mine, ref = [a.clone() for a in arrays], [a.clone() for a in arrays]
        h = torch.tensor([0.1, 1e-3, 0.9, 0.3, 2.0, 0.95, 1e-7])
        kernel(*mine, h, True)
        dc_push(*ref, h, True)
        if not all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(mine, ref)):
            return None
        return kernel
    except Exception:  # noqa: BLE001 - whatever stops the compiler means: take the eager path
        return None


def push(w, buf, avg, ms, g, w_read, *, lr: float, weight: float, lam: float, decay: float,
         eps: float, weight_decay: float, momentum: float, nesterov: bool) -> None:
    """Run the compiled `dc_push` (the caller checked `compiled()` is not None)."""
    h = torch.tensor([lr, weight_decay, momentum, weight, lam, decay, eps], dtype=torch.float32)
    compiled()(w, buf, avg, ms, g, w_read, h, nesterov)
