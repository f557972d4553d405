"""The shard as a real Ray actor: snapshot sharing, zero-copy pulls, pushes, rejections."""

import numpy as np
import pytest

from ps_trainer.core import LRSchedule, NesterovMomentum, PolyakAverage
from ps_trainer.core.policy import Async
from ps_trainer.transport.ray_shard import INLINE_BYTES, ParameterServerShard, Push, RayClient


def make(ray, n=1000, publish_every=1, index=0, concurrency=4):
    actor = ray.remote(ParameterServerShard).options(num_cpus=0, max_concurrency=concurrency)
    return actor.remote(index, np.zeros(n, np.float32), np.ones(4, np.float32),
                        optimizer=NesterovMomentum(0.9, 0.0), schedule=LRSchedule(0.1),
                        policy=Async(), averager=PolyakAverage(0.5), publish_every=publish_every)


@pytest.mark.parametrize("n", [1000, 300_000])
def test_pulls_share_one_published_snapshot_until_the_weights_move(ray_local, n):
    """Above INLINE_BYTES the snapshot is one object in the store that every pull references;
    a small one travels inside the reply, taken once per publication all the same."""
    ray = ray_local
    shard = make(ray, n=n, publish_every=3)
    v1, held1, _ = ray.get(shard.pull.remote())
    v2, held2, _ = ray.get(shard.pull.remote())
    big = 4 * (n + 4) > INLINE_BYTES
    assert v1 == v2 == 0 and isinstance(held1, list) == big
    if big:
        assert held1[0] == held2[0]  # the same object, not a new copy
        arr = ray.get(held1[0])
        assert not arr.flags.writeable  # zero-copy view of the object store
    else:
        arr = held1
        np.testing.assert_array_equal(held1, held2)
    assert arr.shape == (n + 4,)
    client = RayClient([shard])
    g = np.ones(n, np.float32)
    for i in range(2):
        assert client.results([client.push(0, g, i, 0, np.full(4, 2.0, np.float32))])[0].outcome == "applied"
    assert ray.get(shard.pull.remote())[0] == 0  # 2 versions behind: still the shared snapshot
    ray.get(client.push(0, g, 2, 0, None))
    (w, version), = client.pull()
    assert version == 3
    np.testing.assert_allclose(w[n:], 2.0)  # the pushed BatchNorm statistics are served
    assert w[:n].max() < 0  # the weights moved against the gradient
    assert ray.get(shard.stats.remote())["publications"] == 2
    (avg, _), = client.pull(averaged=True)
    assert not np.array_equal(avg[:n], w[:n])  # the Polyak weights are a different set


def test_a_published_snapshot_keeps_its_weights_when_the_next_one_is_assembled(ray_local):
    """A large snapshot is assembled in a buffer the shard reuses for the next publication: every
    object already in the store must keep the weights of its own version."""
    ray = ray_local
    n = 300_000  # above INLINE_BYTES
    shard = make(ray, n=n)
    client = RayClient([shard])
    g = np.ones(n, np.float32)
    held = []
    for i in range(3):
        version, ref, _ = ray.get(shard.pull.remote())
        held.append((version, ref[0], ray.get(ref[0]).copy()))
        ray.get(client.push(0, g, version, 0, None))
    assert [v for v, _, _ in held] == [0, 1, 2]
    for version, ref, copy in held:
        np.testing.assert_array_equal(ray.get(ref), copy)
    assert held[0][2][:n].max() == 0 > held[1][2][:n].max() > held[2][2][:n].max()
    assert ray.get(shard.stats.remote())["publications"] == 3


def test_bad_pushes_through_ray_are_rejected_and_counted(ray_local):
    ray = ray_local
    shard = make(ray, n=10, index=1)
    client = RayClient([None, shard])
    good = np.ones(10, np.float32)
    bad = [client.push(1, np.ones(11, np.float32), 0, 5, None),
           client.push(1, good.astype(np.float64), 0, 5, None),
           client.push(1, np.full(10, np.nan, np.float32), 0, 5, None),
           shard.push.remote(Push(good, 0, 5, None, 0))]  # addressed to shard 0
    results = client.results(bad)
    assert [r.outcome for r in results] == ["rejected"] * 4
    stats = ray.get(shard.stats.remote())
    assert stats["version"] == 0 and stats["counters"] == {"rejected": 4}
    assert stats["worker_counters"] == {5: {"rejected": 4}}
    w, v = RayClient([shard]).pull()[0]
    assert v == 0 and not w[:10].any()


