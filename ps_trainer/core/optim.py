"""Nesterov momentum with weight decay, applied in place to one shard's flat arrays.

GoogLeNet was trained with asynchronous SGD and momentum 0.9 (Szegedy et al. 2014, sec. 6);
Sutskever et al. (2013) showed Nesterov's accelerated gradient is the better-behaved form of
momentum for deep networks. The rule is exactly `torch.optim.SGD(momentum=m, nesterov=True,
weight_decay=wd, dampening=0)`, so a single-worker run can be checked against it:

    d   = g + wd * w
    buf = m * buf + d
    w   = w - lr * (d + m * buf)

Why the kernel looks like this: the update runs on the parameter server's hot path over tens of
millions of floats. torch's fused SGD kernel does the whole rule in one pass; running it (and the
Polyak average, which reads the weights just written) over cache-sized blocks keeps those weights
in cache between the two. A fresh temporary of the shard's size would cost page faults.

Two kernels compute the rule (`NesterovMomentum.kernel`):
- "fused": `torch._fused_sgd_`, one pass. It is a *private* torch operator that may change in any
  release: pyproject.toml pins torch to the versions it was tested with, and `fused_sgd_works()`
  checks, once per process, that the installed torch has it, takes our arguments and computes
  the rule above.
- "inplace": torch.optim.SGD's own single-tensor rule, op for op, with public in-place ops on a
  scratch block (four passes over the block, in cache). Bit for bit what torch.optim.SGD(foreach=
  False) computes; about 1.3x the fused kernel's time (benchmarks/bench_shard_update.py).
- "compiled": the whole push, this rule and the Polyak lerp, as one loop that torch.compile
  builds (push_kernel.py): fastest on large shards, within float32 rounding of the rule.
"auto" (the default) is "compiled" for shards of push_kernel.MIN_SIZE parameters or more with
momentum, where it builds; else "fused" where `fused_sgd_works()`, else "inplace".
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from . import push_kernel

BLOCK = 1 << 20  # elements (4 MiB): measured fastest on the 2-core dev VMs, see benchmarks/
KERNELS = ("auto", "fused", "inplace", "compiled")


@functools.cache
def fused_sgd_works() -> bool:
    """Does this torch's private `_fused_sgd_` exist, take the arguments `step` passes and compute
    the rule (Nesterov and plain SGD) on a few numbers? Any failure means: use the fallback."""
    fused = getattr(torch, "_fused_sgd_", None)
    if fused is None:
        return False
    wd, m, lr = 0.1, 0.9, 0.5
    w0 = torch.tensor([1.0, -2.0, 0.25, 3.0])
    buf0 = torch.tensor([0.5, 0.0, -1.0, 2.0])
    g = torch.tensor([0.125, -0.5, 2.0, 0.0])
    d = g + wd * w0
    buf1 = m * buf0 + d
    try:
        w, buf = w0.clone(), buf0.clone()
        fused([w], [g], [buf], weight_decay=wd, momentum=m, lr=lr, dampening=0.0, nesterov=True,
              maximize=False, is_first_step=False)
        plain = w0.clone()
        fused([plain], [g], [], weight_decay=wd, momentum=0.0, lr=lr, dampening=0.0,
              nesterov=False, maximize=False, is_first_step=False)
    except (TypeError, RuntimeError, NotImplementedError, ValueError):
        return False  # gone, renamed arguments, or no CPU kernel in this build
    return (torch.allclose(buf, buf1) and torch.allclose(w, w0 - lr * (d + m * buf1))
            and torch.allclose(plain, w0 - lr * d))


@dataclass(frozen=True)
class NesterovMomentum:
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = True
    kernel: str = "auto"  # "fused" | "inplace" | "compiled" | "auto": see the module doc

    def __post_init__(self):
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown SGD kernel {self.kernel!r}; choose one of: {', '.join(KERNELS)}")
        if self.kernel == "fused" and not fused_sgd_works():
            raise ValueError(f"kernel='fused' needs torch._fused_sgd_ as torch 2.11-2.14 have it; "
                             f"torch {torch.__version__} does not: use kernel='auto' or 'inplace'")
        if self.kernel == "compiled" and push_kernel.compiled(self.nesterov) is None:
            raise ValueError("kernel='compiled': torch.compile cannot build the push here (it "
                             "needs a C++ compiler); use kernel='auto' or 'fused'")
        if self.nesterov and self.momentum == 0.0:
            # torch refuses nesterov without momentum; plain SGD is the same rule here.
            object.__setattr__(self, "nesterov", False)

    def compiled_push(self, n: int, averaged: bool = True) -> bool:
        """Does a push on a shard of `n` parameters (with a Polyak average, or not) run the
        compiled loop (push_kernel.py)? Not without momentum: torch's kernel leaves the buffer
        alone then, the loop would write it. Builds the loop of this configuration only."""
        if not self.momentum or self.kernel in ("fused", "inplace"):
            return False
        if self.kernel == "auto" and n < push_kernel.MIN_SIZE:
            return False
        return push_kernel.compiled(self.nesterov, averaged) is not None

    @property
    def fused(self) -> bool:
        """Does `step` run torch's fused kernel (else the in-place fallback)?"""
        return self.kernel == "fused" or (self.kernel == "auto" and fused_sgd_works())

    def step(self, w: torch.Tensor, buf: torch.Tensor, g: torch.Tensor, lr: float,
             scratch: torch.Tensor | None = None) -> None:
        """One in-place update of `w` and `buf` (flat float32) by gradient `g` (read only).
        `scratch`: a tensor of g's size the fallback may overwrite (else it allocates one)."""
        if self.fused:
            # Without momentum the kernel takes no buffer (it refuses one): plain SGD, buf stays 0.
            bufs = [buf] if self.momentum else []
            torch._fused_sgd_([w], [g], bufs, weight_decay=self.weight_decay,
                              momentum=self.momentum, lr=lr, dampening=0.0,
                              nesterov=self.nesterov, maximize=False, is_first_step=False)
            return
        # torch.optim.SGD's _single_tensor_sgd, op for op (so bit for bit), the temporaries it
        # allocates written into `scratch`. buf starts at zero, so buf = m * 0 + d = d exactly
        # where torch clones d on its first step.
        d = g
        if self.weight_decay:
            d = torch.add(g, w, alpha=self.weight_decay, out=_scratch(scratch, g))
        if self.momentum:
            buf.mul_(self.momentum).add_(d)
            if self.nesterov:
                if d is g:  # no weight decay: d is still the caller's gradient
                    d = torch.add(g, buf, alpha=self.momentum, out=_scratch(scratch, g))
                else:
                    d.add_(buf, alpha=self.momentum)
            else:
                d = buf
        w.add_(d, alpha=-lr)


def _scratch(scratch: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(like) if scratch is None else scratch[:like.numel()]

