"""The plain push's update as one loop over the shard, compiled by torch.compile.

A push applies Nesterov momentum with weight decay (optim.py) and then moves the Polyak average
towards the new weights (polyak.py). In torch operations that is two kernels per block: torch's
fused SGD (one pass) and the lerp, which re-reads the block's new weights from cache
(`ShardState._steps`). Here the same arithmetic is one function that TorchInductor fuses into a
single loop (C++ on a CPU): it reads g, w, the momentum buffer and the average once and writes
three of them, every value in registers in between. On the Xeon VM that is 0.65-0.8x the eager
blocks' time (docs/benchmarks.md, shard update). Several pushes that queued behind a busy shard
(group commit) run in the same loop: each element is read and written once for all of them, so 4
pushes cost less than half of 4 single ones (0.39-0.49x each, check included), and give the same
numbers, bit for bit.

It is built with Inductor's C++ wrapper (`OPTIONS`), whose entry point releases the GIL while the
loop runs, as torch's kernels do: the shard's other threads go on meanwhile. A Ray shard compiles
every group size as it starts (`warm`), so no push waits for a compilation.

Its price, as for DC-ASGD's compiled push (dc_kernel.py): a C++ compiler at run time, a
compilation per process (17 s for the first group size on a cold cache here, 4 more sizes in
about 40 s; 7 s for all with torch's on-disk cache, which serves the next process), and
numbers within float32 rounding of torch.optim.SGD, not bit for bit (the compiler contracts
multiply-adds). So the optimizer's `kernel="auto"` takes it only for shards of `MIN_SIZE`
parameters or more, with momentum, where `compiled()` built it and checked it against the eager
formula; smaller shards (every test model, and the single-worker oracle against torch.optim.SGD)
take torch's fused kernel, exactly.
"""

from __future__ import annotations

import functools
import threading
import types

import torch

__all__ = ["BLOCK", "GROUP", "MIN_SIZE", "OPTIONS", "compiled", "numbers", "plain_push", "push",
           "step", "warm"]

MIN_SIZE = 1 << 22  # parameters: a smaller shard's push stays eager under kernel="auto"

# Pushes per call at most. Every group size is a compilation of its own (2-3 s once torch has
# compiled the first), and torch.compile keeps 8 variants of a function; groups of up to 4 cover
# what queues behind a shard at K=16 in four calls or fewer per block.
GROUP = 4

# Elements per call (16 MiB of each array): a call of the compiled function costs about 50 us
# here, so the shard's 1M blocks paid 1.3 ms a push in calls; 4M blocks were fastest (25-27 ms
# for 25.6M parameters, against 28-38 ms in 1M and 26-34 ms in one call; scratch runs, Xeon VM).
BLOCK = 1 << 22


def plain_push(w: torch.Tensor, buf: torch.Tensor, avg: torch.Tensor | None,
               gs: list[torch.Tensor], hs: torch.Tensor, nesterov: bool) -> None:
    """Push after push, in place on `w`, `buf` (momentum) and `avg` (Polyak, or None): for each
    gradient in `gs`, the formula of `NesterovMomentum` (torch.optim.SGD's), then the lerp. Row i of
    `hs` holds push i's numbers as a tensor, so that new values reuse the compiled code: [lr,
    weight decay, momentum, Polyak weight]. Compiled, the pushes of a group run in one loop: each
    element is read once, every push's arithmetic applied to it in registers, in order, and
    written once (ShardState's group commit): the same values as one call per push."""
    for i, g in enumerate(gs):
        step(w, buf, avg, g, *hs[i].unbind(), nesterov)


def step(w, buf, avg, g, lr, wd, mom, weight, nesterov: bool) -> None:
    """One push's arithmetic, as `NesterovMomentum.step` and the Polyak lerp compute it; the
    compiled kernels (this one and DC-ASGD's, dc_kernel.py) trace it into their loops."""
    d = g + wd * w
    buf.copy_(mom * buf + d)
    w.sub_(lr * (d + mom * buf) if nesterov else lr * buf)
    if avg is not None:
        avg.lerp_(w, weight)