@pytest.mark.parametrize("tell_finished", [True, False])
def test_a_restarted_shard_learns_which_workers_finished_since_its_checkpoint(
        ray_local, tmp_path, tell_finished):
    """SSP (bound 0) over workers 0 and 1. Worker 1 finishes and retires after the checkpoint;
    the shard is then killed (-9, from outside) and comes back from that checkpoint, where worker
    1 is still running. Told who finished (`finish_recovery`), it lets worker 0 read ahead of
    worker 1; not told, it would hold worker 0 forever for pushes that never come."""
    import os
    import signal

    from ps_trainer.core import ShardState, checkpoint
    from ps_trainer.core.policy import BoundedStaleness

    ray = ray_local
    options = dict(optimizer=NesterovMomentum(0.9, 0.0), schedule=LRSchedule(0.1),
                   averager=PolyakAverage(0.5))
    state = ShardState(0, np.zeros(10, np.float32), np.zeros(0, np.float32),
                       policy=BoundedStaleness(workers=2, bound=0), **options)
    checkpoint.save(str(tmp_path), [state.state_dict()], {"sequence": 0, "model": "m"})
    shard = ray.remote(ParameterServerShard).options(
        num_cpus=0, max_concurrency=4, max_restarts=1, max_task_retries=-1).remote(
        0, policy=BoundedStaleness(workers=2, bound=0), checkpoints=str(tmp_path),
        sizes=(10, 0), **options)
    assert ray.get(shard.recovery.remote()) is None  # the first incarnation: nothing to recover
    g = np.ones(10, np.float32)
    for v in range(2):
        assert ray.get(shard.push.remote(Push(g, v, 0, None, 0))).outcome == "applied"
    ray.get(shard.retire.remote(1))  # worker 1 finished
    assert ray.get(shard.pull.remote(worker=0, clock=2, timeout=0.5)) is not None
    pid = ray.get(shard.__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGKILL)
    info = None
    for _ in range(100):
        try:
            info = ray.get(shard.recovery.remote(), timeout=5)
            break
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            continue
    assert info and info["restored_version"] == 0 and not info["error"]
    ray.get(shard.finish_recovery.remote(10, {0: 2}, [1] if tell_finished else []))
    answer = ray.get(shard.pull.remote(worker=0, clock=2, timeout=1.0))
    assert (answer is not None) == tell_finished


COMPILED_SHARD = 1 << 21  # push_kernel.MIN_SIZE: the compiled loop's smallest shard (checked below)


