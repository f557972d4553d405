"""The worker's communication thread (issue 13): pushes and pulls leave the training thread, in
order, and each push still carries exactly the gradient its step computed; `--prefetch auto|on|off`;
fp16 with dynamic loss scaling."""

import threading
import time

import numpy as np
import pytest
import torch

from ps_trainer.config import TrainConfig
from ps_trainer.core import FlatModel, ParamLayout
from ps_trainer.core.shard import PushResult
from ps_trainer.data import Batches, load_dataset
from ps_trainer.models import build
from ps_trainer.trainer.plan import prepare, worker_options
from ps_trainer.worker.worker import Worker


class FrozenClient:
    """Serves the same weights forever (so every step's gradient is determined by its batch) and
    records each call; a push takes `push_seconds` before it reads the gradient, as a slow
    network would."""

    def __init__(self, specs, params, buffers, push_seconds=0.0):
        self.snapshots = [(np.concatenate([params[slice(*s.params)], buffers[slice(*s.buffers)]]), 0)
                          for s in specs]
        self.push_seconds = push_seconds
        self.calls, self.grads = [], []
        self.received = 0
        self.last_wait = 0.0
        self.lock = threading.Lock()

    def pull(self, averaged=False, worker=None, clock=0):
        with self.lock:
            self.calls.append(("pull", clock))
        return [(a.copy(), v) for a, v in self.snapshots]

    def push(self, shard, grad, version_read, worker, bn_stats):
        time.sleep(self.push_seconds)
        with self.lock:
            self.calls.append(("push", shard))
            self.grads.append(np.array(grad, copy=True))
            self.received += 1
        return PushResult(shard, worker, "applied", version_read, 0, 0, 0.05)

    def results(self, handles):
        return list(handles)

    def retire(self, worker):
        pass


def _worker(threaded: bool, push_seconds: float = 0.0, shards: int = 2, **options):
    torch.manual_seed(0)
    data = load_dataset("digits", seed=0)
    model = build("digits_cnn", width=8)
    layout = ParamLayout.from_model(model)
    specs = layout.shards(shards)
    client = FrozenClient(specs, *layout.flatten(model), push_seconds=push_seconds)
    w = Worker(0, FlatModel(model, layout), specs, client,
               Batches(data.x_train, data.y_train, 16, seed=1), **options)
    w.threaded = threaded
    return w, client


@pytest.mark.parametrize("push_every", [1, 3])
def test_threaded_pushes_carry_exactly_the_gradients_of_in_line_pushes(push_every):
    """The send buffer is reused every push and the flat gradient is zeroed before the next
    backward: a slow comm thread must still send each step's own gradient, bit for bit."""
    steps = 12
    inline, ref = _worker(threaded=False, push_every=push_every, max_inflight=0)
    threaded, got = _worker(threaded=True, push_seconds=0.01, push_every=push_every,
                            max_inflight=3)
    for _ in range(steps):
        inline.step()
        threaded.step()
    inline.flush()
    threaded.flush()
    assert len(got.grads) == len(ref.grads) == 2 * steps // push_every
    for a, b in zip(got.grads, ref.grads):
        np.testing.assert_array_equal(a, b)
    assert all(np.abs(g).sum() > 0 for g in got.grads)


def test_a_step_does_not_wait_for_its_push_but_flush_does():
    w, client = _worker(threaded=True, push_seconds=1.0, max_inflight=2)
    w.step()
    assert w.pushes_sent == 2 and client.received == 0  # the step returned; the push is on its way
    w.flush()
    assert client.received == 2
    assert [r["outcome"] for r in w.drain_rows()] == ["applied", "applied"]


def test_back_pressure_still_bounds_the_pushes_in_flight():
    w, client = _worker(threaded=True, push_seconds=0.05, max_inflight=1)
    for _ in range(4):
        w.step()
        assert len(w.inflight) <= 1
        assert client.received >= 2 * (w.step_count - 1)  # all but the last step's are in
    w.flush()
    assert client.received == 8


@pytest.mark.parametrize("prefetch", [False, True])
def test_pulls_and_pushes_reach_the_client_in_the_order_of_the_steps(prefetch):
    w, client = _worker(threaded=True, shards=1, prefetch=prefetch, max_inflight=0)
    for _ in range(4):
        w.step()
    w.flush()
    if prefetch:  # each step's pull was requested when the step before began: before its push
        expected = [("pull", 0), ("pull", 0), ("push", 0), ("pull", 1), ("push", 0),
                    ("pull", 2), ("push", 0), ("pull", 3), ("push", 0)]
    else:
        expected = [("pull", 0), ("push", 0), ("pull", 1), ("push", 0), ("pull", 2), ("push", 0),
                    ("pull", 3), ("push", 0)]
    assert client.calls == expected


def test_prefetch_setting_auto_is_off_on_a_cpu_and_forced_off_under_coordinating_policies():
    assert _worker(threaded=True, prefetch="auto")[0].prefetch is False  # auto: on a GPU only
    assert _worker(threaded=True, prefetch="on")[0].prefetch is True
    assert _worker(threaded=True, prefetch="off")[0].prefetch is False
    for policy, expected in (("async", "on"), ("bounded", "off"), ("sync", "off")):
        plan = prepare(TrainConfig(policy=policy, prefetch="on", progress=False).validate())
        assert worker_options(plan)["prefetch"] == expected
    assert TrainConfig.from_dict({"prefetch": True}).validate().prefetch == "on"  # YAML's true
    assert TrainConfig.from_dict({"prefetch": "no"}).validate().prefetch == "off"
    assert TrainConfig().prefetch == "auto"


def test_fp16_pushes_the_unscaled_gradient_and_drops_one_that_overflowed():
    scaled, got = _worker(threaded=False, amp="fp16", max_inflight=0)
    plain, ref = _worker(threaded=False, amp="fp16", max_inflight=0)
    assert scaled.loss_scale == 2.0 ** 16
    plain.loss_scale = 1.0  # no scaling: the reference
    for _ in range(3):
        scaled.step()
        plain.step()
    assert len(got.grads) == len(ref.grads) == 6
    for a, b in zip(got.grads, ref.grads):  # scaling by a power of two only changes underflow
        assert np.linalg.norm(a - b) < 0.01 * np.linalg.norm(b)  # unscaled: 2**16 times off
    assert scaled.overflows == 0 and scaled.good_pushes == 3

    scaled.loss_scale = 2.0 ** 127  # the loss times this is inf in float32: so are the gradients
    scaled.step()
    plain.step()  # the same batch, pushed
    assert len(got.grads) == 6 and scaled.overflows == 1  # dropped, nothing sent
    assert scaled.loss_scale == 2.0 ** 126 and scaled.clock == 3 and scaled.good_pushes == 0
    scaled.loss_scale = 2.0 ** 8
    scaled.step()  # the dropped gradient is gone: the next push is this step's alone
    plain.step()
    for a, b in zip(got.grads[-2:], ref.grads[-2:]):
        assert np.linalg.norm(a - b) < 0.01 * np.linalg.norm(b)
    assert scaled.clock == 4


def test_amp_auto_is_off_on_a_cpu_and_fp16_is_a_setting():
    from ps_trainer.worker.worker import amp_dtype

    assert amp_dtype("auto", cuda=False) is None and amp_dtype("off", cuda=True) is None
    assert amp_dtype("fp16", cuda=False) == torch.float16
    assert amp_dtype("bf16", cuda=False) == torch.bfloat16
    assert TrainConfig.from_dict({"amp": "fp16"}).validate().amp == "fp16"
