"""Group commit (`ShardState.push`): pushes that queue while the shard is busy are decided in
arrival order and applied in one blocked pass. The result must equal the same pushes applied one
after another, bit for bit, whatever the policy; a queued push's thread gets its own outcome."""

import threading
import time

import numpy as np
import pytest

from ps_trainer.core import (DelayCompensated, DropStale, LRSchedule, NesterovMomentum,
                             PolyakAverage, ShardState, StalenessAwareLR)
from ps_trainer.core.policy import Async, Synchronous

N = 5000  # parameters: five of the test's 1000-element blocks


def shard(policy, kernel="auto", one_pass=True):
    rng = np.random.default_rng(0)
    return ShardState(0, rng.standard_normal(N, dtype=np.float32), np.arange(3, dtype=np.float32),
                      optimizer=NesterovMomentum(0.9, 5e-4, kernel=kernel), policy=policy,
                      schedule=LRSchedule(0.05, warmup=3), averager=PolyakAverage(0.9), block=1000,
                      one_pass=one_pass)


def grads(k):
    rng = np.random.default_rng(1)
    out = [rng.standard_normal(N, dtype=np.float32) * 0.1 for _ in range(k)]
    out[3][17] = np.nan  # one malformed push among them: rejected, counted, nothing changes
    return out


# (worker, version_read) of the queued pushes; every shard first takes one push of worker 0 and
# hands out reads (DC-ASGD compensates against them), so versions 0 and 1 both exist.
QUEUED = [(1, 0), (2, 1), (0, 1), (3, 0), (1, 1), (2, 1), (3, 1)]
# BSP's first step waits for a quorum of 3 (worker 0's first push is one): two steps in the queue
QUEUED_SYNC = [(1, 0), (2, 0), (0, 1), (3, 0), (1, 1), (2, 1), (3, 1)]
POLICIES = {
    "async": Async,
    "async, compiled loop": Async,  # as a shard of 2M+ parameters runs it: fused_push.py's pass
    "async, compiled loop in place": Async,  # push_kernel.py's, after the check (one_pass=False)
    "staleness-aware lr": StalenessAwareLR,
    "drop stale > 2": lambda: DropStale(2),
    "dc-asgd-a": lambda: DelayCompensated(kernel="eager"),
    "sync, 3 of 4": lambda: Synchronous(workers=4, backup=1),
}


def prepare(s):
    for w in range(4):
        s.snapshot(worker=w)
    s.push(np.full(N, 0.01, np.float32), 0, worker=0, bn_stats=np.zeros(3, np.float32))
    for w in range(4):
        s.snapshot(worker=w)


def push_in_threads(s, pushes):
    """Start one thread per push while the test holds the shard's lock, each only once the one
    before it has queued (so the queue's order is the list's), then let them all go."""
    results, errors, threads = [None] * len(pushes), [None] * len(pushes), []
    with s.lock:
        for i, args in enumerate(pushes):
            def run(i=i, args=args):
                try:
                    results[i] = s.push(*args)
                except Exception as e:  # noqa: BLE001 - the test inspects it
                    errors[i] = e
            threads.append(threading.Thread(target=run))
            threads[-1].start()
            deadline = time.monotonic() + 10
            while len(s._queue) < i + 1:
                assert time.monotonic() < deadline, "a push never queued"
                time.sleep(0.001)
    for t in threads:
        t.join(120)  # (a slow machine's first compilation of a loop variant takes tens of s)
        assert not t.is_alive()
    return results, errors


@pytest.mark.parametrize("name", POLICIES)
def test_queued_pushes_applied_together_equal_the_same_pushes_one_by_one(name):
    kernel = "compiled" if "compiled" in name else "auto"
    if kernel == "compiled":  # every group size built first, as a Ray shard does as it starts
        from ps_trainer.core import push_kernel
        assert push_kernel.warm(nesterov=True, averaged=True)
    one_pass = "in place" not in name
    batched, serial = (shard(POLICIES[name](), kernel, one_pass) for _ in range(2))
    from ps_trainer.core import fused_push
    assert batched.fuses() == (kernel == "compiled" and one_pass and fused_push.library() is not None)
    queued = QUEUED_SYNC if name.startswith("sync") else QUEUED
    g = grads(len(queued))
    pushes = [(g[i], v, w, np.full(3, float(i), np.float32)) for i, (w, v) in enumerate(queued)]
    for s in (batched, serial):
        prepare(s)
    results, errors = push_in_threads(batched, pushes)
    assert errors == [None] * len(pushes)
    expected = [serial.push(*p) for p in pushes]
    assert results == expected  # outcome, staleness, version, lr of every push
    assert results[3].outcome == "rejected" and "NaN" in results[3].reason
    a, b = batched.state_dict(), serial.state_dict()
    for k in ("params", "momentum", "average"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a["version"] == b["version"] and a["counters"] == b["counters"]
    np.testing.assert_array_equal(batched.bn_mean(), serial.bn_mean())
    # not vacuous: the plain steps really went through one pass (BSP takes a step per quorum)
    applied = sum(r.outcome in ("applied", "scaled") for r in results)
    if name.startswith("sync"):
        assert batched.version == 2 and batched.batched == 0
    elif name.startswith("dc"):
        assert batched.batched == 0 and b["counters"]["compensated"] == 7
    else:
        assert applied >= 3 and batched.batched == applied and serial.batched == 0


def test_a_bug_deciding_one_queued_push_is_raised_in_its_own_thread_and_the_rest_go_on():
    class Faulty(Async):
        calls = 0

        def decide(self, staleness):
            Faulty.calls += 1
            if Faulty.calls == 2:
                raise RuntimeError("bug in a policy")
            return super().decide(staleness)

    s = shard(Faulty())
    g = np.full(N, 0.01, np.float32)
    results, errors = push_in_threads(s, [(g, 0, w) for w in range(4)])
    assert [type(e).__name__ if e else None for e in errors] == [None, "RuntimeError", None, None]
    assert [r.version for r in results if r] == [1, 2, 3] and s.version == 3
    assert s.clocks == {0: 1, 1: 1, 2: 1, 3: 1} and not s._queue


@pytest.mark.parametrize("compiled", [False, True])
def test_the_finite_check_is_exact_where_the_sum_overflows(compiled):
    """`gradient_finite` reads the sum (torch's, or push_kernel's compiled one that reads 8
    regions side by side); finite values whose sum overflows float32 are still finite, and a NaN
    or Inf is found wherever it sits: in any region, or among the elements left over."""
    from ps_trainer.core import push_kernel
    from ps_trainer.core.shard import gradient_finite

    n = 8 * 8192 + 5  # 8 regions of 8192 and 5 left over
    if compiled:
        assert push_kernel.summed() is not None, "torch.compile cannot build the sum here"
    big = np.full(n, 3e38, np.float32)  # sum overflows to inf; every element finite
    assert gradient_finite(big, compiled)
    for bad in (np.nan, np.inf, -np.inf):
        for at in (0, 8191, 8192, 43210, 65535, 65536, n - 1):
            x = np.ones(n, np.float32)
            x[at] = bad
            assert not gradient_finite(x, compiled), (bad, at)
    mixed = np.array([np.inf, -np.inf] + [1.0] * (n - 2), np.float32)  # sums to NaN
    assert not gradient_finite(mixed, compiled)
    assert gradient_finite(np.ones(n, np.float32), compiled)
