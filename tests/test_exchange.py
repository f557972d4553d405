"""A push answered with the weights after it (`--exchange`, issue 13/15): one round trip per step
instead of a pull and a push, with the same weights as pushing and then pulling."""

import numpy as np
import pytest
import torch

from ps_trainer.config import TrainConfig
from ps_trainer.core import FlatModel, LRSchedule, NesterovMomentum, ParamLayout, PolyakAverage
from ps_trainer.core.policy import Async
from ps_trainer.core.shard import ShardState
from ps_trainer.data import Batches, load_dataset
from ps_trainer.models import build
from ps_trainer.trainer.plan import prepare, worker_options
from ps_trainer.transport.inprocess import InProcessClient
from ps_trainer.transport.ray_shard import INLINE_BYTES, ParameterServerShard, RayClient
from ps_trainer.worker.worker import Worker

SETTINGS = dict(optimizer=NesterovMomentum(0.9, 5e-4), schedule=LRSchedule(0.05),
                averager=PolyakAverage(0.5))


def _actor(ray, index, params, buffers):
    actor = ray.remote(ParameterServerShard).options(num_cpus=0, max_concurrency=4)
    return actor.remote(index, params, buffers, policy=Async(), **SETTINGS)


class CountingRayClient(RayClient):
    """The real Ray client, counting the round trips a worker makes."""

    def __init__(self, shards):
        super().__init__(shards)
        self.pulls = self.exchanges = self.pushes = 0

    def pull(self, *a, **k):
        self.pulls += 1
        return super().pull(*a, **k)

    def exchange(self, *a, **k):
        self.exchanges += 1
        return super().exchange(*a, **k)

    def push(self, *a, **k):
        self.pushes += 1
        return super().push(*a, **k)


@pytest.mark.parametrize("n", [1000, 300_000])  # inside the reply, and through the object store
def test_a_push_is_answered_with_the_weights_after_it(ray_local, n):
    ray = ray_local
    shard = _actor(ray, 0, np.zeros(n, np.float32), np.ones(4, np.float32))
    client = RayClient([shard])
    g = np.linspace(-1, 1, n, dtype=np.float32)
    for clock in (1, 2, 3):
        results, replies = client.exchange([(0, g, clock - 1, 7, np.full(4, 2.0, np.float32))],
                                           clock)
        assert [(r.outcome, r.version, r.staleness) for r in results] == \
            [("applied", clock, 0)]
        assert isinstance(replies[0][1], list) == (4 * (n + 4) > INLINE_BYTES)
        (w, version), = client.complete(replies, worker=7, clock=clock)
        (pulled, pulled_version), = client.pull()
        assert version == pulled_version == clock
        np.testing.assert_array_equal(w, pulled)  # the weights after this push, bit for bit
    assert w[:n][g > 0].max() < 0 < w[:n][g < 0].min()  # moved against the gradient
    np.testing.assert_allclose(w[n:], 2.0)  # and the BatchNorm statistics it carried
    # the shard counts the worker's pushes as the worker does (a pull lowers it to the
    # clock it carries: the exchange's pull must carry the push's, not 0)
    assert ray.get(shard.__ray_call__.remote(lambda self: self.state.clocks[7])) == 3


def _workers(shards: int, ray, **options):
    """The same worker twice: over real Ray shard actors (threaded, exchanging) and over the same
    shards in this process, pushing and then pulling in line (every pull sees its own push)."""
    out = []
    for real in (True, False):
        torch.manual_seed(0)
        data = load_dataset("digits", seed=0)
        model = build("digits_cnn", width=8)
        layout = ParamLayout.from_model(model)
        specs = layout.shards(shards)
        params, buffers = layout.flatten(model)
        parts = [(params[slice(*s.params)], buffers[slice(*s.buffers)]) for s in specs]
        if real:
            actors = [_actor(ray, s.index, p, b) for s, (p, b) in zip(specs, parts)]
            client = CountingRayClient(actors)
        else:
            states = [ShardState(s.index, p, b, policy=Async(), **SETTINGS)
                      for s, (p, b) in zip(specs, parts)]
            client = InProcessClient(states)
        w = Worker(0, FlatModel(model, layout), specs, client,
                   Batches(data.x_train, data.y_train, 16, seed=1), **options)
        w.threaded = real
        out.append(w)
    return out


def _weights(w: Worker, ray) -> np.ndarray:
    if isinstance(w.client, RayClient):
        return np.concatenate([ray.get(s.state_dict.remote())["params"] for s in w.client.shards])
    return np.concatenate([s.params for s in w.client.shards])


