"""The one configuration object of a run: defaults here, a YAML file over them, flags over that.

Every field says why it exists. `validate()` is the only place values are checked, and it runs
before Ray or any actor starts, so a bad flag fails in a second, naming the flag and what is
allowed. The resolved config is written into every run directory (`config.yaml`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# Upper bounds of the settings. Each is far above any real use; it is there so that a typo (or
# 1e300, or inf) is refused here, in a second, not met later as an overflow, a huge allocation or
# a run that never ends.
MAX_SECONDS = 30 * 24 * 3600.0  # s: a month is longer than any run here; time.sleep() (a worker's
#                                 injected delay) overflows near 1e10 s
MAX_EPOCHS = 1e6  # ImageNet recipes take ~100 epochs; keeps step counts far inside int64
MAX_FACTOR = 1e3  # lr, weight decay, loss weights, DC lambda, slowdown: 30x the largest base
#                   rate in the literature (LARS, ~30); above it float32 weights overflow at once
MAX_IMAGE_SIZE = 1024  # px: 3.4x the zoo's largest paper size (Inception's 299); 100000 would
#                        make one synthetic image 120 GB
MAX_RESTARTS = 1000  # Ray takes max_restarts as a C integer; a thousand deaths have a cause to fix
MAX_THREADS = 1024  # torch.set_num_threads takes a C int; no machine Ray runs on has more cores
MAX_EVALS = 10_000  # sim_evals, bn_batches: each is evaluation work (the simulator even lists its
#                     evaluation points up front); more is a run of evaluations, not of training
MAX_SEED = 2**32 - 1  # numpy's limit for a seed
MAX_INT = 2**63 - 1  # any count: numpy, Parquet and Ray store them as int64


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # --- what to train -------------------------------------------------------------------------
    model: str = _f("digits_cnn", "model name from the zoo (`ps-train models` lists them)")
    dataset: str = _f("digits", "digits (scikit-learn's bundled 8x8 digits, no download), "
                                "synthetic (random ImageNet-shaped data, for throughput only), "
                                "cifar10 (binary version, from --data-dir), npz (--data-dir "
                                "FILE.npz with x, y) or parquet (--data-dir DIR made by `ps-train "
                                "data prepare`, streamed by each worker)")
    data_dir: str = _f("", "where --dataset cifar10, npz or parquet is read from (never "
                           "downloaded); for parquet a local path or a pyarrow filesystem URI "
                           "(s3://..., gs://..., file://...)")
    image_size: int = _f(0, "side of the square input in pixels; 0 = the data's own size, raised "
                            "to the model's minimum if smaller")
    # --- streamed data (--dataset parquet): the papers' augmentation and evaluation ----------------
    loader_workers: int = _f(-1, "DataLoader processes decoding each worker's images (-1 = the "
                                 "whole CPUs a worker actor has, 0 = in the worker's own process)")
    augment: str = _f("auto", "training crops: auto (the model's paper), inception (8 to 100 percent of "
                              "the area, aspect 3/4-4/3), resnet (shorter side in [256, 480], "
                              "random crop), pad_crop (CIFAR: pad 4, random crop) or none")
    lighting: float = _f(-1.0, "AlexNet's PCA lighting noise std (-1 = the model's paper: 0.1 "
                               "for AlexNet, else 0)")
    flip: bool = _f(True, "random horizontal flips in training")
    eval_images: int = _f(2000, "held-out images of each periodic evaluation (the final one "
                                "uses the whole split)")
    eval_crops: int = _f(1, "views per image in the final evaluation: 1 (central crop), 10 "
                            "(corners, center and mirrors) or 144 (GoogLeNet's)")
    crop_fraction: float = _f(0.0, "evaluation crop as a fraction of the resized shorter side "
                                   "(0 = the model's paper: 0.875 for Inception)")
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
    dc_kernel: str = _f("auto", "dc_asgd: compiled (the whole push as one torch.compile'd loop, "
                                "about the plain push's time; needs a C++ compiler, compiles "
                                "once per shard process), eager (torch operations, ~3x), or auto "
                                "(compiled for shards of 2M+ parameters where it builds)")
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
    amp: str = _f("auto", "mixed precision of the workers' forward/backward: auto (bf16 on a GPU, "
                          "fp16 on one without bf16, off on a CPU), bf16, fp16 (with dynamic loss "
                          "scaling; an overflowed gradient is dropped) or off; gradients are "
                          "pushed in float32")
    channels_last: str = _f("auto", "convolution weights and inputs in channels_last memory "
                                    "format: auto (on a GPU), on or off")
    push_dtype: str = _f("float32", "gradients on the wire: float32, or bfloat16 (half the bytes; "
                                    "the shard accumulates in float32)")
    prefetch: str = _f("auto", "request each pull while the step before it computes, hiding its "
                               "round trips (weights one step older): auto (on a GPU, or a CPU "
                               "worker with a core of its own; off where workers share cores), "
                               "on or off; off under bounded and sync")
    exchange: str = _f("on", "each push is answered with the shard's weights after it, so a step "
                             "pulls and pushes in one round trip (when --fetch-every and "
                             "--push-every are 1): on or off; off under bounded and sync")
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
    # --- the gRPC server (ps-train serve, ps-train worker, --serve-grpc) ---------------------------
    serve_grpc: str = _f("", "a Ray run also serves its shards over gRPC on PORT or HOST:PORT, so "
                             "`ps-train worker` processes outside Ray can join (empty = off)")
    token_file: str = _f("", "file holding the shared token every gRPC call carries (else the "
                             "PS_TRAIN_TOKEN environment variable; none = no token)")
    tls_cert: str = _f("", "gRPC TLS certificate (PEM): the server's, or a worker's for mutual TLS")
    tls_key: str = _f("", "private key (PEM) of --tls-cert")
    tls_ca: str = _f("", "CA certificate (PEM): a worker verifies the server with it; a server "
                         "given one requires client certificates signed by it (mutual TLS)")
    insecure: bool = _f(False, "let a gRPC server bind a non-loopback address without TLS "
                               "(anyone who reaches it can push gradients)")
    # --- where it runs ----------------------------------------------------------------------------
    address: str = _f("", "Ray cluster address to join (or set RAY_ADDRESS); empty = start Ray "
                          "locally on 127.0.0.1")
    device: str = _f("auto", "auto (GPU per worker if the cluster has them), cpu or cuda")
    threads_per_worker: int = _f(1, "torch threads in each CPU worker (1 was the most stable)")
    seed: int = _f(0, "seed of initialization, data split, partitions and batch order")
    run_dir: str = _f("", "run directory; empty = a new folder under ./runs/")
    progress: bool = _f(True, "show the progress bar")
    dry_run: bool = _f(False, "check every setting, the data, the memory estimate and the output "
                              "locations, print the plan, and start nothing")

    CHOICES = {"dataset": ("digits", "synthetic", "cifar10", "npz", "parquet"),
               "augment": ("auto", "inception", "resnet", "pad_crop", "none"),
               "amp": ("auto", "bf16", "fp16", "off"), "channels_last": ("auto", "on", "off"),
               "prefetch": ("auto", "on", "off"), "exchange": ("on", "off"),
               "push_dtype": ("float32", "bfloat16"), "lr_schedule": ("constant", "step"),
               "dc_kernel": ("auto", "compiled", "eager"),
               "device": ("auto", "cpu", "cuda"),
               # none + the kinds of worker/delays.py's DELAYS (settings may not import a worker)
               "delay": ("none", "constant", "uniform", "exponential")}

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def fields(cls):
        return [f for f in dataclasses.fields(cls)]

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> "TrainConfig":
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"--config {path}: " + ("not a file" if p.exists() else "no such file"))
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--config {path}: cannot be read ({e})") from None
        except yaml.YAMLError as e:  # the parser's own text is several lines, with a caret
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"--config {path}: not valid YAML ({problem}{where}); expected "
                             f"'setting: value' lines, e.g. 'workers: 4'") from None
        if not isinstance(raw, dict):
            raise ValueError(f"--config {path}: expected a mapping of settings, got "
                             f"{type(raw).__name__}")
        cfg = cls.from_dict(raw, source=f"--config {path}")
        return cls.from_dict(overrides or {}, source="flags", base=cfg)

    @classmethod
    def from_dict(cls, values: dict, source: str = "settings",
                  base: "TrainConfig | None" = None) -> "TrainConfig":
        known = {f.name: f for f in cls.fields()}
        cfg = dataclasses.replace(base) if base is not None else cls()
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ValueError(f"{source}: unknown setting {key!r}; known settings: "
                                 f"{', '.join(sorted(known))}")
            setattr(cfg, name, _coerce(name, value, known[name].default, source))
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
                            "mean_square_decay": self.dc_mean_square_decay,
                            "kernel": self.dc_kernel},
                }.get(self.policy, {})

    def checkpoint_location(self) -> str:
        return self.checkpoint_dir or self.resume or self.run_dir

    def polyak(self) -> float | None:
        return None if self.polyak_decay == "mean" else float(self.polyak_decay)

    def validate(self) -> "TrainConfig":
        from .core.policy import POLICIES
        from .models import list_models, get_spec

        try:
            get_spec(self.model)
        except ValueError:
            raise ValueError(f"--model {self.model!r}: unknown model; choose one of: "
                             f"{', '.join(list_models())}") from None
        for name, allowed in self.CHOICES.items():
            if "on" in allowed and isinstance(getattr(self, name), bool):  # TrainConfig(prefetch=True)
                setattr(self, name, "on" if getattr(self, name) else "off")
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is not one "
                                 f"of: {', '.join(allowed)}")
        if self.policy not in POLICIES:
            raise ValueError(f"--policy {self.policy!r}: unknown policy; choose one of: "
                             f"{', '.join(POLICIES)}")
        for name, (ok, allowed) in self._ranges().items():
            _check(ok(getattr(self, name)), name.replace("_", "-"), getattr(self, name), allowed)
        # Whatever the table says, no float setting may be NaN or infinite (a NaN passes no
        # comparison, but `inf > 0` holds), and no count may leave int64 (numpy, Parquet, Ray).
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, float) and not math.isfinite(value):
                _check(False, f.name.replace("_", "-"), value, "a finite number")
            if type(f.default) is int and not -MAX_INT <= value <= MAX_INT:
                _check(False, f.name.replace("_", "-"), value, "an integer below 2**63")
        try:
            decay = self.polyak()
        except ValueError:
            decay = -1.0
        _check(decay is None or 0 < decay < 1, "polyak-decay", self.polyak_decay,
               "a number in (0, 1) or 'mean'")
        for flag, who, count in (("crash-worker-at", "worker", self.workers),
                                 ("crash-shard-at", "shard", self.ps_shards)):
            value = getattr(self, flag.replace("-", "_"))
            _check(not value or fault_at(value)[0] < count, flag, value,
                   f"'I@N' with {who} I in [0, {count}) and N >= 1, e.g. 0@20")
        if self.data_dir and self.dataset not in ("cifar10", "npz", "parquet"):  # else unused
            raise ValueError(f"--data-dir {self.data_dir}: --dataset {self.dataset} reads no "
                             f"files; add --dataset cifar10, npz or parquet, or leave it out")
        for flag in ("token_file", "tls_cert", "tls_key", "tls_ca"):
            path = getattr(self, flag)
            if path and not Path(path).is_file():
                raise ValueError(f"--{flag.replace('_', '-')} {path}: "
                                 + ("not a file" if Path(path).exists() else "no such file"))
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError(f"--tls-{'key' if self.tls_cert else 'cert'}: missing; a TLS "
                             f"certificate and its private key go together (--tls-cert FILE "
                             f"--tls-key FILE)")
        if self.serve_grpc:
            grpc_address(self.serve_grpc, "--serve-grpc")
        if "://" in self.run_dir:
            raise ValueError(f"--run-dir {self.run_dir}: the run directory (metrics, reports) is "
                             f"local; put the checkpoints on shared storage with --checkpoint-dir "
                             f"{self.run_dir}")
        return self

    def _ranges(self) -> dict:
        """setting -> (is this value allowed?, what is allowed): the range of every number."""
        w, seconds = self.workers, lambda note="": _interval(0, MAX_SECONDS, "seconds", note=note)
        integer = lambda lo: (lambda v: v >= lo, f"an integer >= {lo}")  # noqa: E731
        # The upper bounds of workers, batch_size, ps_shards and the *_every counts depend on the
        # data and the model: prepare() and preflight.check_plan() check them. A staleness bound
        # or a checkpoint interval that is never reached means 'none': that is allowed.
        return {
            "image_size": _interval(0, MAX_IMAGE_SIZE, "pixels", note="(0 = automatic)"),
            "workers": integer(1), "ps_shards": integer(1), "batch_size": integer(1),
            "epochs": _interval(0, MAX_EPOCHS, open_lo=True),
            "max_time": seconds("(0 = no limit)"),
            "lr": _interval(0, MAX_FACTOR, open_lo=True),
            "momentum": _interval(0, 1, open_hi=True),
            "weight_decay": _interval(0, MAX_FACTOR),
            "lr_decay": _interval(0, 1, open_lo=True),
            "lr_decay_epochs": _interval(0, MAX_EPOCHS, open_lo=True),
            "warmup_epochs": _interval(0, MAX_EPOCHS, "epochs"),
            "polyak_start_epochs": _interval(0, MAX_EPOCHS, "epochs"),
            "label_smoothing": _or_default(_interval(0, 1, open_hi=True)),
            "aux_weight": _or_default(_interval(0, MAX_FACTOR)),
            "max_staleness": integer(0), "ssp_bound": integer(0),
            "backup_workers": (lambda v: 0 <= v < w, f"an integer in [0, --workers {w})"),
            "dc_lambda": _interval(0, MAX_FACTOR),
            "dc_mean_square_decay": _interval(0, 1, open_hi=True),
            "delay_mean": seconds(),
            "stragglers": (lambda v: 0 <= v <= w, f"an integer in [0, --workers {w}]"),
            "straggler_slowdown": _interval(1, MAX_FACTOR, "a factor"),
            "sim_step_time": _interval(0, MAX_SECONDS, "seconds", open_lo=True),
            "sim_jitter": _interval(0, 1, "a fraction", open_hi=True),
            "sim_evals": _interval(1, MAX_EVALS, "an integer"),
            "fetch_every": integer(1), "push_every": integer(1), "publish_every": integer(1),
            "max_inflight": integer(0),
            "publish_interval": seconds(),
            "eval_every": _interval(0, MAX_SECONDS, "seconds", open_lo=True),
            "bn_batches": _interval(1, MAX_EVALS, "an integer"),
            "checkpoint_every": seconds("(0 = only at the end)"),
            "checkpoint_steps": integer(0),
            "max_worker_failures": _interval(0, MAX_RESTARTS, "an integer"),
            "max_shard_failures": _interval(0, MAX_RESTARTS, "an integer"),
            "threads_per_worker": _interval(1, MAX_THREADS, "an integer"),
            "seed": _interval(0, MAX_SEED, "an integer", note="(2**32 - 1, numpy's limit)"),
            "loader_workers": (lambda v: -1 <= v <= MAX_THREADS,
                               f"an integer in [-1, {MAX_THREADS}] (-1 = automatic)"),
            "lighting": _or_default(_interval(0, 1)),
            "eval_images": integer(1),
            "eval_crops": (lambda v: v in (1, 10, 144), "1, 10 or 144"),
            "crop_fraction": _interval(0, 1, note="(0 = the model's paper)"),
        }


def _interval(lo, hi, unit: str = "a number", *, open_lo: bool = False, open_hi: bool = False,
              note: str = "") -> tuple:
    """(test, text) of an interval: `_interval(0, 1, open_hi=True)` is 'a number in [0, 1)'."""
    def ok(v) -> bool:  # False for NaN, as every comparison with it is
        return (lo < v if open_lo else lo <= v) and (v < hi if open_hi else v <= hi)

    text = f"{unit} in {'(' if open_lo else '['}{lo:,g}, {hi:,.0f}{')' if open_hi else ']'}"
    return ok, text + (f" {note}" if note else "")


def _or_default(interval: tuple) -> tuple:
    """-1 means 'the model's default' (label smoothing, the auxiliary heads' weight)."""
    ok, text = interval
    return (lambda v: v == -1 or ok(v)), f"{text}, or -1 for the model's default"


def fault_at(value: str) -> tuple[int, int]:
    """'I@N' of the fault-injection flags -> (I, N); (-1, 0) when unset or malformed."""
    parts = value.split("@") if value else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[1]) < 1:
        return -1 if not value else 1 << 30, 0
    return int(parts[0]), int(parts[1])


def _check(ok: bool, flag: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"--{flag} {value!r} is out of range: expected {allowed}")


def grpc_address(value: str, flag: str) -> tuple[str, int]:
    """(host, port) of PORT or HOST:PORT ([IPv6]:PORT); the host defaults to 127.0.0.1."""
    host, _, port = str(value).rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{flag} {value}: expected PORT or HOST:PORT with a port in [0, 65535] "
                         f"(0 = any free port), e.g. 50051 or 0.0.0.0:50051")
    return host, int(port)


_ON_OFF = {t: "on" for t in ("1", "true", "yes", "on")} | {t: "off" for t in ("0", "false", "no", "off")}


def _coerce(name: str, value, default, source: str = "flags"):
    """YAML and flags give strings, numbers, or (YAML) lists, mappings and nulls; make the value
    the field's type or say which setting and what it takes. Ranges are `validate`'s business."""
    kind = type(default)
    flag = "--" + name.replace("_", "-")
    expected = {bool: "true or false (also yes/no, on/off, 1/0)", int: "int (a whole number)",
                float: "a number", str: "a string"}[kind]
    where = "" if source == "flags" else f"; set in {source}"
    if value is None:  # `lr:` with nothing after it, in YAML
        raise ValueError(f"{flag} null: empty; expected {expected}{where}")
    if kind is bool:
        text = str(value).lower() if isinstance(value, (str, bool, int)) else ""
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    elif kind is str and "on" in TrainConfig.CHOICES.get(name, ()) and \
            str(value).lower() in _ON_OFF:  # auto|on|off settings also take YAML's true/false
        return _ON_OFF[str(value).lower()]
    elif isinstance(value, bool):  # YAML's `true` is an int to Python; it is no number here
        pass
    elif kind is int and isinstance(value, (int, str)):  # not 2.5, and not 2.0 either
        with contextlib.suppress(ValueError):
            return int(value)
    elif kind is float and isinstance(value, (int, float, str)):
        with contextlib.suppress(ValueError):
            return float(value)
    elif kind is str and isinstance(value, (str, int, float)):
        return str(value)  # YAML reads `polyak_decay: 0.99` as a number
    raise ValueError(f"{flag} {value!r}: expected {expected}{where}")
