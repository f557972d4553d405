"""Builds and runs one training run: shards, workers, periodic evaluation, the run directory.

The order matters: everything that can be wrong with the settings (model, data, shards, memory,
resources) is checked before Ray or any actor starts, so a bad run fails in seconds with a message
that names the fix. Once running, the driver never blocks the workers: it drains their metrics,
evaluates the raw and Polyak weights from published snapshots, and draws the progress bar. On
Ctrl-C or SIGTERM it stops the workers, waits for their pushes, writes what it has and kills every
actor it made.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..config import TrainConfig, fault_at
from ..core import LRSchedule, NesterovMomentum, ParamLayout, PolyakAverage, ShardState, make_policy
from ..core import checkpoint
from ..data import load_dataset, partition
from ..models import build, get_spec
from .cluster import available_memory, estimate_worker_memory, plan_resources, start_ray
from .evaluate import evaluate, has_batchnorm, recompute_bn
from . import lock, reaper
from .divergence import DivergenceWatch, Diverged
from .signals import stop_requested
from .metrics import RunDirectory, new_run_dir
from .progress import ProgressBar
from .summary import summarize


FLUSH_EVERY = 60.0  # s between metric flushes (each checkpoint flushes too)
ZERO = {"steps": 0, "images": 0, "loss": float("nan"), "pushes_sent": 0}  # a worker's progress


@dataclass
class Plan:
    """What `prepare` decided, before any actor exists."""

    cfg: TrainConfig
    data: object
    in_channels: int
    image_size: int
    steps_per_worker: int
    updates_per_epoch: float  # shard versions per epoch of data (see `prepare`)
    layout: ParamLayout
    model: torch.nn.Module
    notes: list


def prepare(cfg: TrainConfig) -> Plan:
    """Validate everything that can be validated without a cluster."""
    cfg.validate()
    spec = get_spec(cfg.model)
    size = cfg.image_size or spec.input_size
    data = load_dataset(cfg.dataset, seed=cfg.seed, synthetic_shape=(spec.in_channels, size, size),
                        data_dir=cfg.data_dir)
    notes = []
    channels = data.image_shape[0]
    if channels not in (1, spec.in_channels):  # grey images are expanded to RGB; nothing else
        raise ValueError(f"--dataset {cfg.dataset} has {channels}-channel images, but --model "
                         f"{cfg.model} takes {spec.in_channels}; choose a model for this data "
                         f"(`ps-train models`)")
    native = data.image_shape[-1]
    if cfg.image_size:
        image_size = trainable_size(cfg.model, spec, cfg.image_size, explicit=True)
    else:
        image_size = trainable_size(cfg.model, spec, max(native, spec.min_train_size), explicit=False)
        if image_size != native:
            notes.append(f"{cfg.dataset} images are {native}x{native}; {cfg.model} trains (with its "
                         f"auxiliary heads) from {image_size}x{image_size} up, so they are upsampled "
                         f"to that (set --image-size)")
    n_train = len(data.y_train)
    partition(n_train, cfg.workers, cfg.seed)  # raises if there are more workers than examples
    steps = math.ceil(cfg.epochs * n_train / (cfg.batch_size * cfg.workers))
    torch.manual_seed(cfg.seed)
    model = build(cfg.model, num_classes=data.num_classes, in_channels=spec.in_channels)
    layout = ParamLayout.from_model(model)
    layout.shards(cfg.ps_shards)  # raises if there are more shards than parameters
    # An epoch is n_train / (batch x push_every) pushes of every worker together; a version is one
    # push (async, SSP, ...) or one BSP step on the mean of K - b of them.
    per_update = make_policy(cfg.policy, **cfg.policy_options()).gradients_per_update()
    return Plan(cfg, data, spec.in_channels, image_size, steps,
                n_train / (cfg.batch_size * cfg.push_every * per_update), layout, model, notes)


def trainable_size(name: str, spec, size: int, *, explicit: bool) -> int:
    """The smallest side >= `size` at which the model trains (auxiliary heads included), found by
    bisection with forward passes on the `meta` device, which cost no memory and little time."""
    model = build(name, num_classes=10, in_channels=spec.in_channels).to("meta").train()

    def trains(side: int) -> str:
        try:
            model(torch.empty(2, spec.in_channels, side, side, device="meta"))
            return ""
        except RuntimeError as e:
            return str(e).splitlines()[0]

    error = trains(size)
    if not error:
        return size
    if explicit:
        raise ValueError(f"--image-size {size} is too small for {name} in training ({error}); "
                         f"the paper uses {spec.input_size}")
    lo, hi = size, max(size, spec.input_size)  # lo fails; hi is the paper's size
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if not trains(mid) else (mid, hi)
    return hi


def check_memory(plan: Plan) -> None:
    """On a single machine, refuse a run whose workers would not fit in memory."""
    cfg = plan.cfg
    try:
        probe = build(cfg.model, num_classes=plan.data.num_classes, in_channels=plan.in_channels)
        per_worker = estimate_worker_memory(probe, cfg.batch_size, plan.in_channels, plan.image_size)
    except Exception:  # noqa: BLE001 - an estimate we cannot make is not a reason to refuse
        return
    need = cfg.workers * per_worker + cfg.ps_shards * (400 << 20) + 4 * 4 * plan.layout.num_params
    have = available_memory()
    if have and need > 0.9 * have:
        fit = max(1, int((0.9 * have - cfg.ps_shards * (400 << 20)) // per_worker))
        raise ValueError(
            f"{cfg.workers} workers of {cfg.model} at batch {cfg.batch_size} and "
            f"{plan.image_size}x{plan.image_size} need about {need / 2**30:.1f} GiB "
            f"({per_worker / 2**30:.2f} GiB each), but this machine has {have / 2**30:.1f} GiB "
            f"available; use --workers {fit} or a smaller --batch-size or --image-size, or join a "
            f"cluster with --address")


def shard_options(plan: Plan) -> dict:
    """The `ShardState` settings of the run (a fresh policy object each call: one per shard)."""
    cfg = plan.cfg
    upe = plan.updates_per_epoch
    schedule = LRSchedule(cfg.lr, cfg.lr_schedule, cfg.lr_decay,
                          max(1, round(cfg.lr_decay_epochs * upe)), round(cfg.warmup_epochs * upe))
    return dict(optimizer=NesterovMomentum(cfg.momentum, cfg.weight_decay, cfg.nesterov),
                schedule=schedule, policy=make_policy(cfg.policy, **cfg.policy_options()),
                averager=PolyakAverage(cfg.polyak(), round(cfg.polyak_start_epochs * upe)))


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


def worker_options(plan: Plan) -> dict:
    """The `Worker` settings every worker of the run shares (real or simulated)."""
    cfg = plan.cfg
    loss = get_spec(cfg.model).loss_options()  # the paper's recipe; explicit flags win
    if cfg.label_smoothing >= 0:
        loss["label_smoothing"] = cfg.label_smoothing
    if cfg.aux_weight >= 0:
        loss["aux_weight"] = cfg.aux_weight
    return dict(image_size=plan.image_size, fetch_every=cfg.fetch_every,
                push_every=cfg.push_every, max_inflight=cfg.max_inflight, **loss)


def make_worker(plan: Plan, shards: list, resources, i: int, crash: bool = True, clock: int = 0):
    """Worker actor i on its data partition (`crash`: honour --crash-worker-at for it), starting
    at `clock` pushes: the count the shards recorded for it (SSP's clock, after a restart)."""
    import ray

    from ..worker.delays import worker_delays
    from ..worker.ray_worker import WorkerActor

    cfg, data = plan.cfg, plan.data
    idx = partition(len(data.y_train), cfg.workers, cfg.seed)[i]
    w, step = fault_at(cfg.crash_worker_at)
    crash_at = step if crash and w == i else 0
    return ray.remote(WorkerActor).options(
        num_cpus=resources.worker_cpus, num_gpus=resources.worker_gpus, max_concurrency=2).remote(
        i, cfg.model, data.num_classes, plan.in_channels, shards, plan.layout.shards(cfg.ps_shards),
        data.x_train[idx], data.y_train[idx], batch_size=cfg.batch_size, seed=cfg.seed,
        device=resources.device, threads=cfg.threads_per_worker,
        options={**worker_options(plan), "delay": worker_delays(cfg)[i], "clock": clock},
        crash_at=crash_at)


def make_workers(plan: Plan, shards: list, resources, clocks: dict | None = None) -> list:
    return [make_worker(plan, shards, resources, i, clock=(clocks or {}).get(i, 0))
            for i in range(plan.cfg.workers)]


class Evaluator:
    """Evaluates the weights the shards published, on the driver, while the workers keep going.
    `client` is any PS client; `clock` gives the time (the simulator's is virtual)."""

    def __init__(self, plan: Plan, client, clock=time.time):
        self.plan, self.client, self.clock = plan, client, clock
        self.model = plan.model
        self.specs = plan.layout.shards(plan.cfg.ps_shards)
        self.bn = has_batchnorm(self.model)

    def __call__(self, step: int, t0: float) -> list[dict]:
        cfg, data, layout = self.plan.cfg, self.plan.data, self.plan.layout
        rows = []
        for weights in ("raw", "polyak"):
            snaps = self.client.pull(averaged=weights == "polyak")
            params = np.concatenate([a[:s.num_params] for (a, _), s in zip(snaps, self.specs)])
            buffers = np.concatenate([a[s.num_params:] for (a, _), s in zip(snaps, self.specs)])
            layout.load_into(self.model, params, buffers)
            bn = "none"
            if self.bn:
                bn = "pushed"
                if weights == "polyak":
                    recompute_bn(self.model, data.x_train, cfg.batch_size, cfg.bn_batches,
                                 self.plan.in_channels, self.plan.image_size, cfg.seed)
                    bn = f"recomputed ({cfg.bn_batches} batches)"
            m = evaluate(self.model, data.x_test, data.y_test, in_channels=self.plan.in_channels,
                         image_size=self.plan.image_size)
            now = self.clock()
            rows.append({"time": now, "elapsed": now - t0, "step": step,
                         "weights": weights, "bn": bn, **m})
        return rows


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
        resources = plan_resources(cfg.workers, cfg.ps_shards, cfg.device,
                                   {"CPU": os.cpu_count(), "GPU": torch.cuda.device_count()})
    if not cfg.run_dir:
        cfg.run_dir = str(new_run_dir("runs", cfg.model))
    with lock.hold(cfg.run_dir, "--resume" if cfg.resume else "--run-dir"):
        return _train(cfg, plan, local, resources if local else None, log, stop)


def _train(cfg: TrainConfig, plan: Plan, local: bool, resources, log, stop: list | None) -> dict:
    import ray

    if local:
        reaper.watch()  # a driver killed with -9 takes its local Ray node's processes with it
    started = start_ray(cfg.address or None)
    actors: list = []
    run = None
    try:
        if not local:
            resources = plan_resources(cfg.workers, cfg.ps_shards, cfg.device, ray.cluster_resources())
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            if nodes > 1 and not checkpoint.shared(cfg.checkpoint_location()):
                raise ValueError(
                    f"--checkpoint-dir {cfg.checkpoint_location()}: this cluster has {nodes} nodes, "
                    f"and a shard that Ray restarts on another node could not read checkpoints on "
                    f"this machine's disk; use shared storage (s3://bucket/run, gs://..., or a "
                    f"network file system mounted on every node)")
        for w in resources.warnings:
            log(f"warning: {w}")
        torch.set_num_threads(max(1, cfg.threads_per_worker))
        resumed, keep = None, None
        if cfg.resume:  # verified before any actor starts
            states, resumed = checkpoint.load(cfg.checkpoint_location(), model=cfg.model,
                                              fingerprint=plan.layout.fingerprint())
            if resumed.get("kind") != "ray":
                raise ValueError(f"--resume {cfg.resume}: a simulator checkpoint; add --simulate")
            # What the shards recorded per worker: the checkpoint's own count of each worker's pushes
            # (taken while pushes were in flight, so it is a count per shard, not a cut of time).
            resumed["counts"] = {(int(w), sd["index"]): sum(c.values())
                                 for sd in states for w, c in sd["worker_counters"].items()}
            keep = {"pushes": resumed["counts"], "evals": resumed["rows"]["evals"]}
        run = RunDirectory(cfg.run_dir, cfg.to_yaml(), keep_rows=keep)
        if not resumed:
            initial_checkpoint(plan)
        shards = make_shards(plan, resources)  # each loads its slice of the latest checkpoint
        actors = list(shards)
        clocks = None
        if resumed:
            log(f"resumed from checkpoint {resumed['sequence']}: shard versions "
                f"{[sd['version'] for sd in states]}")
            # SSP/BSP across the resume: each worker starts at the pushes every shard recorded
            # for it (as `drive` counts its steps), every shard agrees on that count, and nobody
            # is retired (an interrupted run retires them all, so that nobody waits; each worker
            # retires again when it is done).
            clocks = {i: min(resumed["counts"].get((i, s), 0) for s in range(cfg.ps_shards))
                      for i in range(cfg.workers)}
            by_index = {sd["index"]: sd for sd in states}
            ray.get([a.load_state_dict.remote(dict(by_index[i], clocks=clocks, retired=[]))
                     for i, a in enumerate(shards)])
        workers = make_workers(plan, shards, resources, clocks)
        actors += workers
        return drive(plan, shards, workers, run, log, resources, resumed, stop)
    finally:
        for a in actors:  # replacement workers are in the same list (drive swaps them in)
            ray.kill(a)
        if run is not None:
            run.close()
        if started:
            ray.shutdown()


def drive(plan: Plan, shards: list, workers: list, run: RunDirectory, log, resources=None,
          resumed: dict | None = None, stop: list | None = None) -> dict:
    """Watch the workers until they finish: evaluate, checkpoint, replace workers that die, and
    draw progress on the way. `resumed` is the meta of the checkpoint the shards were loaded from."""
    import ray

    from ..transport.ray_shard import RayClient

    cfg = plan.cfg
    t0 = time.time()
    evaluator = Evaluator(plan, RayClient(shards))
    bar = ProgressBar(plan.steps_per_worker * cfg.workers, enabled=cfg.progress)
    progress = {i: dict(ZERO, worker=i) for i in range(len(workers))}  # this incarnation's
    # What earlier sessions (a resumed run) and dead incarnations did, per worker.
    base = {i: dict(ZERO, worker=i) for i in range(len(workers))}
    rows_written = {i: 0 for i in base}
    lost_rows = {i: 0 for i in base}  # rows a dead worker's process (or driver) took with it
    if resumed:  # the checkpoint's counts are the truth; rows it has and the table lacks are lost
        for i in base:
            counts = [resumed["counts"].get((i, s), 0) for s in range(cfg.ps_shards)]
            steps = min(counts) * cfg.push_every  # steps whose pushes reached every shard
            base[i].update(steps=steps, images=steps * cfg.batch_size, pushes_sent=sum(counts))
            rows_written[i] = sum(n for (w, _), n in run.pushes.kept.items() if w == i)
            lost_rows[i] = base[i]["pushes_sent"] - rows_written[i]
    restarts: list[str] = []
    sequence = (resumed or {}).get("sequence", 0)
    latest = {"raw": float("nan"), "polyak": float("nan")}
    staleness: list[int] = []  # of recent pushes, for the progress bar
    alive = set(range(len(workers)))
    failure, interrupted, stopped_for_time = "", False, False
    watch = DivergenceWatch()

    def total(i: int) -> dict:
        p, b = progress[i], base[i]
        return {"worker": i, "loss": p["loss"], **{k: b[k] + p[k] for k in ("steps", "images",
                                                                              "pushes_sent")}}

    def drain() -> int:
        refs = [workers[i].drain.remote() for i in sorted(alive)]
        ray.wait(refs, num_returns=len(refs), timeout=30)
        for ref in refs:
            try:
                rows, prog = ray.get(ref, timeout=0)
            except ray.exceptions.RayError:  # died: its run() result says so, handled there
                continue
            run.pushes.write(rows)
            watch.add(rows)
            progress[prog["worker"]] = prog
            rows_written[prog["worker"]] += len(rows)
            staleness.extend(r["staleness"] for r in rows if r["staleness"] >= 0)
        del staleness[:-2000]
        return sum(total(i)["steps"] for i in progress)

    def stop_all() -> None:
        ray.get([workers[i].stop.remote() for i in sorted(alive)], timeout=30)
        # A worker held in a pull by SSP/BSP must not wait for workers that will never push.
        for s in shards:
            try:
                ray.get([s.retire.remote(i) for i in range(len(workers))], timeout=30)
            except ray.exceptions.RayActorError:
                pass  # a shard gone for good: nobody waits on it

    def save_checkpoint() -> None:
        nonlocal sequence
        if broken:
            return  # a shard lost its state: the last checkpoint is the last whole one
        states = ray.get([s.state_dict.remote() for s in shards])
        if any(sd is None for sd in states):
            return  # a shard is recovering: its restored past does not go with the others' present
        if not watch.healthy() or not all(np.isfinite(sd["params"]).all() for sd in states):
            return  # keep the last good checkpoint: never overwrite it with a diverged state
        drain()  # rows of pushes the shards recorded before their state was taken...
        run.flush()  # ...are on disk before the checkpoint exists (resume keeps what it accounts for)
        sequence += 1
        checkpoint.save(cfg.checkpoint_location(), states, checkpoint_meta(
            plan, sequence, {i: total(i) for i in progress},
            {"pushes": run.pushes.rows, "evals": run.evals.rows}))

    shard_restarts: list[dict] = []
    broken = ""  # why a restarted shard could not restore its state

    def recover() -> bool:
        """A shard that Ray restarted has loaded the latest checkpoint: tell it the version to
        continue from, above any version a worker may have seen, and count what was lost.
        True when every shard is serving."""
        nonlocal broken
        try:
            infos = ray.get([s.recovery.remote() for s in shards], timeout=10)
        except ray.exceptions.GetTimeoutError:
            return False  # a shard is still coming back; look again next round
        except ray.exceptions.RayActorError as e:  # died with no restarts left
            broken = (f"a parameter-server shard died and --max-shard-failures "
                      f"{cfg.max_shard_failures} allows no more restarts "
                      f"({str(e).strip().splitlines()[0].split('. ')[0]})")
            return False
        for i, info in enumerate(infos):
            if info is None:
                continue
            if info["error"]:  # never go on with one shard back at its initial weights
                broken = f"{info['error']}; the run stops (the last whole checkpoint is kept)"
                return False
            ids = sorted(alive)
            seen = ray.get([workers[w].versions_seen.remote() for w in ids], timeout=30)
            top = max([info["restored_version"]] + [v[i] for v, _ in seen])
            # Pushes applied but not yet acknowledged when it died were seen by nobody; there are
            # at most max_inflight + 1 per worker. Start above them too.
            floor = top + cfg.workers * (cfg.max_inflight + 1) + 1
            ray.get(shards[i].finish_recovery.remote(floor, {w: c for w, (_, c) in zip(ids, seen)}))
            shard_restarts.append({**info, "top_seen": top, "continued_at": floor,
                                   "updates_lost": top - info["restored_version"]})
            log(f"\nshard {i} died and came back from checkpoint {info['checkpoint']} at version "
                f"{info['restored_version']}; at least {top - info['restored_version']} updates "
                f"since it are lost; versions continue at {floor}")
        return True

    def replace(i: int, error: str) -> None:
        """Worker i's actor died: start another on the same partition for the steps it had left."""
        per_shard = [sum(st["worker_counters"].get(i, {}).values())
                     for st in ray.get([s.stats.remote() for s in shards])]
        recorded = sum(per_shard)
        # Its steps are those whose pushes reached every shard; later work died with it.
        steps = min(per_shard) * cfg.push_every
        base[i].update(steps=steps, images=steps * cfg.batch_size, pushes_sent=recorded)
        lost_rows[i] += recorded - rows_written[i]
        rows_written[i] = recorded
        progress[i] = dict(ZERO, worker=i)
        restarts.append(f"worker {i}: {error}")
        log(f"\nworker {i} died ({error}); restarting it on its partition "
            f"({len(restarts)} of at most {cfg.max_worker_failures} restarts)")
        # It starts at the pushes every shard recorded for it (a push that reached only some
        # shards is redone); a shard that counted one more adopts that at its first pull.
        workers[i] = make_worker(plan, shards, resources, i, crash=False, clock=min(per_shard))
        pending[workers[i].run.remote(plan.steps_per_worker - base[i]["steps"])] = i

    last_evals = []
    if not resumed:
        last_evals = evaluator(0, t0)
        run.evals.write(last_evals)
    next_flush = time.time() + FLUSH_EVERY
    next_eval = time.time() + cfg.eval_every
    next_checkpoint = time.time() + cfg.checkpoint_every if cfg.checkpoint_every else float("inf")
    every = cfg.checkpoint_steps
    next_checkpoint_step = (sum(b["steps"] for b in base.values()) // every + 1) * every if every else None
    pending = {w.run.remote(plan.steps_per_worker - base[i]["steps"]): i
               for i, w in enumerate(workers)}
    with stop_requested(stop) as stop_signal, bar:
        while pending and not failure and not stop_signal:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.5)
            if done and not recover() and broken:
                failure = broken  # workers fail when a shard is gone for good: not theirs to restart
                break
            for ref in done:
                i = pending.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as e:
                    error = str(e).strip().splitlines()[-1]
                    if isinstance(e, ray.exceptions.RayActorError):
                        error = error.split(". ")[0]  # Ray appends a page of possible causes
                    if isinstance(e, ray.exceptions.RayActorError) and \
                            len(restarts) < cfg.max_worker_failures:
                        replace(i, error)
                        continue
                    alive.discard(i)
                    failure = f"worker {i} failed: {error}" + (
                        f" (after {len(restarts)} restarts, the most --max-worker-failures allows)"
                        if restarts else "")
            steps = drain()
            recover()
            if broken:
                failure = broken
                break
            if len(shard_restarts) > cfg.max_shard_failures:
                failure = f"{len(shard_restarts)} shard failures, more than --max-shard-failures"
            if watch.diverged():
                failure = watch.message() + (f"; the last good checkpoint ({sequence}) is kept"
                                             if sequence else "")
                break
            if cfg.max_time and time.time() - t0 > cfg.max_time and not stopped_for_time:
                stopped_for_time = True
                stop_all()
            if time.time() >= next_flush:  # metrics readable even if the driver is killed
                run.flush()
                next_flush = time.time() + FLUSH_EVERY
            if pending and time.time() >= next_eval:
                e0 = time.time()
                last_evals = evaluator(steps, t0)
                for r in last_evals:
                    latest[r["weights"]] = r["top1"]
                    run.evals.write([r])
                # Evaluation shares the CPU with the workers: never let it take over 20% of it.
                next_eval = time.time() + max(cfg.eval_every, 4 * (time.time() - e0))
            if pending and (time.time() >= next_checkpoint
                            or next_checkpoint_step and steps >= next_checkpoint_step):
                save_checkpoint()
                next_checkpoint = time.time() + cfg.checkpoint_every if cfg.checkpoint_every else float("inf")
                next_checkpoint_step = next_checkpoint_step and (steps // every + 1) * every
            elapsed = max(1e-9, time.time() - t0)
            bar.update(steps, **{
                "steps/s": f"{steps / elapsed:.1f}",
                "img/s": f"{sum(p['images'] for p in progress.values()) / elapsed:.0f}",
                "loss": _mean_loss(progress),
                "stale": f"{np.mean(staleness):.1f}" if staleness else "-",
                "acc raw/polyak": f"{100 * latest['raw']:.1f}/{100 * latest['polyak']:.1f}%"})
    if stop_signal:
        interrupted = True
        log("\ninterrupted: stopping workers, checkpointing and writing what was done; "
            f"`ps-train --resume {run.path}` continues")
    if failure:
        log(f"error: {failure}; stopping the other workers")
    if interrupted or failure:
        stop_all()
        ray.wait(list(pending), num_returns=len(pending), timeout=60)
    train_time = time.time() - t0
    steps = drain()
    deadline = time.time() + 60
    while not broken and not recover() and time.time() < deadline:
        time.sleep(0.5)  # a shard that died at the very end: let it come back first
    save_checkpoint()  # every push is in: a resumed run continues from exactly here
    if broken and last_evals:  # the weights are not whole: report the last evaluation of them
        final = last_evals
    else:
        final = evaluator(steps, t0)
        run.evals.write(final)
    shard_stats = []
    for i, s in enumerate(shards):
        try:
            shard_stats.append(ray.get(s.stats.remote()))
        except ray.exceptions.RayActorError:  # gone for good: what it recorded is lost with it
            shard_stats.append({"shard": i, "version": -1, "counters": {}, "worker_counters": {}})
    run.close()
    summary, table = summarize(plan, final, shard_stats, {i: total(i) for i in progress}, run.path,
                               train_time, interrupted=interrupted,
                               stopped_for_time=stopped_for_time, lost_rows=lost_rows,
                               shard_restarts=shard_restarts)
    summary["worker_restarts"] = restarts
    summary["shard_restarts"] = shard_restarts
    if shard_restarts:
        table += "\nshard restarts: " + "; ".join(
            f"shard {r['shard']} from checkpoint {r['checkpoint']} (version {r['restored_version']}, "
            f"{r['updates_lost']} updates lost, continued at {r['continued_at']})"
            for r in shard_restarts)
    if restarts:
        table += f"\nworker restarts: {len(restarts)} (" + "; ".join(restarts) + ")"
    run.write_summary(summary, table)
    log(table)
    if failure and watch.diverged():
        summary["diverged"] = failure
        run.write_summary(summary, table)
        raise Diverged(f"{failure} (metrics are in {run.path})", summary)
    if failure:
        raise RuntimeError(f"{failure} (metrics so far are in {run.path})")
    return summary


def _mean_loss(progress: dict) -> str:
    losses = [p["loss"] for p in progress.values() if np.isfinite(p["loss"])]
    return f"{np.mean(losses):.3f}" if losses else "-"