@pytest.mark.parametrize("n,pushes", [
    (300_000, 5),
    pytest.param(COMPILED_SHARD + 1000, 9, marks=pytest.mark.slow),  # compiles in two processes
])
def test_pushes_that_queue_behind_a_busy_ray_shard_are_applied_together_exactly(ray_local, n, pushes):
    """Group commit through a real threaded actor: pushes sent while the shard's lock is held
    (from inside the actor, as a long update would) are applied in one pass, and the shard ends
    bit for bit where the same pushes applied one by one, in the order of their versions, leave
    a ShardState. On a shard large enough for the compiled loop, 9 pushes run as one pass of 8
    and one of 1 (the one-pass push takes at most fused_push.GROUP; in place: one loop, in calls
    of 4, 4 and 1), and nothing compiles that the shard's warm-up did not (a Ray shard at K=16
    once ran past torch.compile's variants and failed its pushes)."""
    import time

    from ps_trainer.core import ShardState, push_kernel

    assert push_kernel.MIN_SIZE == COMPILED_SHARD
    ray = ray_local
    shard = make(ray, n=n, concurrency=pushes + 3)  # a thread for the hold, one a push, spares

    def graphs(self):  # wait for the warm-up, then count what this process compiled
        # (joined before importing torch._dynamo: importing it while the warm-up thread is
        # importing torch._inductor can raise Python's import _DeadlockError, as in one CI run)
        if self.warming is not None:
            self.warming.join()
        from torch._dynamo.utils import counters
        return counters["stats"]["unique_graphs"]

    compiled_before = ray.get(shard.__ray_call__.remote(graphs))
    assert (compiled_before > 0) == (n >= COMPILED_SHARD), f"the shard compiled {compiled_before}"
    if n >= COMPILED_SHARD:  # the replay below must run the same loop, in this process
        assert push_kernel.compiled(True, True) is not None, "the push loop does not build here"

    def hold(self, count, seconds):  # until `count` pushes queue (or `seconds` pass)
        with self.state.lock:
            end = time.monotonic() + seconds
            while len(self.state._queue) < count and time.monotonic() < end:
                time.sleep(0.01)

    held = shard.__ray_call__.remote(hold, pushes, 30.0)
    while not ray.get(shard.__ray_call__.remote(lambda self: self.state.lock.locked())):
        time.sleep(0.01)
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(n, dtype=np.float32) for _ in range(pushes)]
    results = RayClient([shard]).results(
        [shard.push.remote(Push(g, 0, w, np.full(4, float(w), np.float32), 0))
         for w, g in enumerate(grads)])
    ray.get(held)
    assert [r.outcome for r in results] == ["applied"] * pushes, results
    assert sorted(r.version for r in results) == list(range(1, pushes + 1))
    assert sorted(r.staleness for r in results) == list(range(pushes))
    stats = ray.get(shard.stats.remote())
    from ps_trainer.core import fused_push
    group = fused_push.GROUP if ray.get(shard.__ray_call__.remote(lambda self: self.state.fuses())) \
        else pushes
    sizes = [min(group, pushes - i) for i in range(0, pushes, group)]  # the drains, in turn
    assert stats["batched"] == sum(k for k in sizes if k > 1), (sizes, stats)
    assert stats["counters"] == {"applied": pushes}, stats
    assert ray.get(shard.__ray_call__.remote(graphs)) == compiled_before
    replay = ShardState(0, np.zeros(n, np.float32), np.ones(4, np.float32),
                        optimizer=NesterovMomentum(0.9, 0.0), schedule=LRSchedule(0.1),
                        policy=Async(), averager=PolyakAverage(0.5))
    for r in sorted(results, key=lambda r: r.version):
        w = r.worker
        assert replay.push(grads[w], 0, w, np.full(4, float(w), np.float32)) == r
    sd = ray.get(shard.state_dict.remote())
    for k in ("params", "momentum", "average"):
        np.testing.assert_array_equal(sd[k], replay.state_dict()[k], err_msg=k)
    (w, version), = RayClient([shard]).pull()
    assert version == pushes
    np.testing.assert_array_equal(w[:n], replay.params)


def test_the_one_pass_kernel_runs_on_the_shards_threads_in_a_ray_actor(ray_local):
    """Ray sets OMP_NUM_THREADS=1 in its workers, and OpenMP's count in an actor's threads
    followed it: a first one-pass push (core/fused_push.py) ran on one thread on a two-thread
    shard, while torch's loops ran on two. The kernel now takes torch's count."""
    from ps_trainer.core import fused_push

    if fused_push.compiler() is None:
        pytest.skip("no C compiler: shards keep the in-place push")
    shard = make(ray_local)

    def threads(self, n):  # set in one thread, the kernel called in another, as a shard's are
        import os
        import threading

        import torch
        torch.set_num_threads(n)
        used = []
        other = threading.Thread(target=lambda: used.append(fused_push.threads()))
        other.start()
        other.join()
        return os.environ.get("OMP_NUM_THREADS"), used[0]

    for n in (2, 1, 3):
        omp, used = ray_local.get(shard.__ray_call__.remote(threads, n))
        assert used == n, f"asked for {n} threads (OMP_NUM_THREADS={omp}), the kernel ran on {used}"
