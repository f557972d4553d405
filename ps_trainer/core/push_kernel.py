"""The plain push's update as one loop over the shard, compiled by torch.compile.

A push applies Nesterov momentum with weight decay (optim.py) and then moves the Polyak average
towards the new weights (polyak.py). In torch operations that is two kernels per block: torch's
fused SGD (one pass) and the lerp, which re-reads the block's new weights from cache
(`ShardState._steps`). Here the same arithmetic is one function that TorchInductor fuses into a
single loop (C++ on a CPU): it reads g, w, the momentum buffer and the average once and writes
three of them, every value in registers in between. On the Xeon VM that is 0.65-0.8x the eager
blocks' time (docs/benchmarks.md, shard update). The loop walks two regions of the shard side by
side (`LANES`): one core streams memory faster from more places at once. Several pushes that
queued behind a busy shard (group commit) run in the same loop: each element is read and written
once for all of them, so 4 pushes cost about half of 4 single ones (0.55x each, check included,
each push with a gradient of its own), and give the same numbers, bit for bit.

A shard that runs this loop in place also checks its gradients first with a compiled sum
(`total`), which reads eight regions side by side: 0.8x torch.sum's time. Both run on the shard's
threads (`OPTIONS`). Where it can, a shard instead checks and updates in one pass, out of place
(fused_push.py, `ShardState.fuses`); this loop is then the fallback and the reference.

It is built with Inductor's C++ wrapper (`OPTIONS`), whose entry point releases the GIL while the
loop runs, as torch's kernels do: the shard's other threads go on meanwhile. A Ray shard compiles
every group size, and the sum, as it starts (`warm`), so no push waits for a compilation.

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
import math
import threading
import types

import torch

__all__ = ["ALIGN", "BLOCK", "CHECK_LANES", "GROUP", "LANES", "MIN_SIZE", "OPTIONS", "compiled",
           "lane_size", "numbers", "plain_push", "push", "region", "step", "summed", "total", "warm"]

# Parameters: a smaller shard's push stays eager under kernel="auto". Per push, compiled against
# torch's fused kernel + lerp (check included, caches cold, medians of 9; Xeon VM, session 15):
# 1.73x at 256K, 1.37x at 512K, 1.06x at 1M, 0.88x at 2M, 0.83x at 3.4M alone; in groups of 4
# 1.26x, 0.97x, 0.81x, 0.64x and 0.57x. (Small arrays stay in cache between the eager passes.)
MIN_SIZE = 1 << 21

# Pushes per call at most. Every group size is a compilation of its own (2-3 s once torch has
# compiled the first), and torch.compile keeps 8 variants of a function; groups of up to 4 cover
# what queues behind a shard at K=16 in four calls or fewer per block.
GROUP = 4

# Elements per region and call (16 MiB of each array): a call of the compiled function costs
# about 50 us here, so the shard's 1M blocks paid 1.3 ms a push in calls; 4M blocks were fastest
# (25-27 ms for 25.6M parameters, against 28-38 ms in 1M and 26-34 ms in one call; scratch runs,
# Xeon VM, session 13, one region).
BLOCK = 1 << 22

# Regions of the shard one loop updates side by side: element x of the first half and element x
# of the second in the same iteration. One core reads memory faster from more streams at once
# (more cache misses in flight): a push's loop reads 4 arrays and writes 3; over two regions,
# 14 streams, it took 0.85x the time of one region (30.0 against 35.1 ms for 25.6M parameters,
# medians of 15 rounds, Xeon VM; 4 regions 29.0). A group of 4 pushes already reads 7 arrays:
# two regions were the same there (13.0 ms a push either way).
LANES = 2

# The same for the check's read of the gradient (`total`): one stream summed at 9.2 ms, 2 at
# 9.1, 4 at 7.8 and 8 at 7.3 (the same runs).
CHECK_LANES = 8

# Regions and blocks start at multiples of this many elements (64 bytes, a cache line) from the
# array's start: an aligned array gives aligned regions, whose vector loads never straddle a line.
ALIGN = 16
SMALLEST = 64  # elements per region at least; smaller arrays run `plain_push` eagerly
# The compiled sum's regions at least: Inductor builds a sum of more than 4096 elements another way
# (with a cascade of partial sums), so smaller regions would compile a second variant.
SUM_SMALLEST = 1 << 13


def lane_size(n: int, lanes: int) -> int:
    """Elements in each of `lanes` regions of an array of n (a multiple of ALIGN; 0: too small)."""
    lane = n // lanes // ALIGN * ALIGN
    return lane if lane >= SMALLEST else 0


def plain_push(lanes: list, hs: torch.Tensor, nesterov: bool) -> None:
    """Push after push, in place: `lanes` is a list of regions of the same size, each (w, buf, avg,
    gs): the weights, the momentum buffer, the Polyak average (or None) and the group's gradients
    there. For each gradient, the formula of `NesterovMomentum` (torch.optim.SGD's), then the
    lerp. Row i of `hs` holds push i's numbers as a tensor, so that new values reuse the compiled
    code: [lr, weight decay, momentum, Polyak weight]. Compiled, it is one loop over the regions
    side by side, and the pushes of a group run in it together: each element is read once,
    every push's arithmetic applied to it in registers, in order, and written once (ShardState's
    group commit): the same values as one call per push."""
    for w, buf, avg, gs in lanes:
        for i, g in enumerate(gs):
            step(w, buf, avg, g, *hs[i].unbind(), nesterov)


def lanes_sum(*parts: torch.Tensor) -> torch.Tensor:
    """The sum of every element of `parts` (regions of the same size), compiled into one loop
    that reads them side by side (`total`)."""
    s = parts[0]
    for p in parts[1:]:
        s = s + p
    return s.sum()


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
# And the loop runs on as many threads as the shard's process has (`torch.set_num_threads`, a
# shard's CPUs), decided when it runs: by default Inductor fixes the count when it compiles and
# splits a loop only if the sizes it compiles with are large, and ours are tiny (`warm`), so the
# loop ran on one thread whatever the shard had. With two threads a push's loop on 25.6M
# parameters took 14-20 ms against 27-30 ms on one (Xeon VM, session 16); every element is
# computed alone, so the numbers are the same bit for bit on any count of threads.
OPTIONS = {"cpp_wrapper": True, "cpp.dynamic_threads": True}

_building = threading.Lock()  # one build, whichever thread asks first (`warm` runs in a thread)


def region(t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Elements [lo, hi) of `t` as a tensor of its own (the same memory, storage offset 0). The
    compiled code guards on its inputs' storage offsets (0 or not; equal to a size or not), so
    views of the shard at their offsets would compile a variant for each pattern of blocks,
    past torch.compile's 8 per function; a tensor made from the numpy view has none."""
    return torch.from_numpy(t.numpy()[lo:hi])


