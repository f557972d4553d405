"""The update policies of the staleness harness, each on a bare shard against a hand-computed
reference: DC-ASGD's compensation, BSP with backup workers, SSP's gate, and SSP(s=0) == BSP."""

import threading

import numpy as np
import pytest
import torch

from ps_trainer.core import (Async, BoundedStaleness, DelayCompensated, FlatModel, LRSchedule,
                             NesterovMomentum, ParamLayout, ShardState, Synchronous, make_policy)
from ps_trainer.data import Batches, load_dataset
from ps_trainer.models import build
from ps_trainer.transport import InProcessClient
from ps_trainer.worker.worker import Worker

N = 50


def shard(policy, lr=0.1, momentum=0.0, wd=0.0, seed=0):
    w0 = np.random.default_rng(seed).standard_normal(N).astype(np.float32)
    return ShardState(0, w0, None, optimizer=NesterovMomentum(momentum, wd), schedule=LRSchedule(lr),
                      policy=policy)


def grads(k, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(N).astype(np.float32) for _ in range(k)]


# ---- DC-ASGD (Zheng et al. 2017) ---------------------------------------------------------------
def stale_pushes(s, gs):
    """Worker 0 reads version 0, then pushes every gradient in gs computed on that read, while
    the weights move on: staleness 0, 1, 2, ..."""
    w_read, v = s.snapshot(worker=0)
    return w_read[:N].copy(), [s.push(g, v, worker=0) for g in gs]


def test_dc_asgd_with_lambda_zero_equals_async():
    gs = grads(6)
    plain, dc = shard(Async(), momentum=0.9, wd=1e-3), shard(DelayCompensated(lam=0.0), momentum=0.9, wd=1e-3)
    stale_pushes(plain, gs)
    _, results = stale_pushes(dc, gs)
    assert [r.outcome for r in results] == ["compensated"] * 6
    assert [r.staleness for r in results] == list(range(6))
    np.testing.assert_array_equal(plain.params, dc.params)
    np.testing.assert_array_equal(plain.momentum, dc.momentum)


def test_dc_asgd_constant_lambda_matches_the_formula():
    lam, lr = 0.5, 0.1
    s = shard(DelayCompensated(lam=lam, adaptive=False), lr=lr)
    gs = grads(3)
    w_read, _ = stale_pushes(s, gs)
    w = w_read.astype(np.float64)
    for g in gs:  # plain SGD on the compensated gradient, computed by hand
        w = w - lr * (g + lam * g * g * (w - w_read))
    np.testing.assert_allclose(s.params, w, rtol=1e-5)
    assert s.stats()["counters"] == {"compensated": 3}


def test_dc_asgd_adaptive_lambda_matches_the_formula():
    lam, m, lr = 2.0, 0.95, 0.1
    s = shard(DelayCompensated(lam=lam, adaptive=True, mean_square_decay=m), lr=lr)
    gs = grads(3)
    w_read, _ = stale_pushes(s, gs)
    w, ms = w_read.astype(np.float64), np.zeros(N)
    for g in gs:
        ms = m * ms + (1 - m) * g.astype(np.float64) ** 2
        w = w - lr * (g + lam / (np.sqrt(ms) + 1e-7) * g * g * (w - w_read))
    np.testing.assert_allclose(s.params, w, rtol=1e-4)


def test_dc_asgd_uses_the_weights_of_the_version_pushed_even_after_a_newer_read():
    """A threaded server may run a worker's next pull before the push it sent just before."""
    lam = 0.5
    s = shard(DelayCompensated(lam=lam, adaptive=False))
    other = grads(1, seed=5)[0]
    w0, v0 = s.snapshot(worker=0)
    s.push(other, 0, worker=1)  # the weights move on
    s.snapshot(worker=0)  # worker 0's next pull overtakes its push
    g = grads(1, seed=6)[0]
    w_now = s.params.astype(np.float64).copy()
    r = s.push(g, v0, worker=0)
    assert r.outcome == "compensated" and r.staleness == 1
    expected = w_now - 0.1 * (g + lam * g * g * (w_now - w0[:N]))
    np.testing.assert_allclose(s.params, expected, rtol=1e-5)


