"""The one-pass push (core/fused_push.py): the check and the update in one loop, out of place.
Against the eager formula within float32 rounding; in a shard, a non-finite push among a group
is rejected with every array and the bookkeeping exactly as if it had never come, and groups
longer than the kernel takes are applied in turn, bit for bit as one push after another."""

import numpy as np
import pytest
import torch

from ps_trainer.core import (DelayCompensated, LRSchedule, NesterovMomentum, PolyakAverage,
                             ShardState, fused_push, push_kernel)
from ps_trainer.core.policy import Async, Synchronous

from test_core_group_commit import push_in_threads

# Without a C compiler shards keep the check and the in-place push (tested everywhere else).
pytestmark = pytest.mark.skipif(fused_push.compiler() is None,
                                reason="no C compiler: shards keep the check and the in-place push")

N = 10_007  # not a multiple of any vector width: the kernel's scalar tail runs too


def shard(policy=None, kernel="compiled", averaged=True):
    """A shard that runs the compiled push (`kernel="compiled"`: at any size, as a shard of 2M+
    parameters does under "auto"), so it checks in the update's pass."""
    rng = np.random.default_rng(0)
    return ShardState(0, rng.standard_normal(N, dtype=np.float32), np.arange(3, dtype=np.float32),
                      optimizer=NesterovMomentum(0.9, 5e-4, kernel=kernel), policy=policy,
                      schedule=LRSchedule(0.05, warmup=3),
                      averager=PolyakAverage(0.9) if averaged else None)


def grads(k, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(N, dtype=np.float32) * 0.1 for _ in range(k)]


def arrays(s):
    return [s.params.copy(), s.momentum.copy()] + ([s.average.copy()] if s.average is not None else [])


def test_the_kernel_builds_here_and_computes_the_eager_formula():
    assert fused_push.library() is not None, "a C compiler, but the kernel does not build or agree"
    gen = torch.Generator().manual_seed(0)
    for nesterov, averaged, k in [(True, True, 8), (False, True, 3), (True, False, 1)]:
        src = [torch.from_numpy(fused_push.aligned_empty(N)).copy_(torch.randn(N, generator=gen))
               for _ in range(3)]
        dst = [torch.from_numpy(fused_push.aligned_empty(N)) for _ in range(3)]
        # gradients as a worker's arrays arrive: anywhere in memory, not aligned
        gs = [torch.from_numpy(np.asarray(0.1 * torch.randn(N + 1, generator=gen))[1:]) for _ in range(k)]
        hs = push_kernel.numbers([(g, 0.05 / (i + 1), 0.01 * (i + 1)) for i, g in enumerate(gs)],
                                 5e-4, 0.9)
        before = [t.clone() for t in src]
        ref = [t.clone() for t in src]
        push_kernel.plain_push([(ref[0], ref[1], ref[2] if averaged else None, gs)], hs, nesterov)
        sums = fused_push.push(src, dst, gs, hs, nesterov, averaged)
        for a, b in zip(ref[:3 if averaged else 2], dst):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        assert sums == pytest.approx([float(g.sum()) for g in gs], abs=1e-2)
        assert all(torch.equal(a, b) for a, b in zip(before, src))  # read, never written
        assert not torch.equal(dst[0], src[0])


def test_only_plain_steps_on_compiled_shards_are_checked_in_the_pass():
    assert shard(Async()).fuses()
    assert not shard(DelayCompensated(kernel="eager")).fuses()  # compensates at its turn
    assert not shard(Synchronous(workers=2)).fuses()  # sums before it steps
    assert not shard(Async(), kernel="auto").fuses()  # a small shard: torch's fused kernel
    assert not shard(Async(), kernel="fused").fuses()


@pytest.mark.parametrize("averaged", [True, False])
def test_a_non_finite_push_alone_changes_nothing_and_is_counted(averaged):
    s = shard(Async(), averaged=averaged)
    g = grads(2)
    assert s.push(g[0], 0, worker=0).outcome == "applied"
    before, publication = arrays(s), s.publication()[0].copy()
    for where, value in [(5, np.nan), (N - 1, np.inf), (N // 2, -np.inf)]:  # vectors and tail
        bad = g[1].copy()
        bad[where] = value
        r = s.push(bad, 1, worker=1)
        assert r.outcome == "rejected" and "NaN or Inf" in r.reason and r.version == 1
        for a, b in zip(before, arrays(s)):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(publication, s.publication()[0])
    assert s.version == 1 and s.counters == {"applied": 1, "rejected": 3}
    assert s.reject_reasons == {"gradient": 3} and s.clocks == {0: 1, 1: 3}
    assert s.push(g[1], 1, worker=1).outcome == "applied" and s.version == 2


def test_finite_values_whose_sum_overflows_are_applied():
    s = shard(Async())
    big = np.zeros(N, np.float32)
    big[:4] = 3e38  # the float32 sum overflows; every element is finite
    r = s.push(big, 0, worker=0)
    assert r.outcome == "applied" and s.version == 1
    assert np.isinf(s.params[:4]).all() or np.abs(s.params[:4]).max() > 1e36  # it was applied


def test_a_group_longer_than_the_kernel_takes_with_bad_pushes_equals_the_good_ones_one_by_one():
    """11 pushes queue (more than fused_push.GROUP); the 3rd and the 10th hold a NaN. Decided in
    arrival order, in two passes: every result, array and counter equals a shard that got the
    same pushes one at a time, bit for bit; the NaN pushes changed nothing."""
    assert fused_push.GROUP < 11
    batched, serial = shard(Async()), shard(Async())
    g = grads(11)
    g[2][3] = np.nan
    g[9][N - 2] = np.nan
    pushes = [(g[i], 0, i % 4, np.full(3, float(i), np.float32)) for i in range(11)]
    results, errors = push_in_threads(batched, pushes)
    assert errors == [None] * 11
    expected = [serial.push(*p) for p in pushes]
    assert results == expected
    assert [r.outcome for r in results].count("rejected") == 2
    assert [r.version for r in results if r.outcome == "applied"] == list(range(1, 10))
    for a, b in zip(arrays(batched), arrays(serial)):
        np.testing.assert_array_equal(a, b)
    assert batched.counters == serial.counters == {"applied": 9, "rejected": 2}
    assert batched.clocks == serial.clocks and batched.last_read == serial.last_read
    np.testing.assert_array_equal(batched.bn_mean(), serial.bn_mean())
    assert batched.batched >= 9 - 1 and serial.batched == 0  # applied in groups, not one by one
