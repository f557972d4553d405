"""The plain push's compiled loop (core/push_kernel.py) against torch's fused SGD kernel and the
Polyak lerp it replaces: the same weights, momentum and average within float32 rounding, push
after push, and the same outcomes. Compiling takes a few seconds once per process."""

import numpy as np
import pytest
import torch

from ps_trainer.core import LRSchedule, NesterovMomentum, PolyakAverage, ShardState, push_kernel


@pytest.mark.parametrize("nesterov,averaged", [(True, True), (False, False)])
def test_the_compiled_push_is_the_fused_kernels_push(nesterov, averaged):
    assert push_kernel.compiled() is not None, "torch.compile cannot build the kernel here"
    n = 10_007  # not a multiple of any vector width or block
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(n).astype(np.float32)

    def shard(kernel):
        return ShardState(0, w0, np.ones(3, np.float32),
                          optimizer=NesterovMomentum(0.9, 5e-4, nesterov=nesterov, kernel=kernel),
                          schedule=LRSchedule(0.05, warmup=3),
                          averager=PolyakAverage(0.9) if averaged else None, block=4096)

    compiled, fused = shard("compiled"), shard("fused")
    assert compiled.optimizer.compiled_push(n) and not fused.optimizer.compiled_push(n)
    for step in range(8):
        g = (0.1 * rng.standard_normal(n)).astype(np.float32)
        version = max(0, step - 2)  # stale from the third push on
        assert compiled.push(g, version, step % 3) == fused.push(g, version, step % 3)
        for a, b in [(compiled.params, fused.params), (compiled.momentum, fused.momentum)] + \
                ([(compiled.average, fused.average)] if averaged else []):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # weights ~1: an ulp is 1e-7
    assert np.abs(compiled.params - w0).max() > 100 * 1e-6  # the pushes moved the weights
    assert compiled.counters == fused.counters == {"applied": 8}


def test_auto_compiles_only_large_shards_with_momentum():
    auto = NesterovMomentum(0.9, 1e-4)
    assert not auto.compiled_push(push_kernel.MIN_SIZE - 1)
    assert auto.compiled_push(push_kernel.MIN_SIZE)
    assert not NesterovMomentum(0.0).compiled_push(push_kernel.MIN_SIZE)  # no buffer to write
    for kernel in ("fused", "inplace"):
        assert not NesterovMomentum(0.9, kernel=kernel).compiled_push(push_kernel.MIN_SIZE)


@pytest.mark.parametrize("k,averaged", [(3, True), (6, False)])
def test_a_group_in_one_loop_equals_one_call_per_push_bit_for_bit(k, averaged):
    """Group commit's compiled path: k pushes in one loop over the arrays (in calls of at most
    GROUP) give exactly what k calls of one push give, element for element."""
    assert push_kernel.compiled() is not None
    n = 10_007
    gen = torch.Generator().manual_seed(0)
    w, buf, avg = (torch.randn(n, generator=gen) for _ in range(3))
    gs = [0.1 * torch.randn(n, generator=gen) for _ in range(k)]
    steps = [(g, 0.05 / (i + 1), 0.1 * (i + 1)) for i, g in enumerate(gs)]
    hs = push_kernel.numbers(steps, 5e-4, 0.9)
    assert hs.shape == (k, 4) and hs[1].tolist() == pytest.approx([0.025, 5e-4, 0.9, 0.2])
    one = [t.clone() for t in (w, buf, avg)]
    push_kernel.push(one[0], one[1], one[2] if averaged else None, gs, hs, nesterov=True)
    each = [t.clone() for t in (w, buf, avg)]
    for i, g in enumerate(gs):
        push_kernel.push(each[0], each[1], each[2] if averaged else None, [g], hs[i:i + 1],
                         nesterov=True)
    for a, b in zip(one, each):
        assert torch.equal(a, b)
    assert not torch.equal(one[0], w)  # the pushes moved the weights
    assert torch.equal(one[2], avg) != averaged  # the average moved only where there is one


def constant_push(n, k):
    """Zero weights, momentum and average of n elements and k constant gradients, with `hs`."""
    gs = [torch.full((n,), 1e-3) for _ in range(k)]
    return (torch.zeros(n), torch.zeros(n), torch.zeros(n), gs,
            push_kernel.numbers([(g, 0.01, 0.5) for g in gs], 1e-4, 0.9))


