"""One training run on Ray, from the settings to the summary: `train(cfg)` is the entry point.

A run goes through its phases in this order, each in its own module:
1. `plan.prepare`: everything that can be wrong with the settings (model, data, shards, memory,
   resources) is checked before Ray or any actor starts, so a bad run fails in seconds with a
   message that names the fix;
2. here: start (or join) Ray, lock the run directory, load the checkpoint of a resumed run;
3. `actors`: checkpoint 0, then the shards (each loads its slice of the latest checkpoint) and
   the workers (DistBelief's model replicas, Dean et al. 2012, each on its data partition);
4. `driver.Driver`: watches the workers until they finish, then checkpoints and summarizes.

Invariants: one process per run directory (`lock`); every actor this run made is killed when it
ends, however it ends (a local run's reaper covers a driver killed with -9); Ray is imported only
once a run starts, so `prepare` and the simulator do without it.
"""

from __future__ import annotations

import os

import torch

from ..config import TrainConfig
from ..core import checkpoint
from . import lock, reaper
from .actors import initial_checkpoint, make_evaluator, make_shards, make_workers
from .cluster import plan_resources, start_ray
from .metrics import RunDirectory, new_run_dir
from .plan import Plan, check_memory, prepare


def train(cfg: TrainConfig, log=print, plan: Plan | None = None, stop: list | None = None) -> dict:
    """Run `cfg` to the end (or to Ctrl-C) and return the summary. `plan`: `prepare(cfg)`, if
    the caller has made it already (the data is then loaded once); `stop`: a list of signals the
    caller noted (non-empty: stop at once), which Ctrl-C and SIGTERM are added to."""
    plan = plan or prepare(cfg)
    for note in plan.notes:
        log(f"note: {note}")
    local = not (cfg.address or os.environ.get("RAY_ADDRESS"))
    if local:
        check_memory(plan)
        here = {"CPU": os.cpu_count(), "GPU": torch.cuda.device_count()}
        resources = plan_resources(cfg.workers, cfg.ps_shards, cfg.device, here, [here])
    if not cfg.run_dir:
        cfg.run_dir = str(new_run_dir("runs", cfg.model))
    with lock.hold(cfg.run_dir, "--resume" if cfg.resume else "--run-dir"):
        return _train(cfg, plan, local, resources if local else None, log, stop)


def _train(cfg: TrainConfig, plan: Plan, local: bool, resources, log, stop: list | None) -> dict:
    """Start Ray, load the checkpoint to resume from, start the actors, hand over to the driver;
    kill every actor made here however the run ends."""
    import ray

    from .driver import Driver  # it imports Ray

    if local:
        reaper.watch()  # a driver killed with -9 takes its local Ray node's processes with it
    started = start_ray(cfg.address or None)
    actors: list = []  # the shards and the first workers
    workers: list = []  # the live workers: the driver swaps a replacement in (in place)
    run = join = None
    try:
        if not local:
            resources = _cluster_resources(cfg)
        for w in resources.warnings:
            log(f"warning: {w}")
        torch.set_num_threads(max(1, cfg.threads_per_worker))
        states, resumed = _load_resumed(cfg, plan) if cfg.resume else (None, None)
        keep = {"pushes": resumed["counts"], "evals": resumed["rows"]["evals"]} if resumed else None
        run = RunDirectory(cfg.run_dir, cfg.to_yaml(), keep_rows=keep)
        if not resumed:
            initial_checkpoint(plan)
        shards = make_shards(plan, resources)  # each loads its slice of the latest checkpoint
        actors = list(shards)
        clocks = None
        if resumed:
            log(f"resumed from checkpoint {resumed['sequence']}: shard versions "
                f"{[sd['version'] for sd in states]}")
            clocks = _resume_shards(cfg, shards, states, resumed)
        if cfg.serve_grpc:  # outside workers may join (ps-train worker --ps grpc://...)
            from .grpc_join import GrpcJoin

            join = GrpcJoin(plan, shards, cfg.run_dir, log)
        workers = make_workers(plan, shards, resources, clocks)
        actors += workers
        evaluator, evaluator_actor = make_evaluator(plan, shards, resources)
        actors += [evaluator_actor] if evaluator_actor else []
        return Driver(plan, shards, workers, run, log, resources, resumed, stop, evaluator,
                      join).run()
    finally:
        if join is not None:
            join.stop()
        for a in actors + workers:  # a replacement worker too (on a joined cluster nobody else
            ray.kill(a)           # would end it: ray.shutdown() is not called there)
        if run is not None:
            run.close()
        if started:
            ray.shutdown()


def _cluster_resources(cfg: TrainConfig):
    """The resource plan on the Ray cluster joined at --address, which must have shared
    checkpoint storage if it has more than one node."""
    import ray

    alive = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    resources = plan_resources(cfg.workers, cfg.ps_shards, cfg.device, ray.cluster_resources(),
                               alive)
    nodes = len(alive)
    if nodes > 1 and not checkpoint.shared(cfg.checkpoint_location()):
        raise ValueError(
            f"--checkpoint-dir {cfg.checkpoint_location()}: this cluster has {nodes} nodes, "
            f"and a shard that Ray restarts on another node could not read checkpoints on "
            f"this machine's disk; use shared storage (s3://bucket/run, gs://..., or a "
            f"network file system mounted on every node)")
    return resources


def _load_resumed(cfg: TrainConfig, plan: Plan) -> tuple[list[dict], dict]:
    """The shard states and meta of the checkpoint --resume continues from, verified before any
    actor starts; the meta gains `counts`: (worker, shard) -> pushes that shard recorded."""
    states, resumed = checkpoint.load(cfg.checkpoint_location(), model=cfg.model,
                                      fingerprint=plan.layout.fingerprint())
    if resumed.get("kind") != "ray":
        raise ValueError(f"--resume {cfg.resume}: a simulator checkpoint; add --simulate")
    # What the shards recorded per worker: the checkpoint's own count of each worker's pushes
    # (taken while pushes were in flight, so it is a count per shard, not a cut of time).
    resumed["counts"] = {(int(w), sd["index"]): sum(c.values())
                         for sd in states for w, c in sd["worker_counters"].items()}
    return states, resumed


def _resume_shards(cfg: TrainConfig, shards: list, states: list[dict], resumed: dict) -> dict:
    """Load the resumed states into the shards; returns each worker's clock to start at."""
    import ray

    # SSP/BSP across the resume: each worker starts at the pushes every shard recorded
    # for it (as `Driver.count_done` counts its steps), every shard agrees on that count,
    # and nobody is retired (an interrupted run retires them all, so that nobody waits;
    # each worker retires again when it is done).
    clocks = {i: min(resumed["counts"].get((i, s), 0) for s in range(cfg.ps_shards))
              for i in range(cfg.workers)}
    by_index = {sd["index"]: sd for sd in states}
    ray.get([a.load_state_dict.remote(dict(by_index[i], clocks=clocks, retired=[]))
             for i, a in enumerate(shards)])
    return clocks
