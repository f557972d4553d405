"""--prefetch auto for Ray workers (trainer/plan.py, `prefetch_setting`): on for a GPU worker and a
CPU worker with a core of its own, off where workers share cores, off under SSP/BSP."""

import pytest

from ps_trainer.trainer.cluster import ResourcePlan, plan_resources
from ps_trainer.trainer.plan import prefetch_setting


@pytest.mark.parametrize("workers, shards, cpus, expected", [
    (1, 1, 2, "on"),  # bench_worker's case: the worker's core would sit idle during round trips
    (4, 2, 2, "off"),  # the default run on a 2-core laptop: another worker fills the wait
    (16, 4, 20, "on"),
    (16, 4, 19, "off"),
])
def test_auto_follows_whether_each_cpu_worker_has_a_core(workers, shards, cpus, expected):
    r = plan_resources(workers, shards, "cpu", {"CPU": cpus})
    assert prefetch_setting("auto", r.worker_cpus, gpu=False) == expected


def test_auto_is_on_for_a_gpu_worker_and_explicit_settings_win():
    r = plan_resources(4, 2, "cuda", {"CPU": 2, "GPU": 4})
    assert r.worker_cpus < 1 and prefetch_setting("auto", r.worker_cpus, gpu=True) == "on"
    for setting in ("on", "off"):
        assert prefetch_setting(setting, 0.1, gpu=False) == setting
        assert prefetch_setting(setting, 4.0, gpu=True) == setting


@pytest.mark.slow  # 9-13 s: moved to the slow set to keep the default run under 10 min
def test_ray_workers_get_the_resolved_setting(ray_local, tmp_path):
    from ps_trainer.config import TrainConfig
    from ps_trainer.trainer.actors import initial_checkpoint, make_shards, make_worker
    from ps_trainer.trainer.plan import prepare

    ray = ray_local

    def prefetching(policy: str, worker_cpus: float) -> bool:
        cfg = TrainConfig(model="digits_cnn", workers=1, ps_shards=1, progress=False, policy=policy,
                          run_dir=str(tmp_path / f"{policy}-{worker_cpus}")).validate()
        plan = prepare(cfg)
        initial_checkpoint(plan)
        resources = ResourcePlan(worker_cpus, 0.0, 0.1, "cpu")
        shards = make_shards(plan, resources)
        worker = make_worker(plan, shards, resources, 0)
        try:
            return ray.get(worker.__ray_call__.remote(lambda a: a.worker.prefetch))
        finally:
            for a in shards + [worker]:
                ray.kill(a)

    assert prefetching("async", 1.0) is True
    assert prefetching("async", 0.5) is False
    assert prefetching("sync", 1.0) is False  # a BSP pull waits for its clock: never early
