"""The shard state machine without any cluster: the optimizer oracle, staleness, rejections,
Polyak averaging, BatchNorm statistics and checkpoints."""

import copy

import numpy as np
import pytest
import torch

from ps_trainer.core import (DropStale, FlatModel, LRSchedule, NesterovMomentum, ParamLayout,
                             PolyakAverage, ShardState, StalenessAwareLR)
from ps_trainer.data import Batches, load_dataset
from ps_trainer.models import build
from ps_trainer.transport import InProcessClient
from ps_trainer.worker.worker import Worker


def make_shards(model, num_shards, lr=0.05, momentum=0.9, wd=1e-3, averager=None, policy=None,
                block=1 << 20, schedule=None):
    layout = ParamLayout.from_model(model)
    p, b = layout.flatten(model)
    specs = layout.shards(num_shards)
    shards = [ShardState(s.index, p[s.params[0]:s.params[1]], b[s.buffers[0]:s.buffers[1]],
                         optimizer=NesterovMomentum(momentum, wd),
                         schedule=schedule or LRSchedule(lr), policy=policy, averager=averager,
                         block=block)
              for s in specs]
    return layout, specs, shards


@pytest.mark.parametrize("num_shards,block", [(1, 1 << 20), (3, 1 << 20), (2, 1000)])
def test_one_worker_zero_staleness_equals_torch_sgd_nesterov(num_shards, block):
    """The correctness oracle: 1 worker, no staleness -> exactly torch.optim.SGD(nesterov)."""
    torch.manual_seed(0)
    data = load_dataset("digits", seed=0)
    model = build("digits_cnn", width=8)
    ref_model = copy.deepcopy(model)
    lr, m, wd = 0.05, 0.9, 1e-3
    layout, specs, shards = make_shards(model, num_shards, lr, m, wd,
                                        averager=PolyakAverage(0.9), block=block)
    worker = Worker(0, FlatModel(model, layout), specs, InProcessClient(shards),
                    Batches(data.x_train, data.y_train, 16, seed=1), max_inflight=0)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=lr, momentum=m, nesterov=True, weight_decay=wd)
    ref_batches = Batches(data.x_train, data.y_train, 16, seed=1)
    ref_model.train()
    for step in range(25):
        worker.step()
        x, y = next(ref_batches)
        ref_opt.zero_grad()
        torch.nn.functional.cross_entropy(ref_model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        ref_opt.step()
        ours = np.concatenate([s.params for s in shards])
        ref = layout.flatten(ref_model)[0]
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
    assert [s.version for s in shards] == [25] * num_shards
    assert all(r["staleness"] == 0 and r["outcome"] == "applied" for r in worker.drain_rows())
    # the pushed BatchNorm statistics are the worker's (one worker: the mean is its own)
    bn = np.concatenate([s.bn_mean() for s in shards])
    np.testing.assert_allclose(bn, layout.flatten(ref_model)[1], rtol=1e-5, atol=1e-6)


def shard_of(n=10, **kw):
    return ShardState(0, np.arange(n, dtype=np.float32), np.ones(2, np.float32),
                      optimizer=NesterovMomentum(0.9, 0.0), schedule=LRSchedule(0.1), **kw)


def test_staleness_is_version_now_minus_version_read():
    s = shard_of()
    g = np.ones(10, np.float32)
    assert s.push(g, 0).staleness == 0
    assert s.push(g, 0).staleness == 1
    r = s.push(g, 0)
    assert (r.staleness, r.version, r.version_read, r.outcome) == (2, 3, 0, "applied")
    assert s.stats()["mean_staleness"] == pytest.approx(1.0)


def test_a_push_reports_the_oldest_version_its_accumulated_gradient_read():
    """fetch_every=1, push_every=3: the pushed gradient is the mean over three steps on three
    pulls. It depends on the weights of the first of them, so it carries that version, and
    its staleness counts from there (staleness_lr, drop_stale and DC-ASGD all read it)."""
    torch.manual_seed(0)
    data = load_dataset("digits", seed=0)
    model = build("digits_cnn_small")
    layout, specs, shards = make_shards(model, 2, momentum=0.0, wd=0.0)
    worker = Worker(0, FlatModel(model, layout), specs, InProcessClient(shards),
                    Batches(data.x_train, data.y_train, 16, seed=1), fetch_every=1, push_every=3,
                    max_inflight=0)
    pulled = []  # shard versions of the weights each step computed on
    for _ in range(9):
        for s in shards:  # another worker's push moves every shard on before each pull
            s.push(np.zeros_like(s.params), s.version, worker=1)
        worker.step()
        pulled.append(list(worker.versions))
    rows = worker.drain_rows()
    assert len(rows) == 3 * len(shards)
    for r in rows:
        first = pulled[r["step"] - 3][r["shard"]]  # "step" counts steps done: 3 per window
        assert r["version_read"] == first, (r, pulled)
        assert r["staleness"] == r["version"] - 1 - first == 2  # two pushes moved it since

@pytest.mark.parametrize("bad,reason", [
    (dict(grad=np.ones(9, np.float32)), "shape"),
    (dict(grad=np.ones(10, np.float64)), "dtype"),
    (dict(grad=np.array([1.0] * 9 + [np.nan], np.float32)), "NaN"),
    (dict(grad=np.array([np.inf] + [1.0] * 9, np.float32)), "NaN or Inf"),
    (dict(grad=np.full(10, 3e38, np.float32)), None),  # huge but finite: accepted
    (dict(version_read=5), "version_read"),
    (dict(version_read=-1), "version_read"),
    (dict(shard=3), "shard 3"),
    (dict(bn_stats=np.ones(3, np.float32)), "BatchNorm"),
    (dict(bn_stats=np.array([np.nan, 1], np.float32)), "BatchNorm"),
])
def test_malformed_push_is_rejected_counted_and_changes_nothing(bad, reason):
    s = shard_of(averager=PolyakAverage(0.9))
    s.push(np.ones(10, np.float32), 0, worker=1, bn_stats=np.full(2, 5.0, np.float32))
    before = s.state_dict()
    args = dict(grad=np.ones(10, np.float32), version_read=1, worker=7,
                bn_stats=np.zeros(2, np.float32), shard=0) | bad
    r = s.push(**args)
    if reason is None:
        assert r.outcome == "applied"
        return
    assert r.outcome == "rejected" and reason in r.reason and r.lr == 0.0
    after = s.state_dict()
    for k in ("params", "momentum", "average", "buffers"):
        np.testing.assert_array_equal(before[k], after[k])
    assert after["version"] == before["version"] == 1
    np.testing.assert_array_equal(after["bn_slots"][1], before["bn_slots"][1])
    assert 7 not in after["bn_slots"]
    assert s.stats()["counters"] == {"applied": 1, "rejected": 1}
    assert s.stats()["worker_counters"][7] == {"rejected": 1}


def test_staleness_aware_lr_divides_the_step_by_tau():
    plain, aware = shard_of(), shard_of(policy=StalenessAwareLR())
    g = np.ones(10, np.float32)
    for s in (plain, aware):
        for _ in range(4):
            s.push(g, s.version)
    r = aware.push(g, 0)  # tau = 4
    assert (r.outcome, r.staleness, r.lr) == ("scaled", 4, pytest.approx(0.025))
    assert aware.push(g, aware.version - 1).lr == pytest.approx(0.1)  # tau = 1: full step


def test_drop_stale_rejects_beyond_the_bound_and_counts():
    s = shard_of(policy=DropStale(max_staleness=1))
    g = np.ones(10, np.float32)
    for _ in range(3):
        s.push(g, s.version)
    before = s.params.copy()
    r = s.push(g, 0)
    assert r.outcome == "rejected" and "staleness 3 > bound 1" in r.reason
    np.testing.assert_array_equal(before, s.params)
    assert s.stats()["counters"] == {"applied": 3, "rejected": 1}


def test_polyak_running_mean_and_ema():
    g = np.ones(10, np.float32)
    s = shard_of(averager=PolyakAverage(decay=None))
    trajectory = []
    for _ in range(5):
        s.push(g, s.version)
        trajectory.append(s.params.copy())
    np.testing.assert_allclose(s.average, np.mean(trajectory, axis=0), rtol=1e-6)
    # running mean from a start version: only the iterates after it
    s = shard_of(averager=PolyakAverage(decay=None, start=2))
    trajectory = []
    for _ in range(6):
        s.push(g, s.version)
        trajectory.append(s.params.copy())
    np.testing.assert_allclose(s.average, np.mean(trajectory[2:], axis=0), rtol=1e-6)
    # exponential, with TF's warm-up of the decay
    s = shard_of(averager=PolyakAverage(decay=0.5))
    avg = s.params.copy()
    for n in range(1, 6):
        s.push(g, s.version)
        d = min(0.5, (1 + n) / (10 + n))
        avg = d * avg + (1 - d) * s.params
    np.testing.assert_allclose(s.average, avg, rtol=1e-6)


def test_bn_statistics_are_the_mean_of_each_workers_latest():
    s = shard_of()
    g = np.zeros(10, np.float32)
    np.testing.assert_array_equal(s.bn_mean(), [1, 1])  # nothing pushed yet: the initial values
    s.push(g, 0, worker=0, bn_stats=np.array([2, 4], np.float32))
    s.push(g, 1, worker=1, bn_stats=np.array([4, 8], np.float32))
    s.push(g, 2, worker=0, bn_stats=np.array([6, 0], np.float32))  # replaces worker 0's
    np.testing.assert_array_equal(s.bn_mean(), [5, 4])
    snap, version = s.snapshot()
    assert version == 3 and snap.shape == (12,)
    np.testing.assert_array_equal(snap[10:], [5, 4])


def test_step_schedule_and_warmup():
    sched = LRSchedule(0.1, kind="step", gamma=0.96, step_size=8, warmup=4)
    assert sched(0) == pytest.approx(0.025) and sched(3) == pytest.approx(0.1)
    assert sched(8) == pytest.approx(0.096) and sched(16) == pytest.approx(0.1 * 0.96 ** 2)
    with pytest.raises(ValueError, match="unknown lr schedule 'cosine'; choose one of: constant, step"):
        LRSchedule(0.1, kind="cosine")
    with pytest.raises(ValueError, match="--lr must be > 0, got -1"):
        LRSchedule(-1)


def test_state_dict_round_trip_resumes_identically():
    g = np.linspace(-1, 1, 10, dtype=np.float32)
    a = shard_of(averager=PolyakAverage(0.9))
    for _ in range(3):
        a.push(g, a.version, worker=2, bn_stats=np.array([3, 3], np.float32))
    b = shard_of(averager=PolyakAverage(0.9))
    b.load_state_dict(a.state_dict())
    for s in (a, b):
        for _ in range(3):
            s.push(g, s.version - 1)
    for k in ("params", "momentum", "average"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert a.stats() == b.stats()
    with pytest.raises(ValueError, match="does not fit shard"):
        shard_of(n=11).load_state_dict(a.state_dict())


def test_a_bfloat16_push_is_the_float32_push_of_its_rounded_values():
    """--push-dtype bfloat16: the gradient travels as bfloat16 bits (half the bytes) and the
    shard applies exactly what the float32 push of the same rounded values would; NaN in bfloat16
    is still rejected and changes nothing."""
    from ps_trainer.core.shard import from_bfloat16_bits, to_bfloat16_bits

    rng = np.random.default_rng(0)
    g = rng.standard_normal(1000).astype(np.float32)
    bits = to_bfloat16_bits(torch.from_numpy(g))
    assert bits.dtype == np.uint16 and bits.nbytes == g.nbytes // 2
    rounded = from_bfloat16_bits(bits)
    assert np.abs(rounded - g).max() <= np.abs(g).max() * 2 ** -8  # bfloat16's 8-bit mantissa
    a, b = (ShardState(0, np.zeros(1000, np.float32)) for _ in range(2))
    assert a.push(bits, 0).outcome == b.push(rounded, 0).outcome == "applied"
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(a.momentum, b.momentum)
    bad = to_bfloat16_bits(torch.full((1000,), float("nan")))
    before = a.params.copy()
    r = a.push(bad, 1)
    assert r.outcome == "rejected" and "NaN" in r.reason
    np.testing.assert_array_equal(a.params, before)


def test_bn_statistics_leave_out_workers_that_stopped_pushing_long_ago():
    """A worker that finished (or left) long ago pushed statistics of weights that are gone:
    after more than 4 rounds of pushes of every worker with a slot, its slot no longer counts."""
    s = shard_of()
    g = np.zeros(10, np.float32)
    s.push(g, 0, worker=9, bn_stats=np.array([100, 100], np.float32))  # then it leaves
    for v in range(1, 8):  # 2 slots: the window is 8 versions behind the newest
        s.push(g, v, worker=0, bn_stats=np.array([2, 4], np.float32))
    np.testing.assert_array_equal(s.bn_mean(), [51, 52])  # version 7: worker 9 (at 0) counts
    s.push(g, 8, worker=0, bn_stats=np.array([2, 4], np.float32))
    np.testing.assert_array_equal(s.bn_mean(), [51, 52])  # version 8: 0 >= 8 - 8, still counts
    s.push(g, 9, worker=0, bn_stats=np.array([2, 4], np.float32))
    np.testing.assert_array_equal(s.bn_mean(), [2, 4])  # 9 - 8 > 0: left out
    restored = shard_of()
    restored.load_state_dict(s.state_dict())
    np.testing.assert_array_equal(restored.bn_mean(), [2, 4])  # the versions are checkpointed


def test_a_push_checks_its_gradient_before_taking_the_shard_lock():
    """The finiteness pass reads the whole gradient: while it runs, a pull and another push go
    through (the lock is not held), and the checked push is then applied as usual."""
    import threading

    shard = ShardState(0, np.zeros(1000, np.float32), optimizer=NesterovMomentum(0.9),
                       schedule=LRSchedule(0.1))
    entered, release = threading.Event(), threading.Event()
    check = shard._check

    def slow_check(*args):
        if threading.current_thread().name == "slow":
            entered.set()
            assert release.wait(10)
        return check(*args)

    shard._check = slow_check
    results = []
    t = threading.Thread(target=lambda: results.append(shard.push(np.ones(1000, np.float32), 0)),
                         name="slow")
    t.start()
    assert entered.wait(10)
    arr, version = shard.snapshot()  # would block here if the check held the lock
    assert version == 0 and not arr.any()
    other = shard.push(np.ones(1000, np.float32), 0, worker=1)
    assert other.outcome == "applied" and other.version == 1
    release.set()
    t.join(10)
    assert results[0].outcome == "applied" and results[0].staleness == 1 and shard.version == 2
    bad = shard.push(np.full(1000, np.nan, np.float32), 2)
    assert bad.outcome == "rejected" and bad.reason == "gradient contains NaN or Inf"
    assert shard.version == 2 and shard.counters["rejected"] == 1


def test_a_publication_is_the_snapshot_without_a_copy():
    """`publication` is `snapshot`'s `[weights | BatchNorm statistics]`, read from the shard's own
    storage (the Ray shard puts large ones straight into the object store from there)."""
    s = ShardState(0, np.linspace(-1, 1, 1000, dtype=np.float32), np.arange(6, dtype=np.float32),
                   optimizer=NesterovMomentum(0.9, 5e-4), schedule=LRSchedule(0.1),
                   averager=PolyakAverage(0.5))
    for k in range(3):
        s.push(np.full(1000, 0.1 * (k + 1), np.float32), s.version, 0,
               np.full(6, float(k), np.float32))
        for averaged in (False, True):
            snap, v2 = s.snapshot(averaged)
            with s.lock:
                pub, version = s.publication(averaged)
                assert version == v2 == k + 1
                np.testing.assert_array_equal(pub, snap)
                assert np.shares_memory(pub, s.average if averaged else s.params)
    assert not np.array_equal(s.params, s.average)  # two weight sets, two storages
