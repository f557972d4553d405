"""Shared fixtures. Ray fixtures start a real local Ray on loopback (the Ray Train
`ray_start_4_cpus` pattern); nothing here is mocked."""

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray, loopback only, shared by the tests of one module."""
    from ps_trainer.trainer.cluster import start_ray

    import ray

    start_ray(None, num_cpus=2)
    yield ray
    ray.shutdown()
