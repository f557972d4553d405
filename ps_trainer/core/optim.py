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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK = 1 << 20  # elements (4 MiB): measured fastest on the 2-core dev VMs, see benchmarks/


@dataclass(frozen=True)
class NesterovMomentum:
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = True

    def __post_init__(self):
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.nesterov and self.momentum == 0.0:
            # torch refuses nesterov without momentum; plain SGD is the same rule here.
            object.__setattr__(self, "nesterov", False)

    def step(self, w: torch.Tensor, buf: torch.Tensor, g: torch.Tensor, lr: float) -> None:
        """One in-place update of `w` and `buf` (flat float32) by gradient `g` (read only)."""
        # Without momentum the kernel takes no buffer (it refuses one): plain SGD, buf stays 0.
        bufs = [buf] if self.momentum else []
        torch._fused_sgd_([w], [g], bufs, weight_decay=self.weight_decay, momentum=self.momentum,
                          lr=lr, dampening=0.0, nesterov=self.nesterov, maximize=False,
                          is_first_step=False)


def blocks(*tensors: torch.Tensor, size: int = BLOCK):
    """Yield aligned views of equal-length flat tensors, `size` elements at a time."""
    n = tensors[0].numel()
    for start in range(0, n, size):
        yield tuple(t[start:start + size] for t in tensors)
