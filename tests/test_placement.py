"""Where a run's actors land on a cluster of several nodes, shaped like cluster/gpu.yaml: a CPU
head and two GPU nodes, all on this machine (`ray.cluster_utils.Cluster`; the GPUs are declared
resources, nothing uses CUDA).

As in DistBelief (Dean et al. 2012), the parameter-server shards go to the CPU machine and each
model replica to its own accelerator: ps-train asks for one GPU per worker and for CPUs only per
shard (`plan_resources`); Ray's scheduler puts CPU-only actors on nodes without GPUs while one
has room, and a one-GPU request on a node with one GPU. A run with more workers than GPUs is
refused before any actor starts, with the numbers.
"""

import dataclasses
import time

import pytest

from ps_trainer.trainer.cluster import plan_resources


@pytest.fixture(scope="module")
def gpu_cluster():
    """A head with 2 CPUs and no GPU, and two nodes with 2 CPUs and 1 GPU each (spare CPUs on
    the GPU nodes, so a shard could land there: the test sees whether it does). Loopback only."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    try:
        gpu_nodes = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        assert cluster.address.startswith("127.0.0.1:")
        yield cluster, cluster.head_node.node_id, {n.node_id for n in gpu_nodes}
    finally:
        ray.shutdown()
        cluster.shutdown()


def where(actor) -> tuple[str, list]:
    """The node an actor runs on, and the GPU ids Ray gave it."""
    import ray

    return ray.get(actor.__ray_call__.remote(
        lambda self: (ray.get_runtime_context().get_node_id(), ray.get_gpu_ids())), timeout=60)


def test_shards_go_to_the_cpu_head_and_each_worker_to_its_own_gpu_node(gpu_cluster):
    """Actors made with the requests the trainer computes for this cluster (`plan_resources`
    on `ray.cluster_resources()`, as `trainer.run` does on a joined cluster)."""
    import ray

    _, head, gpu_nodes = gpu_cluster
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    plan = plan_resources(2, 2, "auto", ray.cluster_resources(), nodes)
    # the shards fit on the head: each worker takes the 2 CPUs beside its GPU (its loaders')
    assert (plan.device, plan.worker_gpus, plan.shard_cpus, plan.worker_cpus) == ("cuda", 1, 1, 2)

    @ray.remote
    class Actor:
        pass

    shards = [Actor.options(num_cpus=plan.shard_cpus).remote() for _ in range(2)]
    workers = [Actor.options(num_cpus=plan.worker_cpus, num_gpus=plan.worker_gpus).remote()
               for _ in range(2)]
    try:
        assert [where(s) for s in shards] == [(head, [])] * 2
        landed = [where(w) for w in workers]
        assert {node for node, _ in landed} == gpu_nodes  # one worker per GPU node
        assert all(len(ids) == 1 for _, ids in landed)
    finally:
        for a in shards + workers:
            ray.kill(a)


def test_the_trainers_own_shards_and_workers_land_there(gpu_cluster, tmp_path):
    """The real `make_shards` and `make_worker` (their actor options, checkpoint 0 and all), on
    the plan for this cluster; only the device is CPU, since these GPUs are declared, not real."""
    import ray

    from ps_trainer.config import TrainConfig
    from ps_trainer.trainer.actors import initial_checkpoint, make_shards, make_worker
    from ps_trainer.trainer.plan import prepare

    _, head, gpu_nodes = gpu_cluster
    cfg = TrainConfig(model="digits_cnn_small", workers=2, ps_shards=2,
                      checkpoint_dir=str(tmp_path / "ckpt")).validate()
    plan = prepare(cfg)
    resources = plan_resources(cfg.workers, cfg.ps_shards, cfg.device, ray.cluster_resources(),
                               [n["Resources"] for n in ray.nodes() if n["Alive"]])
    assert resources.device == "cuda" and resources.worker_gpus == 1 and resources.worker_cpus == 2
    initial_checkpoint(plan)
    shards = make_shards(plan, resources)
    workers = []
    try:
        workers = [make_worker(plan, shards, dataclasses.replace(resources, device="cpu"), i,
                               crash=False) for i in range(cfg.workers)]
        assert [where(s)[0] for s in shards] == [head, head]
        landed = [where(w) for w in workers]
        assert {node for node, _ in landed} == gpu_nodes
        assert all(len(ids) == 1 for _, ids in landed)
    finally:
        for a in shards + workers:
            ray.kill(a)


def test_more_workers_than_gpus_is_refused_at_once_with_the_numbers(gpu_cluster, tmp_path,
                                                                     capsys):
    import ray

    from ps_trainer.cli import main

    cluster, _, _ = gpu_cluster
    with pytest.raises(ValueError, match=r"^--workers 3 needs 3 GPUs \(one per worker\) but the "
                                         r"cluster has 2; use --workers 2 or --device cpu$"):
        plan_resources(3, 2, "auto", ray.cluster_resources())
    t0 = time.monotonic()
    status = main(["--address", cluster.address, "--model", "digits_cnn_small", "--workers", "3",
                   "--no-progress", "--run-dir", str(tmp_path / "run"),
                   "--checkpoint-dir", str(tmp_path / "ckpt")])
    seconds = time.monotonic() - t0
    err = capsys.readouterr().err
    assert status == 2 and "--workers 3 needs 3 GPUs (one per worker) but the cluster has 2" in err
    assert seconds < 15, seconds  # at once: it never waits for GPUs that will not come
    assert not (tmp_path / "ckpt").exists()  # refused before checkpoint 0, before any actor