def test_dc_asgd_compensates_against_the_first_read_of_an_accumulated_gradient():
    """fetch_every=1, push_every=6: a worker reads six times while the weights move on, then
    pushes a gradient that carries its first read. The shard must still hold those weights."""
    lam = 0.5
    s = shard(DelayCompensated(lam=lam, adaptive=False))
    other = grads(6, seed=5)
    w_first, v_first = s.snapshot(worker=0)
    w_first = w_first[:N].copy()
    for g in other[:5]:  # five more reads, each after another worker's push
        s.push(g, s.version, worker=1)
        s.snapshot(worker=0)
    g = grads(1, seed=6)[0]
    w_now = s.params.astype(np.float64).copy()
    r = s.push(g, v_first, worker=0)
    assert (r.outcome, r.staleness, r.version_read) == ("compensated", 5, 0)
    expected = w_now - 0.1 * (g + lam * g * g * (w_now - w_first))
    np.testing.assert_allclose(s.params, expected, rtol=1e-5)
    # Reads older than the worker's pushes are let go (memory stays bounded) ...
    s.push(other[5], s.version, worker=1)
    _, v_next = s.snapshot(worker=0)
    s.push(g, v_next, worker=0)
    s.push(g, v_next, worker=0)
    assert min(s._reads) >= v_first + 1 and v_next in s._reads
    s.retire(0)  # ... and a retired worker's with them
    s.retire(1)
    assert s._reads == {}

# ---- BSP with backup workers (Chen et al. 2016) -------------------------------------------------
def test_sync_steps_once_on_the_mean_of_k_gradients():
    lr = 0.1
    s = shard(Synchronous(workers=3), lr=lr, momentum=0.9, wd=1e-3)
    w0 = torch.tensor(s.params.copy(), requires_grad=True)
    gs = grads(3)
    results = [s.push(g, 0, worker=i) for i, g in enumerate(gs)]
    assert [r.outcome for r in results] == ["aggregated"] * 3
    assert [r.version for r in results] == [0, 0, 1] and s.version == 1
    opt = torch.optim.SGD([w0], lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-3)
    w0.grad = torch.tensor(np.mean(gs, axis=0))
    opt.step()
    np.testing.assert_allclose(s.params, w0.detach().numpy(), rtol=1e-5)


def test_sync_with_backup_workers_drops_the_late_gradient_and_counts_it():
    s = shard(Synchronous(workers=3, backup=1))
    gs = grads(3)
    s.push(gs[0], 0, worker=2)
    r = s.push(gs[1], 0, worker=0)
    assert s.version == 1 and r.version == 1  # K - b = 2 gradients make a step
    np.testing.assert_allclose(s.params, shard(Async()).params - 0.1 * (gs[0] + gs[1]) / 2, rtol=1e-5)
    before = s.params.copy()
    late = s.push(gs[2], 0, worker=1)  # the straggler, computed on version 0
    assert late.outcome == "rejected" and late.reason.startswith("late")
    np.testing.assert_array_equal(before, s.params)
    assert s.stats()["counters"] == {"aggregated": 2, "rejected": 1}
    assert s.stats()["reject_reasons"] == {"late": 1}


def test_sync_takes_one_gradient_per_worker_and_rejects_a_second_as_duplicate():
    """--policy sync --fetch-every 2: a worker pushes again before the version moves. The step is
    still the mean of K - b distinct workers' gradients; the second one is counted, not summed."""
    k, b = 3, 1
    s = shard(Synchronous(workers=k, backup=b))
    gs = grads(3)
    first = s.push(gs[0], 0, worker=0)
    before = s.params.copy()
    again = s.push(gs[1], 0, worker=0)  # same worker, same version: computed on the same weights
    assert first.outcome == "aggregated"
    assert again.outcome == "rejected" and again.reason.startswith("duplicate")
    assert s.version == 0 and s.contributors == {0}  # no step on one worker's two gradients
    np.testing.assert_array_equal(before, s.params)
    s.push(gs[2], 0, worker=1)
    assert s.version == 1  # K - b = 2 distinct workers
    np.testing.assert_allclose(s.params, before - 0.1 * (gs[0] + gs[2]) / (k - b), rtol=1e-5, atol=1e-6)
    assert s.stats()["counters"] == {"aggregated": 2, "rejected": 1}
    assert s.stats()["reject_reasons"] == {"duplicate": 1}
    assert s.clocks == {0: 2, 1: 1}  # every push is counted in its worker's clock

def test_sync_gate_and_retire():
    s = shard(Synchronous(workers=2))
    assert s.ready(0, 0) and s.ready(1, 0)  # nothing pushed yet
    s.push(grads(1)[0], 0, worker=0)
    assert not s.ready(0, 1)  # its gradient for version 0 waits for worker 1's
    s.retire(1)  # worker 1 finished: the quorum shrinks and the pending gradient is stepped on
    assert s.version == 1 and s.ready(0, 1)


# ---- SSP (Ho et al. 2013) -------------------------------------------------------------------------
def test_bounded_makes_a_worker_more_than_s_pushes_ahead_wait():
    s = shard(BoundedStaleness(workers=3, bound=2))
    g = grads(1)[0]
    for clock in range(3):
        assert s.ready(0, clock)
        s.push(g, s.version, worker=0)
    assert not s.ready(0, 3)  # 3 pushes ahead of workers 1 and 2, bound 2
    s.push(g, s.version, worker=1)
    assert not s.ready(0, 3)  # worker 2 is still at 0
    s.retire(2)
    assert s.ready(0, 3)