# Inductor's C++ wrapper: its entry point releases the GIL while the loop runs, as torch's own
# kernels do. The default Python wrapper calls the loop holding the GIL, so for the 25-40 ms of a
# push nothing else in the shard's process ran: not a pull, not a `ray.put`, not the Ray calls
# that bring the next pushes (a thread counting in Python stopped while the loop ran; with this
# option it went on). Same loop, same speed (4.7-4.8 ms for 4M elements both ways); compiling
# the first variant takes longer (17 s against 4-6 s here, before torch's on-disk cache has it).
OPTIONS = {"cpp_wrapper": True}

_building = threading.Lock()  # one build, whichever thread asks first (`warm` runs in a thread)


def compiled(nesterov: bool = True, averaged: bool = True):
    """`_compiled(nesterov, averaged)`, built once even when two threads ask at once."""
    with _building:
        return _compiled(nesterov, averaged)


@functools.cache
def _compiled(nesterov: bool, averaged: bool):
    """`plain_push` compiled for one configuration (dynamic shapes: one compilation serves every
    block and shard size; each group size compiles once, on first use, or in `warm`), or None
    where it cannot be built or does not match the eager function on a few numbers here (no C++
    compiler, an unsupported platform, a torch whose compiler changed). Once per process.

    Each configuration compiles its own copy of `plain_push`'s code: torch.compile keeps at most 8
    compiled variants of one code object (dynamo's `recompile_limit`) and fails past them under
    `fullgraph`. A shard needs one variant per group size (4); a process that runs shards of
    several configurations (the test suite does) would otherwise run out."""
    name = f"plain_push_{'nesterov' if nesterov else 'momentum'}_{'polyak' if averaged else 'raw'}"
    fn = types.FunctionType(plain_push.__code__.replace(co_name=name, co_qualname=name),
                            plain_push.__globals__, name)
    try:
        kernel = torch.compile(fn, dynamic=True, fullgraph=True, options=OPTIONS)
        gen = torch.Generator().manual_seed(0)
        w, buf, avg, g = (torch.rand(37, generator=gen) for _ in range(4))
        mine, ref = [t.clone() for t in (w, buf, avg)], [t.clone() for t in (w, buf, avg)]
        h = torch.tensor([[0.1, 1e-3, 0.9, 0.3]])
        kernel(mine[0], mine[1], mine[2] if averaged else None, [g], h, nesterov)
        plain_push(ref[0], ref[1], ref[2] if averaged else None, [g], h, nesterov)
        if not all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(mine, ref)):
            return None
        return kernel
    except Exception:  # noqa: BLE001 - whatever stops the compiler means: take the eager path
        return None


def push(w, buf, avg, gs: list, hs: torch.Tensor, *, nesterov: bool) -> None:
    """Run the compiled `plain_push` on `gs` in groups of at most GROUP (the caller checked
    `compiled(nesterov, avg is not None)` is not None); `hs`: (len(gs), 4) float32, see
    `plain_push`."""
    kernel = compiled(nesterov, avg is not None)
    for i in range(0, len(gs), GROUP):
        kernel(w, buf, avg, gs[i:i + GROUP], hs[i:i + GROUP], nesterov)


def warm(nesterov: bool, averaged: bool) -> bool:
    """Compile every group size (1 to GROUP) a shard's pushes will call, now, on a few elements:
    the compiled code serves every size. A Ray shard of MIN_SIZE+ parameters runs this in a
    thread as it starts, while the workers build their models, so that no push stalls later on
    a compilation (the first group of a new size took 1-2 s on the Xeon VM, inside a 3 s
    benchmark cell). False where the loop cannot be built."""
    if compiled(nesterov, averaged) is None:
        return False
    for k in range(1, GROUP + 1):
        w, buf, avg, *gs = (torch.zeros(37) for _ in range(3 + k))  # (aligned, as blocks are)
        push(w, buf, avg if averaged else None, gs, numbers([(None, 0.0, 0.0)] * k, 0.0, 0.0),
             nesterov=nesterov)
    return True


def numbers(steps: list, weight_decay: float, momentum: float) -> torch.Tensor:
    """`hs` for `push`: one row [lr, weight decay, momentum, Polyak weight] per (g, lr, weight)."""
    return torch.tensor([[lr, weight_decay, momentum, weight] for _, lr, weight in steps],
                        dtype=torch.float32)
