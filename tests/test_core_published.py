"""A publication reads the weights with the shard's lock released (`ShardState.published`, what a
Ray shard's `ray.put` does): pushes that arrive meanwhile must neither change the array being read
nor give other numbers than they would have given with nobody reading."""

import threading

import numpy as np
import pytest

from ps_trainer.core import LRSchedule, NesterovMomentum, PolyakAverage, ShardState

N = 10_007


def shard(kernel):
    w0 = np.random.default_rng(1).standard_normal(N).astype(np.float32)
    return ShardState(0, w0, np.ones(3, np.float32),
                      optimizer=NesterovMomentum(0.9, 5e-4, kernel=kernel),
                      schedule=LRSchedule(0.05, warmup=2), averager=PolyakAverage(0.9))


def grads(k):
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(N)).astype(np.float32) for _ in range(k)]


def push_in_thread(s, g, version, worker, wait):
    """Push from another thread; (the thread, its results), after waiting `wait` s for it."""
    results = []
    t = threading.Thread(target=lambda: results.append(s.push(g, version, worker)), daemon=True)
    t.start()
    t.join(wait)
    return t, results


def assert_same_state(a, b):
    for name in ("params", "momentum", "average"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.version == b.version and a.counters == b.counters


def test_pushes_during_a_publication_write_the_second_buffer_with_the_same_numbers():
    """The compiled loop does not wait for the copy: it reads the pinned weights and writes the
    new ones into the spare buffer, and the two swap. The pinned array never changes, and the
    shard ends bit for bit where a shard nobody read ends."""
    pinned, free = shard("compiled"), shard("compiled")
    gs = grads(4)
    with pinned.published() as (arr, version):
        first = pinned.params
        before = arr.copy()
        assert version == 0 and np.shares_memory(arr, first)
        for i in range(2):  # the first swaps buffers, the second writes the new one in place
            t, results = push_in_thread(pinned, gs[i], i, i, wait=60)
            assert not t.is_alive(), "a compiled push waited for the publication"
            assert results == [free.push(gs[i], i, i)]
        np.testing.assert_array_equal(arr, before)  # what the publication reads never changed
        assert not np.shares_memory(pinned.params, first)
    assert_same_state(pinned, free)
    with pinned.published() as (arr, version):  # now the second buffer is read: swap back
        assert version == 2 and not np.shares_memory(arr, first)
        before = arr.copy()
        t, results = push_in_thread(pinned, gs[2], 1, 0, wait=60)
        assert not t.is_alive() and results == [free.push(gs[2], 1, 0)]
        np.testing.assert_array_equal(arr, before)
        assert np.shares_memory(pinned.params, first)
    assert pinned.push(gs[3], 3, 1) == free.push(gs[3], 3, 1)  # nobody reads: in place
    assert_same_state(pinned, free)
    assert pinned.counters == {"applied": 4}


@pytest.mark.parametrize("kernel", ["fused", "inplace"])
def test_a_push_on_an_in_place_kernel_waits_for_the_publication(kernel):
    """torch's kernels write the weights in place: a push waits until the copy is done, then
    gives what it gives with nobody reading."""
    pinned, free = shard(kernel), shard(kernel)
    g, = grads(1)
    with pinned.published() as (arr, _):
        before = arr.copy()
        t, results = push_in_thread(pinned, g, 0, 0, wait=0.5)
        assert t.is_alive() and not results  # still waiting for the publication
        np.testing.assert_array_equal(arr, before)
    t.join(30)
    assert results == [free.push(g, 0, 0)]
    assert_same_state(pinned, free)
    assert np.abs(pinned.params - before[:N]).max() > 1e-4  # the push did move the weights


def test_a_restore_waits_for_the_publication():
    s = shard("compiled")
    sd = s.state_dict()
    sd["params"] = sd["params"] + 1
    with s.published() as (arr, _):
        before = arr.copy()
        t = threading.Thread(target=s.load_state_dict, args=(sd,), daemon=True)
        t.start()
        t.join(0.5)
        assert t.is_alive()
        np.testing.assert_array_equal(arr, before)
    t.join(30)
    np.testing.assert_array_equal(s.params, sd["params"])