def test_the_compiled_push_releases_the_gil_while_it_runs():
    """A shard's other threads (pulls, `ray.put`, the Ray calls bringing the next pushes) must
    run while a push's loop runs, as they do during torch's own kernels: a thread counting in
    Python keeps counting through the calls. (Inductor's default Python wrapper held the GIL:
    the counting stopped for 20 ms of a 30 ms call; with the C++ wrapper its longest pause
    inside a call was 0.1-1.5 ms.)"""
    import threading
    import time

    assert push_kernel.compiled() is not None
    w, buf, avg, gs, hs = constant_push(1 << 23, push_kernel.GROUP)  # 32 MiB arrays: tens of ms
    push_kernel.push(w, buf, avg, gs, hs, nesterov=True)  # compiled before timing
    ticks, calls, stop = [], [], threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.perf_counter())

    spinner = threading.Thread(target=count, daemon=True)
    spinner.start()
    time.sleep(0.05)
    for _ in range(7):
        t0 = time.perf_counter()
        push_kernel.push(w, buf, avg, gs, hs, nesterov=True)
        calls.append((t0, time.perf_counter()))
    stop.set()
    spinner.join()
    paused = []  # per call: its longest stretch without a count, as a share of the call
    for a, b in calls:
        inside = [a] + [t for t in ticks if a < t < b] + [b]
        paused.append(max(y - x for x, y in zip(inside, inside[1:])) / (b - a))
    assert min(b - a for a, b in calls) > 5e-3  # long enough to tell
    # Holding the GIL pauses the counter in every call; a busy host may pause it in some anyway.
    assert min(paused) < 0.35, f"the counting thread paused for {paused} of each call"


SHARD_PROCESS = """
import sys, time, torch
torch.set_num_threads(2)  # as a Ray shard of two CPUs sets it, before it compiles (warm)
from ps_trainer.core import push_kernel
assert push_kernel.warm(nesterov=True, averaged=True)
n = 1 << 23  # 32 MiB arrays: tens of ms a call
gs = [torch.full((n,), 1e-3), torch.linspace(-1e-3, 1e-3, n)]
hs = push_kernel.numbers([(g, 0.01, 0.5) for g in gs], 1e-4, 0.9)
out = {}
for threads in (2, 1):
    torch.set_num_threads(threads)
    arrays = [torch.zeros(n) for _ in range(3)]
    push_kernel.push(*arrays, gs, hs, nesterov=True)  # (the first call, untimed)
    p0, t0 = time.process_time(), time.thread_time()
    for _ in range(5):
        push_kernel.push(*arrays, gs, hs, nesterov=True)
    process, thread = time.process_time() - p0, time.thread_time() - t0
    out[threads] = (arrays, 1 - thread / process)
same = all(torch.equal(a, b) for a, b in zip(out[1][0], out[2][0]))
moved = bool((out[2][0][0] != 0).all())
print(f"RESULT {out[2][1]:.3f} {out[1][1]:.3f} {same} {moved}")
"""