def cut(lo: int, hi: int, w, buf, avg, gs: list) -> tuple:
    """Elements [lo, hi) of every array of a push: one region for `plain_push`."""
    return (region(w, lo, hi), region(buf, lo, hi), None if avg is None else region(avg, lo, hi),
            [region(g, lo, hi) for g in gs])


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
        w, buf, avg, g = (torch.rand(LANES * SMALLEST, generator=gen) for _ in range(4))
        mine, ref = [t.clone() for t in (w, buf, avg)], [t.clone() for t in (w, buf, avg)]
        h = torch.tensor([[0.1, 1e-3, 0.9, 0.3]])
        for fn, (w_, buf_, avg_) in ((kernel, mine), (plain_push, ref)):
            fn([cut(SMALLEST * j, SMALLEST * (j + 1), w_, buf_, avg_ if averaged else None, [g])
                for j in range(LANES)], h, nesterov)
        if not all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(mine, ref)):
            return None
        return kernel
    except Exception:  # noqa: BLE001 - whatever stops the compiler means: take the eager path
        return None


def summed():
    """`lanes_sum` compiled (dynamic shapes: every size), or None where it cannot be built or
    does not match torch.sum on a few numbers here; once per process, whichever thread asks."""
    with _building:
        return _summed()


@functools.cache
def _summed():
    try:
        kernel = torch.compile(lanes_sum, dynamic=True, fullgraph=True, options=OPTIONS)
        x = torch.rand(CHECK_LANES * SUM_SMALLEST, generator=torch.Generator().manual_seed(0))
        parts = [region(x, j * SUM_SMALLEST, (j + 1) * SUM_SMALLEST) for j in range(CHECK_LANES)]
        if not torch.allclose(kernel(*parts), x.sum(), rtol=1e-5):
            return None
        x[3 * SUM_SMALLEST + 5] = float("nan")
        return None if math.isfinite(float(kernel(*parts))) else kernel
    except Exception:  # noqa: BLE001 - as in `_compiled`: the caller takes torch.sum
        return None


