"""glibc's allocator keeps freed memory in the processes that free and allocate the same sizes
over and over (core/malloc.py): the gRPC server and client, and every Ray worker."""

import sys

import pytest

from ps_trainer.core import malloc


def test_tune_malloc_takes_effect_once_and_says_so():
    first = malloc.tune_malloc()
    assert first == sys.platform.startswith("linux")  # glibc on every Linux this project runs on
    assert malloc.tune_malloc() == first and malloc.tuned() == first


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_ray_worker_process_runs_with_the_allocator_tuned(ray_local, tmp_path):
    import os

    from ps_trainer.config import TrainConfig
    from ps_trainer.trainer.actors import initial_checkpoint, make_shards, make_workers
    from ps_trainer.trainer.cluster import ResourcePlan
    from ps_trainer.trainer.plan import prepare

    ray = ray_local
    cfg = TrainConfig(model="digits_cnn", workers=1, ps_shards=1, progress=False,
                      run_dir=str(tmp_path)).validate()
    plan = prepare(cfg)
    initial_checkpoint(plan)
    resources = ResourcePlan(0.1, 0.0, 0.1, "cpu")
    shards = make_shards(plan, resources)
    (worker,) = make_workers(plan, shards, resources)
    try:
        def probe(actor):
            from ps_trainer.core import malloc as m

            return m.tuned(), os.getpid()

        tuned, pid = ray.get(worker.__ray_call__.remote(probe))
        assert tuned and pid != os.getpid()  # in the worker's own process
        shard_tuned, _ = ray.get(shards[0].__ray_call__.remote(probe))
        assert not shard_tuned  # only where it was measured to pay (the worker's steps)
    finally:
        for a in shards + [worker]:
            ray.kill(a)
