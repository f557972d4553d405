"""Resource plans: any --workers value schedules on CPUs; too few GPUs is an error at once;
a run that cannot fit in memory is refused with the numbers."""

import pytest
import torch

from ps_trainer.config import TrainConfig
from ps_trainer.models import build
from ps_trainer.trainer.cluster import estimate_worker_memory, plan_resources
from ps_trainer.trainer.plan import check_memory, prepare


@pytest.mark.parametrize("workers,shards", [(1, 1), (4, 2), (16, 2), (64, 8)])
def test_cpu_requests_always_fit_the_cores(workers, shards):
    plan = plan_resources(workers, shards, "auto", {"CPU": 2.0})
    assert plan.device == "cpu" and plan.worker_gpus == 0
    assert workers * plan.worker_cpus + shards * plan.shard_cpus <= 2.0
    assert plan.worker_cpus > 0
    assert bool(plan.warnings) == (workers > 2)
    if workers > 2:
        assert f"{workers} workers" in plan.warnings[0] and "--workers 2" in plan.warnings[0]


def test_gpu_cluster_one_gpu_per_worker_or_a_clear_error():
    plan = plan_resources(8, 2, "auto", {"CPU": 64.0, "GPU": 8.0})
    assert (plan.device, plan.worker_gpus) == ("cuda", 1.0)
    assert 8 * plan.worker_cpus + 2 * plan.shard_cpus <= 64
    with pytest.raises(ValueError, match=r"--workers 16 needs 16 GPUs .* has 8; use --workers 8"):
        plan_resources(16, 2, "auto", {"CPU": 64.0, "GPU": 8.0})
    with pytest.raises(ValueError, match="--device cuda: the cluster has no GPU"):
        plan_resources(2, 1, "cuda", {"CPU": 2.0})


def test_memory_estimate_grows_with_batch_and_image_size():
    small = estimate_worker_memory(build("resnet18", num_classes=10), 8, 3, 32)
    big = estimate_worker_memory(build("resnet18", num_classes=10), 32, 3, 64)
    assert big - small > 10 * 2**20  # activations: 16x the pixels x batch, tens of MB here
    assert small > 4 * 11_000_000 * 4  # weights, grads, pulled copy, staging


def test_a_run_that_cannot_fit_in_memory_is_refused_with_numbers():
    cfg = TrainConfig(model="resnet50", workers=64, batch_size=256, image_size=224).validate()
    with pytest.raises(ValueError, match=r"64 workers of resnet50 at batch 256 and 224x224 need about "
                                         r"\d+\.\d GiB .* use --workers \d+"):
        check_memory(prepare(cfg))


def test_small_images_are_upsampled_to_the_models_minimum():
    from ps_trainer.models import get_spec

    plan = prepare(TrainConfig(model="googlenet", workers=2).validate())
    assert plan.image_size >= get_spec("googlenet").min_input_size > 8
    assert "upsampled" in plan.notes[0]
    # the size found is the smallest at which training (aux heads included) works
    model = build("googlenet", num_classes=10).train()
    model(torch.randn(2, 3, plan.image_size, plan.image_size))
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 3, plan.image_size - 1, plan.image_size - 1))
    assert prepare(TrainConfig(model="resnet18", workers=2).validate()).image_size == 8
    with pytest.raises(ValueError, match="--image-size 4 is too small for googlenet in training"):
        prepare(TrainConfig(model="googlenet", image_size=4).validate())


@pytest.mark.slow
def test_a_cluster_of_several_nodes_refuses_a_checkpoint_dir_on_local_disk(tmp_path, capsys):
    """A shard restarted on another node could not read this machine's disk: refused at start,
    before any actor, naming the flag and why (two real Ray nodes on this machine)."""
    from ray.cluster_utils import Cluster

    from ps_trainer.cli import main
    from ps_trainer.core.checkpoint import shared

    assert shared("s3://bucket/run") and shared("gs://b/r") and not shared(str(tmp_path))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        for where in (str(tmp_path / "ckpt"), f"file://{tmp_path}/ckpt"):
            rc = main(["--address", cluster.address, "--model", "digits_cnn_small", "--workers", "2",
                       "--no-progress", "--run-dir", str(tmp_path / "run"),
                       "--checkpoint-dir", where])
            err = capsys.readouterr().err
            assert rc == 2 and f"--checkpoint-dir {where}: this cluster has 2 nodes" in err, err
            assert not (tmp_path / "ckpt").exists()  # refused before anything was written
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


def test_a_gpu_worker_gets_the_cpus_beside_its_gpu_for_its_data_loaders():
    """cluster/gpu.yaml: a 32-CPU head with no GPU and g5.2xlarge nodes (8 CPUs, 1 GPU): the
    shards fit on the head, with SHARD_THREADS CPUs (and torch threads) each, so each worker takes
    its node's 8 CPUs. A head with less room: one CPU a shard. One 16-core machine with one GPU
    and 4 shards: 16 - 4 for the shards - 1 for the driver. Nodes unknown: 1 CPU, as before."""
    from ps_trainer.trainer.cluster import SHARD_THREADS

    nodes = [{"CPU": 32.0}] + [{"CPU": 8.0, "GPU": 1.0}] * 16
    plan = plan_resources(16, 4, "auto", {"CPU": 32.0 + 16 * 8, "GPU": 16.0}, nodes)
    assert SHARD_THREADS == 2
    assert (plan.worker_cpus, plan.worker_gpus, plan.shard_cpus) == (8, 1, 2)
    small = [{"CPU": 8.0}] + [{"CPU": 8.0, "GPU": 1.0}] * 16  # 8 < 2 x 4 + 1
    plan = plan_resources(16, 4, "auto", {"CPU": 8.0 + 16 * 8, "GPU": 16.0}, small)
    assert (plan.worker_cpus, plan.shard_cpus) == (8, 1)
    here = {"CPU": 16.0, "GPU": 1.0}
    assert plan_resources(1, 4, "cuda", here, [here]).worker_cpus == 11
    two = {"CPU": 16.0, "GPU": 2.0}  # two GPUs share the node's CPUs
    assert plan_resources(2, 2, "cuda", two, [two]).worker_cpus == 6  # (16 - 2 - 1) // 2
    assert plan_resources(1, 4, "cuda", here).worker_cpus == 1