def test_bounded_wait_blocks_a_thread_until_the_slowest_pushes():
    s = shard(BoundedStaleness(workers=2, bound=0))
    client = InProcessClient([s])
    s.push(grads(1)[0], 0, worker=0)
    got = []
    t = threading.Thread(target=lambda: got.append(client.pull(worker=0, clock=1)))
    t.start()
    t.join(0.3)
    assert t.is_alive() and not got  # held: worker 1 has not pushed its first gradient
    s.push(grads(1, seed=2)[0], 0, worker=1)
    t.join(5)
    assert got and got[0][0][1] == 2 and s.stats()["waits"] == 1


def test_a_replacement_worker_starts_at_its_recorded_clock_and_ssp_holds_across_the_restart():
    """Worker 1 dies after its 4th push reached shard 0 but not shard 1. Its replacement starts at
    the pushes every shard recorded for it (3, what the driver passes as `clock=`), shard 0 adopts
    that count at its first pull, and SSP holds from there: at every pull the worker is at most
    `bound` clocks ahead of the slowest, and there is always someone who may go on."""
    bound = 1
    torch.manual_seed(0)
    data = load_dataset("digits", seed=0)
    layout = ParamLayout.from_model(build("digits_cnn_small"))
    p, b = layout.flatten(build("digits_cnn_small"))
    specs = layout.shards(2)
    shards = [ShardState(s.index, p[slice(*s.params)], b[slice(*s.buffers)],
                         policy=BoundedStaleness(workers=2, bound=bound)) for s in specs]

    def worker(i, **options):
        return Worker(i, FlatModel(build("digits_cnn_small"), layout), specs, InProcessClient(shards),
                      Batches(data.x_train, data.y_train, 16, seed=i), max_inflight=0, **options)

    def may_step(w):
        return all(s.ready(w.id, w.clock) for s in shards)

    w0, w1 = worker(0), worker(1)
    for _ in range(3):
        w0.step()
        w1.step()
    shards[0].push(np.zeros(specs[0].num_params, np.float32), shards[0].version, worker=1)
    per_shard = [sum(s.worker_counters[1].values()) for s in shards]  # what `replace` reads
    assert per_shard == [4, 3]
    w1 = worker(1, clock=min(per_shard))  # the replacement
    while may_step(w1):  # it runs alone as far as SSP lets it
        w1.step()
        assert [s.clocks[1] for s in shards] == [w1.clock] * 2  # the shards agree with it
    assert w1.clock == w0.clock + bound + 1 == 5  # bound ahead at its last pull, then one push
    for _ in range(30):  # the two go on, the one furthest ahead first whenever both may
        ready = [w for w in (w0, w1) if may_step(w)]
        assert ready, "nobody may go on"
        w = max(ready, key=lambda w: (w.clock, w.id))
        assert w.clock - min(w0.clock, w1.clock) <= bound
        w.step()
    assert abs(w0.clock - w1.clock) <= bound + 1 and min(w0.clock, w1.clock) >= 15

def test_bounded_zero_equals_sync_for_plain_sgd():
    """SSP with s = 0 makes every worker read the weights after all of the previous clock's
    pushes, as BSP does. With plain SGD the K sequential steps at lr equal BSP's one step on the
    mean at K * lr. (With momentum or weight decay they differ: that is the algorithms, not a bug.)"""
    k, lr, clocks = 4, 0.05, 5
    ssp = shard(BoundedStaleness(workers=k, bound=0), lr=lr)
    bsp = shard(Synchronous(workers=k), lr=k * lr)
    rng = np.random.default_rng(3)
    target = rng.standard_normal(N).astype(np.float32)
    for clock in range(clocks):
        for s in (ssp, bsp):
            assert all(s.ready(w, clock) for w in range(k))
            reads = [s.snapshot(worker=w) for w in range(k)]  # every worker reads, then computes
            assert len({v for _, v in reads}) == 1
            for w in reversed(range(k)):  # arrival order does not matter
                w_read, v = reads[w]
                g = (w_read[:N] - target) * (w + 1) / k  # a different gradient per worker
                s.push(g.astype(np.float32), v, worker=w)
            if s is ssp:
                assert not s.ready(0, clock + 2)
    assert ssp.version == k * clocks and bsp.version == clocks
    np.testing.assert_allclose(ssp.params, bsp.params, rtol=1e-5, atol=1e-6)


def test_make_policy_names_the_choices():
    with pytest.raises(ValueError, match="choose one of: async, staleness_lr, bounded, sync, drop_stale, dc_asgd"):
        make_policy("hogwild")
