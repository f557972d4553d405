"""What a run decides before any actor exists: the data, the model, the image size, the number of
steps, the shard plan, and the settings every shard and every worker is built with.

The order matters: everything that can be wrong with the settings (model, data, shards, memory,
resources) is checked here, before Ray or any actor starts, so a bad run fails in seconds with a
message that names the fix. Nothing here starts a process or imports Ray.

Invariants:
- `prepare` raises `ValueError` (naming the flag to change) for every mistake it can see: images
  the model cannot take, more workers than examples, more shards than parameters, an image size
  too small for the model in training.
- The model is built after `torch.manual_seed(cfg.seed)`, so the initial weights (checkpoint 0)
  depend on the seed only.
- `updates_per_epoch` counts shard versions, so every epoch-based setting (lr decay, warm-up,
  Polyak start) means the same under every policy.
- The parameter server is sharded as in DistBelief (Dean et al. 2012, sec. 4.1): `layout` cuts
  the flat parameter vector into `cfg.ps_shards` slices, one per shard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..core import LRSchedule, NesterovMomentum, ParamLayout, PolyakAverage, make_policy
from ..data import load_dataset, partition
from ..models import build, get_spec
from .cluster import available_memory, estimate_worker_memory


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
    # --dataset parquet: (augment.TrainTransform, augment.EvalTransform) of the model's paper
    transforms: tuple | None = None


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
    n_train = data.n_train
    shares = [len(p) for p in partition(n_train, cfg.workers, cfg.seed)]  # raises if K > N
    transforms = None
    if data.streamed:  # a stream's batches cross epochs: never cut
        from ..data.augment import transforms_for

        transforms = transforms_for(cfg.model, image_size, augment=cfg.augment,
                                    lighting=cfg.lighting, flip=cfg.flip,
                                    eval_crops=cfg.eval_crops, crop_fraction=cfg.crop_fraction)
    elif cfg.batch_size > min(shares):  # ps-train refuses this (preflight); train()/a sweep cut
        notes.append(f"--batch-size {cfg.batch_size} is more than the {min(shares)} examples of "
                     f"a worker's share of the training set ({min(shares)}-{max(shares)}), so "
                     f"each worker's batches are its whole share: every step takes the whole "
                     f"share and the run does fewer epochs than --epochs says (use --batch-size "
                     f"{min(shares)} or less, or fewer --workers)")
    steps = math.ceil(cfg.epochs * n_train / (cfg.batch_size * cfg.workers))
    torch.manual_seed(cfg.seed)
    model = build(cfg.model, num_classes=data.num_classes, in_channels=spec.in_channels)
    layout = ParamLayout.from_model(model)
    layout.shards(cfg.ps_shards)  # raises if there are more shards than parameters
    # An epoch is n_train / (batch x push_every) pushes of every worker together; a version is one
    # push (async, SSP, ...) or one BSP step on the mean of K - b of them.
    policy = make_policy(cfg.policy, **cfg.policy_options())
    per_update = policy.gradients_per_update()
    if cfg.prefetch == "on" and policy.coordinates:
        notes.append(f"--prefetch is off under --policy {cfg.policy}: its pulls wait for the "
                     f"clock they carry, which a pull requested a step early would not")
    return Plan(cfg, data, spec.in_channels, image_size, steps,
                n_train / (cfg.batch_size * cfg.push_every * per_update), layout, model, notes,
                transforms)


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
    # the shards' arrays: weights, momentum, average and a snapshot, and on shards that check in
    # the update's pass (core/fused_push.py) a second copy of the first three
    need = cfg.workers * per_worker + cfg.ps_shards * (400 << 20) + 7 * 4 * plan.layout.num_params
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


def worker_options(plan: Plan) -> dict:
    """The `Worker` settings every worker of the run shares (real or simulated)."""
    cfg = plan.cfg
    loss = get_spec(cfg.model).loss_options()  # the paper's recipe; explicit flags win
    if cfg.label_smoothing >= 0:
        loss["label_smoothing"] = cfg.label_smoothing
    if cfg.aux_weight >= 0:
        loss["aux_weight"] = cfg.aux_weight
    # SSP and BSP pulls wait for the clock they carry: one requested a step early would not,
    # nor one answered with a push (the shard would have to hold the push's reply)
    coordinated = make_policy(cfg.policy, **cfg.policy_options()).coordinates
    return dict(image_size=plan.image_size, fetch_every=cfg.fetch_every,
                push_every=cfg.push_every, max_inflight=cfg.max_inflight,
                prefetch="off" if coordinated else cfg.prefetch,
                exchange="off" if coordinated else cfg.exchange, amp=cfg.amp, push_dtype=cfg.push_dtype,
                channels_last=cfg.channels_last, **loss)


def worker_data(plan: Plan, i: int, start: int = 0) -> dict:
    """What worker i reads, from its batch `start` on (a replaced worker, or a resumed run,
    continues its predecessor's batches): its partition's arrays, shipped to it, or, for a
    prepared data set, the description of its stream (stream.py), never pixels."""
    cfg, data = plan.cfg, plan.data
    if data.streamed:
        from ..data.stream import PartitionStream

        return {"stream": PartitionStream(data.root, data.pieces("train"), i, cfg.workers, cfg.seed,
                                          cfg.batch_size, plan.transforms[0], start)}
    idx = partition(data.n_train, cfg.workers, cfg.seed)[i]
    return {"x": data.x_train[idx], "y": data.y_train[idx], "start": start}


def prefetch_setting(setting: str, worker_cpus: float, gpu: bool) -> str:
    """--prefetch for a Ray worker: `auto` is on for a GPU worker and for a CPU worker with a core
    of its own (its round trips would otherwise leave that core idle: digits_cnn's worker went
    from 77% to 96% of a plain loop, docs/benchmarks.md), and off where workers share cores: there
    another worker fills the wait, so prefetch bought no speed and doubled the staleness (4
    workers on 2 cores: mean 2.98 -> 6.56)."""
    if setting != "auto":
        return setting
    return "on" if gpu or worker_cpus >= 1 else "off"


def loader_processes(cfg: TrainConfig, worker_cpus: float, gpu: bool) -> int:
    """--loader-workers, or by default the worker's whole CPUs, less the one its own loop uses
    on a CPU worker (a GPU worker's loop mostly waits for the GPU)."""
    if cfg.loader_workers >= 0:
        return cfg.loader_workers
    return max(0, int(worker_cpus) - (0 if gpu else 1))

