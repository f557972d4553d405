"""DC-ASGD's compiled push (core/dc_kernel.py) against the eager one it replaces: the same
weights, momentum, Polyak average and mean square within float32 rounding, push after push, and
the same outcomes and counts. Compiling takes a few seconds once per process."""

import numpy as np
import pytest

from ps_trainer.core import LRSchedule, NesterovMomentum, PolyakAverage, ShardState, dc_kernel
from ps_trainer.core.policy import DelayCompensated


def _pair(n, adaptive, nesterov, averaged):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(n).astype(np.float32)

    def shard(kernel):
        return ShardState(0, w0, np.ones(3, np.float32), policy=DelayCompensated(
            lam=2.0, adaptive=adaptive, kernel=kernel),
            optimizer=NesterovMomentum(0.9, 5e-4, nesterov=nesterov), schedule=LRSchedule(0.05),
            averager=PolyakAverage(0.9) if averaged else None, block=4096)
    return shard("compiled"), shard("eager"), rng


@pytest.mark.parametrize("adaptive,nesterov,averaged",
                         [(True, True, True), (False, True, True), (True, False, False)])
def test_the_compiled_push_is_the_eager_push(adaptive, nesterov, averaged):
    assert dc_kernel.compiled() is not None, "torch.compile cannot build the kernel here"
    n = 10_007  # not a multiple of any vector width or block
    compiled, eager, rng = _pair(n, adaptive, nesterov, averaged)
    plain = ShardState(0, eager.params, np.ones(3, np.float32), optimizer=eager.optimizer,
                       schedule=eager.schedule)
    reads = {}
    for s in (compiled, eager):  # two workers read version 0
        reads[id(s)] = [s.snapshot(worker=w)[1] for w in (0, 1)]
    for step in range(6):
        g = (0.1 * rng.standard_normal(n)).astype(np.float32)
        worker = step % 2
        results = []
        for s in (compiled, eager):
            results.append(s.push(g, reads[id(s)][worker], worker))
            reads[id(s)][worker] = s.snapshot(worker=worker)[1]  # reads again after its push
        plain.push(g, plain.version, worker)
        assert results[0] == results[1] and results[0].outcome == "compensated"
        assert results[0].staleness == (0 if step == 0 else 1)
        for a, b in [(compiled.params, eager.params), (compiled.momentum, eager.momentum)] + \
                ([(compiled.average, eager.average)] if averaged else []):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # weights ~1: an ulp is 1e-7
        if adaptive:
            np.testing.assert_allclose(compiled.policy.mean_square.numpy(),
                                       eager.policy.mean_square.numpy(), rtol=1e-5, atol=1e-12)
    # The compensation did something: the same pushes, uncompensated, end elsewhere.
    assert np.abs(plain.params - compiled.params).max() > 100 * 1e-6
    assert compiled.counters == eager.counters == {"compensated": 6}


def test_auto_compiles_only_large_shards_and_eager_never():
    auto, eager = DelayCompensated(), DelayCompensated(kernel="eager")
    assert not auto.compiled_push(dc_kernel.MIN_SIZE - 1, momentum=0.9)
    assert auto.compiled_push(dc_kernel.MIN_SIZE, momentum=0.9)
    assert not auto.compiled_push(dc_kernel.MIN_SIZE, momentum=0.0)  # the SGD kernel's own rule
    assert not eager.compiled_push(10 * dc_kernel.MIN_SIZE, momentum=0.9)
    assert DelayCompensated(kernel="compiled").compiled_push(10, momentum=0.9)
    with pytest.raises(ValueError, match="--dc-kernel fast: choose one of auto, compiled, eager"):
        DelayCompensated(kernel="fast")
