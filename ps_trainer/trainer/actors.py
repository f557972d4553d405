"""The actors of a real run: the parameter-server shards and the workers, and checkpoint 0, which
the shards start from.

As in DistBelief (Dean et al. 2012, sec. 4.1), the parameters live on shards that are updated
independently, and each model replica (a worker) trains on its own partition of the data.

Recovery needs nothing that lives only in Ray's object store: Ray restarts a dead shard by
re-running its constructor with the original arguments, and arguments that went through the object
store may be gone by then (ray-project/ray#53727). So a shard is created with small arguments only,
and loads its slice of the run's *latest* checkpoint, the first incarnation (from checkpoint 0,
written here before any shard starts) as much as a restarted one.

Invariants:
- Checkpoint 0 exists before any shard starts (or the run is resumed from a later one).
- Worker i always trains on partition i, a replacement too (`make_worker(..., i)`).
- A checkpoint's meta names the model and the layout's fingerprint (names and shapes of every
  parameter), so a resume onto another model is refused before any actor starts.

Ray is imported on first use: `prepare`, reports and the simulator do without it.
"""

from __future__ import annotations

from ..config import fault_at
from ..core import ShardState
from ..core import checkpoint
from .plan import (Plan, loader_processes, prefetch_setting, shard_options, worker_data,
                   worker_options)


ZERO = {"steps": 0, "images": 0, "loss": float("nan"), "pushes_sent": 0}  # a worker's progress


def initial_checkpoint(plan: Plan) -> None:
    """Checkpoint 0: the initial weights, written before any shard starts. Every shard loads its
    slice from the run's latest checkpoint, the first incarnation as much as a restarted one, so a
    restart needs nothing that lives only in the object store (ray-project/ray#53727)."""
    cfg = plan.cfg
    params, buffers = plan.layout.flatten(plan.model)
    states = [ShardState(s.index, params[s.params[0]:s.params[1]],
                         buffers[s.buffers[0]:s.buffers[1]], **shard_options(plan)).state_dict()
              for s in plan.layout.shards(cfg.ps_shards)]
    checkpoint.save(cfg.checkpoint_location(), states, checkpoint_meta(
        plan, 0, {i: dict(ZERO, worker=i) for i in range(cfg.workers)}, {"pushes": 0, "evals": 0}))


def checkpoint_meta(plan: Plan, sequence: int, workers: dict, rows: dict) -> dict:
    """What a real run's checkpoint says besides the shards' arrays: whose it is, its number,
    each worker's progress and the metric rows it accounts for."""
    return {"model": plan.cfg.model, "fingerprint": plan.layout.fingerprint(), "kind": "ray",
            "num_params": plan.layout.num_params, "sequence": sequence,
            "workers": {str(i): w for i, w in workers.items()}, "rows": rows}


def make_shards(plan: Plan, resources) -> list:
    """The shard actors, each loading its slice of the latest checkpoint (see `initial_checkpoint`);
    their constructor arguments are small, so Ray keeps them for every restart."""
    import ray

    from ..transport.ray_shard import ParameterServerShard

    cfg = plan.cfg
    actor = ray.remote(ParameterServerShard)
    shards = []
    crash = fault_at(cfg.crash_shard_at)
    for s in plan.layout.shards(cfg.ps_shards):
        # A thread per worker: under SSP/BSP each may be held in a pull while others push.
        # Ray restarts a dead shard (which then loads the latest checkpoint) and retries the
        # calls in flight to it, so workers wait instead of failing.
        shards.append(actor.options(num_cpus=resources.shard_cpus, max_concurrency=cfg.workers + 4,
                                    max_restarts=cfg.max_shard_failures,
                                    max_task_retries=-1 if cfg.max_shard_failures else 0).remote(
            s.index, **shard_options(plan), publish_every=cfg.publish_every,
            publish_interval=cfg.publish_interval, threads=max(1, int(resources.shard_cpus)),
            checkpoints=cfg.checkpoint_location(), sizes=(s.num_params, s.num_buffers),
            crash_at=crash[1] if crash[0] == s.index else 0))
    errors = [r["error"] for r in ray.get([a.recovery.remote() for a in shards]) if r]
    if errors:
        raise ValueError(f"--checkpoint-dir {cfg.checkpoint_location()}: {errors[0]}")
    return shards


def make_worker(plan: Plan, shards: list, resources, i: int, crash: bool = True, clock: int = 0):
    """Worker actor i on its data partition (`crash`: honour --crash-worker-at for it), starting
    at `clock` pushes: the count the shards recorded for it (SSP's clock, after a restart), and
    at the batch its predecessors' recorded pushes had reached."""
    import ray

    from ..worker.delays import worker_delays
    from ..worker.ray_worker import WorkerActor

    cfg, data = plan.cfg, plan.data
    gpu = resources.device == "cuda"
    w, step = fault_at(cfg.crash_worker_at)
    crash_at = step if crash and w == i else 0
    options = worker_options(plan)
    options["prefetch"] = prefetch_setting(options["prefetch"], resources.worker_cpus, gpu)
    return ray.remote(WorkerActor).options(
        num_cpus=resources.worker_cpus, num_gpus=resources.worker_gpus, max_concurrency=2).remote(
        i, cfg.model, data.num_classes, plan.in_channels, shards, plan.layout.shards(cfg.ps_shards),
        worker_data(plan, i, start=clock * cfg.push_every), batch_size=cfg.batch_size,
        seed=cfg.seed, device=resources.device, threads=cfg.threads_per_worker,
        options={**options, "delay": worker_delays(cfg)[i], "clock": clock},
        crash_at=crash_at, loader=loader_processes(cfg, resources.worker_cpus, gpu))


def make_workers(plan: Plan, shards: list, resources, clocks: dict | None = None) -> list:
    """Every worker of the run, worker i starting at `clocks[i]` pushes (0 for a fresh run)."""
    return [make_worker(plan, shards, resources, i, clock=(clocks or {}).get(i, 0))
            for i in range(plan.cfg.workers)]


def make_evaluator(plan: Plan, shards: list, resources):
    """Where a run's evaluations happen: in the driver for data held in memory (small by
    construction); in an actor of its own for a prepared data set, with a GPU if the cluster has
    one the workers do not use. Returns (evaluate(step, t0, final=False) -> rows, its actor or
    None)."""
    import ray

    from .evaluate import Evaluator, EvaluatorActor
    from ..transport.ray_shard import RayClient

    if not plan.data.streamed:
        return Evaluator(plan, RayClient(shards)), None
    spare = ray.cluster_resources().get("GPU", 0) - plan.cfg.workers * resources.worker_gpus
    gpu = spare >= 1
    # num_cpus=0: it must never wait for CPUs the workers hold (evaluations are short and rare)
    actor = ray.remote(EvaluatorActor).options(num_cpus=0, num_gpus=1 if gpu else 0).remote(
        plan, shards, "cuda" if gpu else "cpu", max(1, int(resources.worker_cpus)))
    return (lambda step, t0, final=False: ray.get(actor.evaluate.remote(step, t0, final))), actor

