"""The one configuration object of a run: defaults here, a YAML file over them, flags over that.

Every field says why it exists. `validate()` is the only place values are checked, and it runs
before Ray or any actor starts, so a bad flag fails in a second, naming the flag and what is
allowed. The resolved config is written into every run directory (`config.yaml`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # --- what to train -------------------------------------------------------------------------
    model: str = _f("digits_cnn", "model name from the zoo (`ps-train models` lists them)")
    dataset: str = _f("digits", "digits (scikit-learn's bundled 8x8 digits, no download), "
                                "synthetic (random ImageNet-shaped data, for throughput only), "
                                "cifar10 (binary version, from --data-dir) or npz (--data-dir "
                                "FILE.npz with x, y)")
    data_dir: str = _f("", "where --dataset cifar10 or npz is read from (never downloaded)")
    image_size: int = _f(0, "side of the square input in pixels; 0 = the data's own size, raised "
                            "to the model's minimum if smaller")
    # --- the parameter server and its workers (Dean et al. 2012) --------------------------------
    workers: int = _f(4, "asynchronous worker actors, each with its own data partition")
    ps_shards: int = _f(2, "parameter-server shards the flat weight vector is cut into")
    batch_size: int = _f(32, "mini-batch per worker step")
    epochs: float = _f(25.0, "passes over the training set, counted over all workers together")
    max_time: float = _f(0.0, "stop after this many seconds of training (0 = no limit)")
    # --- the optimizer, on the server (Szegedy et al. 2014: momentum 0.9, x0.96 every 8 epochs) --
    lr: float = _f(0.05, "base learning rate")
    momentum: float = _f(0.9, "Nesterov momentum coefficient, in [0, 1)")
    nesterov: bool = _f(True, "Nesterov momentum (false: classical heavy-ball momentum)")
    weight_decay: float = _f(5e-4, "L2 weight decay added to the gradient on the server")
    lr_schedule: str = _f("constant", "constant or step (multiply by --lr-decay every "
                                      "--lr-decay-epochs)")
    lr_decay: float = _f(0.96, "step-decay factor (GoogLeNet: 0.96)")
    lr_decay_epochs: float = _f(8.0, "epochs between step decays (GoogLeNet: 8)")
    warmup_epochs: float = _f(0.0, "epochs of linear learning-rate warm-up")
    polyak_decay: str = _f("0.99", "Polyak averaging: an exponential decay in (0, 1), or 'mean' "
                                   "for the running mean of the iterates")
    polyak_start_epochs: float = _f(0.0, "epoch from which the Polyak average starts")
    label_smoothing: float = _f(-1.0, "label smoothing of the loss; -1 = the model's default "
                                      "(Inception v3: 0.1, else 0)")
    aux_weight: float = _f(-1.0, "weight of each auxiliary classifier's loss; -1 = the model's "
                                 "default (GoogLeNet: 0.3)")
    # --- staleness ------------------------------------------------------------------------------
    policy: str = _f("async", "update policy: async (Downpour), staleness_lr (lr / staleness), "
                              "bounded (SSP), sync (BSP with backup workers), drop_stale, dc_asgd "
                              "(delay compensation)")
    max_staleness: int = _f(4, "drop_stale: reject pushes staler than this")
    ssp_bound: int = _f(2, "bounded: a worker may run at most this many pushes ahead of the "
                           "slowest unfinished one (Ho et al.'s s; 0 = lock-step)")
    backup_workers: int = _f(0, "sync: step on the first workers - b gradients of each version "
                                "and drop the b late ones (Chen et al. 2016)")
    dc_lambda: float = _f(2.0, "dc_asgd: lambda of the compensation g + lambda*g*g*(w_now - w_read) "
                               "(Zheng et al.: 2 adaptive, 0.04 constant)")
    dc_adaptive: bool = _f(True, "dc_asgd: divide lambda by the root mean square of g (DC-ASGD-a)")
    dc_mean_square_decay: float = _f(0.95, "dc_asgd: decay m of the mean square of g")
    # --- controlled staleness: injected delays (real runs and the simulator) ---------------------
    delay: str = _f("none", "extra delay per worker step: none, constant, uniform (on [0, 2 * "
                            "mean]) or exponential")
    delay_mean: float = _f(0.0, "mean of the extra delay per step, in seconds")
    stragglers: int = _f(0, "how many workers are stragglers (the last ones)")
    straggler_slowdown: float = _f(4.0, "a straggler's step takes this many times its computation")
    # --- the deterministic simulator ------------------------------------------------------------
    simulate: bool = _f(False, "run the workers as logical workers in one process on a virtual "
                               "clock (deterministic: the same seed gives the same metrics)")
    sim_step_time: float = _f(0.01, "simulator: virtual seconds of one worker step's computation")
    sim_jitter: float = _f(0.1, "simulator: each step's time varies uniformly by +-this fraction "
                                "(0 = lock-step workers)")
    sim_evals: int = _f(20, "simulator: evaluations spread evenly over the run")
    # --- the hot path (Downpour's knobs) -----------------------------------------------------------
    fetch_every: int = _f(1, "worker steps between weight fetches (Downpour's n_fetch)")
    push_every: int = _f(1, "worker steps whose gradients are accumulated per push (n_push)")
    max_inflight: int = _f(2, "pushes a worker may have unacknowledged before it waits "
                              "(0 = wait for each push)")
    publish_every: int = _f(1, "shard versions between published weight snapshots")
    publish_interval: float = _f(0.0, "seconds between published snapshots, at least")
    # --- evaluation -------------------------------------------------------------------------------
    eval_every: float = _f(3.0, "seconds between evaluations of the raw and Polyak weights "
                                "(stretched if evaluating takes long)")
    bn_batches: int = _f(20, "training batches used to recompute BatchNorm statistics for the "
                             "Polyak weights (swa_utils.update_bn)")
    # --- checkpoints and faults -------------------------------------------------------------------
    checkpoint_every: float = _f(60.0, "seconds between checkpoints of every shard (0 = only at "
                                       "the end and on Ctrl-C/SIGTERM)")
    checkpoint_steps: int = _f(0, "also checkpoint every this many worker steps, all workers "
                                  "counted (0 = off); the simulator uses only this")
    checkpoint_dir: str = _f("", "where checkpoints go: a local path or a pyarrow filesystem URI "
                                 "(e.g. s3://bucket/run, shared by a cluster); empty = "
                                 "<run directory>/")
    max_worker_failures: int = _f(3, "worker deaths the run survives (each dead worker is "
                                     "restarted on its partition); one more stops the run")
    crash_worker_at: str = _f("", "fault injection for drills and tests: 'W@S' makes worker W's "
                                  "process exit at its step S (first incarnation only)")
    max_shard_failures: int = _f(3, "parameter-server shard deaths the run survives (each comes "
                                    "back from the latest checkpoint); one more stops the run")
    crash_shard_at: str = _f("", "fault injection: 'S@V' makes shard S's process exit when its "
                                 "version reaches V (first incarnation only)")
    resume: str = _f("", "continue the run in this run directory from its latest checkpoint "
                         "(its config.yaml is used; flags given here override it)")
    # --- where it runs ----------------------------------------------------------------------------
    address: str = _f("", "Ray cluster address to join (or set RAY_ADDRESS); empty = start Ray "
                          "locally on 127.0.0.1")
    device: str = _f("auto", "auto (GPU per worker if the cluster has them), cpu or cuda")
    threads_per_worker: int = _f(1, "torch threads in each CPU worker (1 was the most stable)")
    seed: int = _f(0, "seed of initialization, data split, partitions and batch order")
    run_dir: str = _f("", "run directory; empty = a new folder under ./runs/")
    progress: bool = _f(True, "show the progress bar")

    CHOICES = {"dataset": ("digits", "synthetic", "cifar10", "npz"), "lr_schedule": ("constant", "step"),
               "device": ("auto", "cpu", "cuda"),
               "delay": ("none", "constant", "uniform", "exponential")}

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def fields(cls):
        return [f for f in dataclasses.fields(cls)]

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> "TrainConfig":
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"--config {path}: no such file")
        raw = yaml.safe_load(p.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"--config {path}: expected a mapping of settings, got {type(raw).__name__}")
        return cls.from_dict({**raw, **(overrides or {})}, source=str(path))

    @classmethod
    def from_dict(cls, values: dict, source: str = "settings") -> "TrainConfig":
        known = {f.name: f for f in cls.fields()}
        cfg = cls()
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(f"{source}: unknown setting {key!r}; known settings: "
                                 f"{', '.join(sorted(known))}")
            setattr(cfg, name, _coerce(name, value, known[name].default))
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ---- the one place values are checked -----------------------------------------------------
    def policy_options(self) -> dict:
        """Keyword arguments of `make_policy(self.policy, ...)`: the policy's own settings."""
        return {"drop_stale": {"max_staleness": self.max_staleness},
                "bounded": {"workers": self.workers, "bound": self.ssp_bound},
                "sync": {"workers": self.workers, "backup": self.backup_workers},
                "dc_asgd": {"lam": self.dc_lambda, "adaptive": self.dc_adaptive,
                            "mean_square_decay": self.dc_mean_square_decay},
                }.get(self.policy, {})

    def checkpoint_location(self) -> str:
        return self.checkpoint_dir or self.resume or self.run_dir

    def polyak(self) -> float | None:
        return None if self.polyak_decay == "mean" else float(self.polyak_decay)

    def validate(self) -> "TrainConfig":
        from .core.policy import POLICIES
        from .models import get_spec

        get_spec(self.model)  # raises: unknown model 'x'; choose one of: ...
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is not one "
                                 f"of: {', '.join(allowed)}")
        if self.policy not in POLICIES:
            raise ValueError(f"--policy {self.policy!r}: unknown policy; choose one of: "
                             f"{', '.join(POLICIES)}")
        _check(self.workers >= 1, "workers", self.workers, "an integer >= 1")
        _check(self.ps_shards >= 1, "ps-shards", self.ps_shards, "an integer >= 1")
        _check(self.batch_size >= 1, "batch-size", self.batch_size, "an integer >= 1")
        _check(self.epochs > 0, "epochs", self.epochs, "a number > 0")
        _check(self.max_time >= 0, "max-time", self.max_time, "seconds >= 0 (0 = no limit)")
        _check(self.lr > 0, "lr", self.lr, "a number > 0")
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        _check(self.weight_decay >= 0, "weight-decay", self.weight_decay, "a number >= 0")
        _check(0 < self.lr_decay <= 1, "lr-decay", self.lr_decay, "a number in (0, 1]")
        _check(self.lr_decay_epochs > 0, "lr-decay-epochs", self.lr_decay_epochs, "a number > 0")
        _check(self.warmup_epochs >= 0, "warmup-epochs", self.warmup_epochs, "a number >= 0")
        try:
            decay = self.polyak()
        except ValueError:
            decay = -1.0
        _check(decay is None or 0 < decay < 1, "polyak-decay", self.polyak_decay,
               "a number in (0, 1) or 'mean'")
        _check(self.polyak_start_epochs >= 0, "polyak-start-epochs", self.polyak_start_epochs, ">= 0")
        _check(self.label_smoothing == -1 or 0 <= self.label_smoothing < 1, "label-smoothing",
               self.label_smoothing, "a number in [0, 1), or -1 for the model's default")
        _check(self.aux_weight == -1 or self.aux_weight >= 0, "aux-weight", self.aux_weight,
               "a number >= 0, or -1 for the model's default")
        _check(self.max_staleness >= 0, "max-staleness", self.max_staleness, "an integer >= 0")
        _check(self.ssp_bound >= 0, "ssp-bound", self.ssp_bound, "an integer >= 0")
        _check(0 <= self.backup_workers < self.workers, "backup-workers", self.backup_workers,
               f"an integer in [0, --workers {self.workers})")
        _check(self.dc_lambda >= 0, "dc-lambda", self.dc_lambda, "a number >= 0")
        _check(0 <= self.dc_mean_square_decay < 1, "dc-mean-square-decay",
               self.dc_mean_square_decay, "a number in [0, 1)")
        _check(self.delay_mean >= 0, "delay-mean", self.delay_mean, "seconds >= 0")
        _check(0 <= self.stragglers <= self.workers, "stragglers", self.stragglers,
               f"an integer in [0, --workers {self.workers}]")
        _check(self.straggler_slowdown >= 1, "straggler-slowdown", self.straggler_slowdown,
               "a factor >= 1")
        _check(self.sim_step_time > 0, "sim-step-time", self.sim_step_time, "seconds > 0")
        _check(0 <= self.sim_jitter < 1, "sim-jitter", self.sim_jitter, "a fraction in [0, 1)")
        _check(self.sim_evals >= 1, "sim-evals", self.sim_evals, "an integer >= 1")
        _check(self.checkpoint_every >= 0, "checkpoint-every", self.checkpoint_every, "seconds >= 0")
        _check(self.max_worker_failures >= 0, "max-worker-failures", self.max_worker_failures,
               "an integer >= 0")
        _check(self.max_shard_failures >= 0, "max-shard-failures", self.max_shard_failures,
               "an integer >= 0")
        for flag, who, count in (("crash-worker-at", "worker", self.workers),
                                 ("crash-shard-at", "shard", self.ps_shards)):
            value = getattr(self, flag.replace("-", "_"))
            _check(not value or fault_at(value)[0] < count, flag, value,
                   f"'I@N' with {who} I in [0, {count}) and N >= 1, e.g. 0@20")
        if "://" in self.run_dir:
            raise ValueError(f"--run-dir {self.run_dir}: the run directory (metrics, reports) is "
                             f"local; put the checkpoints on shared storage with --checkpoint-dir "
                             f"{self.run_dir}")
        _check(self.checkpoint_steps >= 0, "checkpoint-steps", self.checkpoint_steps, "an integer >= 0")
        for name in ("fetch_every", "push_every", "publish_every", "threads_per_worker", "bn_batches"):
            _check(getattr(self, name) >= 1, name.replace("_", "-"), getattr(self, name), "an integer >= 1")
        _check(self.max_inflight >= 0, "max-inflight", self.max_inflight, "an integer >= 0")
        _check(self.publish_interval >= 0, "publish-interval", self.publish_interval, "seconds >= 0")
        _check(self.eval_every > 0, "eval-every", self.eval_every, "seconds > 0")
        _check(self.image_size >= 0, "image-size", self.image_size, "pixels >= 0 (0 = automatic)")
        return self


def fault_at(value: str) -> tuple[int, int]:
    """'I@N' of the fault-injection flags -> (I, N); (-1, 0) when unset or malformed."""
    parts = value.split("@") if value else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[1]) < 1:
        return -1 if not value else 1 << 30, 0
    return int(parts[0]), int(parts[1])


def _check(ok: bool, flag: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"--{flag} {value!r} is out of range: expected {allowed}")


def _coerce(name: str, value, default):
    """YAML and flags give strings or numbers; make them the field's type, or say which field."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        return type(default)(value)
    except (TypeError, ValueError):
        raise ValueError(f"--{name.replace('_', '-')} {value!r}: expected "
                         f"{type(default).__name__}") from None