def total(t: torch.Tensor) -> float:
    """The sum of `t`'s elements (float32 arithmetic), read by `lanes_sum`'s compiled loop in
    CHECK_LANES regions side by side where it builds (torch.sum for the few left over, and where
    it does not). What a shard that runs the compiled push checks a gradient with: the sum is
    finite only if every element is, whatever order it adds them in (`gradient_finite`)."""
    kernel, lane = summed(), lane_size(t.shape[0], CHECK_LANES)
    if kernel is None or lane < SUM_SMALLEST:
        return float(t.sum())
    head = float(kernel(*(region(t, j * lane, (j + 1) * lane) for j in range(CHECK_LANES))))
    return head + float(t[CHECK_LANES * lane:].sum())


def push(w, buf, avg, gs: list, hs: torch.Tensor, *, nesterov: bool) -> None:
    """Apply the pushes of `gs` to the whole arrays `w`, `buf`, `avg` (None: no average) with the
    compiled `plain_push` (the caller checked `compiled(nesterov, avg is not None)` is not None):
    LANES regions side by side (`lane_size`), in blocks of about BLOCK to 2 x BLOCK elements
    each, the gradients in groups of at most GROUP; the few elements left over (under LANES x
    ALIGN), and arrays too small for regions, eagerly. `hs`: (len(gs), 4) float32, see
    `plain_push`."""
    kernel = compiled(nesterov, avg is not None)
    n = w.shape[0]
    lane = lane_size(n, LANES)
    blocks = max(1, lane // BLOCK)
    edges = [lane * b // blocks // ALIGN * ALIGN for b in range(blocks)] + [lane]
    for lo, hi in zip(edges, edges[1:] if lane else []):  # (no small block to specialize on)
        for i in range(0, len(gs), GROUP):
            kernel([cut(j * lane + lo, j * lane + hi, w, buf, avg, gs[i:i + GROUP])
                    for j in range(LANES)], hs[i:i + GROUP].clone(), nesterov)  # (offset 0)
    if LANES * lane < n:
        plain_push([cut(LANES * lane, n, w, buf, avg, gs)], hs, nesterov)


def warm(nesterov: bool, averaged: bool) -> bool:
    """Compile every group size (1 to GROUP) a shard's pushes will call, now, on a few elements:
    the compiled code serves every size. A Ray shard of MIN_SIZE+ parameters runs this in a
    thread as it starts, while the workers build their models, so that no push stalls later on
    a compilation (the first group of a new size took 1-2 s on the Xeon VM, inside a 3 s
    benchmark cell). False where the loop cannot be built."""
    if compiled(nesterov, averaged) is None:
        return False
    for k in range(1, GROUP + 1):
        w, buf, avg, *gs = (torch.zeros(LANES * SMALLEST) for _ in range(3 + k))
        push(w, buf, avg if averaged else None, gs, numbers([(None, 0.0, 0.0)] * k, 0.0, 0.0),
             nesterov=nesterov)
    summed()
    return True


def numbers(steps: list, weight_decay: float, momentum: float) -> torch.Tensor:
    """`hs` for `push`: one row [lr, weight decay, momentum, Polyak weight] per (g, lr, weight)."""
    return torch.tensor([[lr, weight_decay, momentum, weight] for _, lr, weight in steps],
                        dtype=torch.float32)
