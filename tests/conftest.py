"""Shared fixtures. Ray fixtures start a real local Ray on loopback (the Ray Train
`ray_start_4_cpus` pattern); nothing here is mocked."""

import os
import shutil
import sys
from pathlib import Path

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


@pytest.fixture
def installed():
    """installed(name): the path of a command-line tool beside this Python (the virtual
    environment's bin/, where the test extra puts hadolint and buf) or on PATH; without it, the
    test is skipped, saying so."""
    def find(name: str) -> str:
        here = Path(sys.executable).parent / name
        path = str(here) if here.exists() else shutil.which(name)
        if path is None:
            pytest.skip(f"{name} is not installed (the test extra installs it on x86-64 Linux)")
        return path
    return find