def test_an_exchanging_worker_trains_exactly_as_one_that_pushes_then_pulls(ray_local):
    ray = ray_local
    steps = 10
    exchanging, inline = _workers(2, ray, max_inflight=2)
    assert exchanging.exchange and not inline.exchange  # the in-process client has no exchange
    for _ in range(steps):
        exchanging.step()
        inline.step()
    exchanging.flush()
    inline.flush()
    client = exchanging.client
    # one pull (the first step's), then one round trip per step: a push to each shard
    assert (client.pulls, client.exchanges, client.pushes) == (1, steps, 0)
    rows = exchanging.drain_rows()
    assert len(rows) == 2 * steps and {r["outcome"] for r in rows} == {"applied"}
    assert [r["staleness"] for r in rows] == [0] * (2 * steps)  # each step saw its own last push
    assert [r["version"] for r in rows if r["shard"] == 0] == list(range(1, steps + 1))
    np.testing.assert_array_equal(_weights(exchanging, ray), _weights(inline, ray))
    assert not np.array_equal(_weights(exchanging, ray)[:100], np.zeros(100))


def test_prefetching_lands_the_reply_to_the_push_before_the_last(ray_local):
    """With --prefetch the reply to step t's push is landed by step t + 2 (step t + 1 computes
    while it travels), so every gradient after the first two misses exactly its own last push:
    staleness 1, as a prefetched pull's; the first step's prefetch is the only plain pull
    besides the first."""
    ray = ray_local
    steps = 8
    w, _ = _workers(1, ray, max_inflight=2, prefetch=True)
    for _ in range(steps):
        w.step()
    w.flush()
    assert (w.client.pulls, w.client.exchanges, w.client.pushes) == (2, steps, 0)
    assert [r["staleness"] for r in w.drain_rows()] == [0, 1] + [1] * (steps - 2)


def test_exchange_is_off_where_it_would_not_be_the_same_thing(ray_local):
    ray = ray_local
    # Downpour's n_fetch / n_push: a push is not always followed by a pull
    for options in ({"fetch_every": 2}, {"push_every": 3}, {"exchange": "off"}):
        w, _ = _workers(1, ray, **options)
        assert not w.exchange
        for _ in range(3):
            w.step()
        w.flush()
        assert w.client.exchanges == 0 and w.client.pushes > 0
    # SSP and BSP hold pulls until the worker may read: the shard would have to hold the push
    for policy, on in (("async", "on"), ("staleness_lr", "on"), ("dc_asgd", "on"),
                       ("bounded", "off"), ("sync", "off")):
        cfg = TrainConfig(policy=policy, workers=2, progress=False).validate()
        assert worker_options(prepare(cfg))["exchange"] == on, policy


def test_a_cpu_worker_computes_on_the_snapshots_in_the_object_store_without_copying_them(ray_local):
    """land=auto on a CPU: the model's parameters become views of the pulled snapshots (sealed
    objects in Ray's object store), not copies, and the run is bit for bit the run that copies
    them (land=copy): nothing writes a snapshot, and every step reads the weights it pulled."""
    ray = ray_local
    steps, num_shards = 6, 3
    torch.manual_seed(0)
    model = build("digits_cnn", width=128)  # 1.1M parameters: 1.5 MB a shard, through the store
    layout = ParamLayout.from_model(model)
    specs = layout.shards(num_shards)
    params, buffers = layout.flatten(model)
    data = load_dataset("digits", seed=0)
    cut = sum(not any(s.params[0] <= e.offset and e.offset + e.numel <= s.params[1] for s in specs)
              for e in layout.params)
    assert cut >= 1
    runs = {}
    for land in ("auto", "copy"):
        torch.manual_seed(0)
        m = build("digits_cnn", width=128)
        actors = [_actor(ray, s.index, params[slice(*s.params)], buffers[slice(*s.buffers)])
                  for s in specs]
        w = Worker(0, FlatModel(m, layout), specs, RayClient(actors),
                   Batches(data.x_train, data.y_train, 16, seed=1), max_inflight=2, land=land)
        assert w.exchange and w.alias == (land == "auto")
        for _ in range(steps):
            w.step()
        w.flush()
        flat = w.flat
        start, end = flat.params.data_ptr(), flat.params.data_ptr() + 4 * layout.num_params
        in_flat = sum(start <= p.data_ptr() < end for p in m.parameters())
        # aliased: only the tensors a shard boundary cuts stay in the flat buffer
        assert in_flat == (len(layout.params) if land == "copy" else cut), (land, in_flat)
        w.pull()
        runs[land] = (_weights(w, ray), flat.wire_params().numpy().copy())
        np.testing.assert_array_equal(runs[land][1], runs[land][0])  # the model has the latest
    np.testing.assert_array_equal(runs["auto"][0], runs["copy"][0])
    assert not np.array_equal(runs["auto"][0], params)  # (it trained)