@pytest.mark.slow  # a process of its own compiles every group size: about 50 s on a cold cache
def test_the_compiled_push_runs_on_the_shards_threads_with_the_same_numbers():
    """A shard given two CPUs (`SHARD_THREADS`: a GPU run's shards) sets two torch threads as it
    starts and compiles its loop then, on tiny arrays (`warm`). The loop must run on both
    threads (`OPTIONS`: Inductor otherwise fixed one thread, having seen small sizes, and the
    loop ran on one whatever the shard had), and give the same numbers as on one, bit for bit:
    every element is computed alone. Measured in CPU time, not wall time, so a busy host does
    not change it: the threads other than the caller's did about half the work on two threads.
    A process of its own, as a shard is: this one compiled its loop on one thread."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", SHARD_PROCESS], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    two, one, same, moved = out.stdout.split("RESULT ")[1].split()
    assert same == "True" and moved == "True"
    assert float(two) > 0.3, f"on two threads the other threads did {two} of the work (one: {one})"
    assert float(one) < 0.1, f"on one thread the other threads did {one} of the work"


def test_warm_compiles_every_group_size_so_no_push_compiles_later():
    from torch._dynamo.utils import counters

    import unittest.mock

    assert push_kernel.warm(nesterov=True, averaged=True)
    graphs = counters["stats"]["unique_graphs"]
    for k in range(1, push_kernel.GROUP + 1):
        w, buf, avg, gs, hs = constant_push((1 << 20) + 3, k)  # another size, as blocks are
        push_kernel.push(w, buf, avg, gs, hs, nesterov=True)
        assert float(w[0]) != 0.0 and float(w[-1]) == float(w[0])  # the left-over element too
        assert push_kernel.total(gs[0]) == pytest.approx(1e-3 * ((1 << 20) + 3), rel=1e-4)
    # A real shard's geometry: several blocks per region (blocks made small here), groups larger
    # than GROUP (calls of 4 and the rest), an unaligned gradient: all served by what warm built.
    # (Views of the arrays at their offsets made a variant per pattern of offsets, and a Ray
    # shard ran out of them at K=16.)
    with unittest.mock.patch.object(push_kernel, "BLOCK", 640):
        for k in (1, 3, 5, 9):
            w, buf, avg, gs, hs = constant_push(2 * 2096 + 9, k)
            raw = torch.full((gs[0].shape[0] + 1,), 1e-3)
            gs[0] = raw[1:]  # 4 bytes past an aligned start
            push_kernel.push(w, buf, avg, gs, hs, nesterov=True)
            assert float(w[0]) != 0.0 and float(w[-1]) == float(w[0]) == float(w[2096])
    assert counters["stats"]["unique_graphs"] == graphs  # nothing new was compiled


def test_the_regions_side_by_side_are_one_region_after_the_other():
    """`push` updates LANES regions in one loop and the few elements left over eagerly: element
    for element what the eager formula gives over the whole array, to float32 rounding, across
    block boundaries (blocks made small here so that there are several)."""
    import unittest.mock

    n = 2 * 2096 + 9  # 2 regions of 2096 elements (3 blocks of about 700 each), 9 left over
    assert push_kernel.lane_size(n, 2) == 2096 and push_kernel.LANES == 2
    gen = torch.Generator().manual_seed(1)
    w, buf, avg = (torch.randn(n, generator=gen) for _ in range(3))
    gs = [0.1 * torch.randn(n, generator=gen) for _ in range(3)]
    hs = push_kernel.numbers([(g, 0.05, 0.2) for g in gs], 5e-4, 0.9)
    mine, ref = [t.clone() for t in (w, buf, avg)], [t.clone() for t in (w, buf, avg)]
    with unittest.mock.patch.object(push_kernel, "BLOCK", 640):
        push_kernel.push(*mine, gs, hs, nesterov=True)
    push_kernel.plain_push([(*ref, gs)], hs, True)  # eager, the whole array as one region
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (mine[0] != w).all()  # every element moved, the left-over one included


def test_the_compiled_sum_answers_several_threads_at_once():
    """The check runs before the shard's lock, in whichever Ray thread brought the push: the
    compiled sum, called from 4 threads at once, gives each what it gives alone."""
    from concurrent.futures import ThreadPoolExecutor

    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(8 * 50_000 + i, generator=gen) for i in range(4)]
    alone = [push_kernel.total(x) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            assert list(pool.map(push_kernel.total, xs)) == alone
    for x, a in zip(xs, alone):  # float32 rounding: well under one element's size
        assert a == pytest.approx(float(x.double().sum()), abs=1e-6 * float(x.abs().sum()))
        assert abs(a - float(x[:-1].double().sum())) > 1e-3  # (which one element would break)


@pytest.mark.slow  # 16 compilations: about 100 s on a cold cache
def test_shards_of_every_configuration_in_one_process_all_compile():
    """torch.compile keeps 8 variants of one code object and, under fullgraph, fails past them:
    4 group sizes for each of the 4 configurations (Nesterov or not, Polyak or not) in one
    process (the test suite, a simulator with several shards) must not run out."""
    for nesterov in (True, False):
        for averaged in (True, False):
            assert push_kernel.warm(nesterov, averaged)
            w, buf, avg, gs, hs = constant_push(1000, push_kernel.GROUP)
            push_kernel.push(w, buf, avg if averaged else None, gs, hs, nesterov=nesterov)
            assert float(w[0]) < 0
