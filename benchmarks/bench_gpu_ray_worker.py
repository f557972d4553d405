"""GPU: one Ray worker actor's images/s against a plain single-GPU loop (issue 13's target: 90%).

The baseline is the honest one: a plain PyTorch loop on the same GPU with bf16 autocast and
channels_last, the same model, batch and random data, `torch.optim.SGD(nesterov=True)` on the
GPU. The worker is the real thing: a `WorkerActor` with a GPU in its own Ray process, pulling from
and pushing to `--shards` real `ParameterServerShard` actors on the same machine's CPUs (which
apply Nesterov and Polyak there), with its defaults on a GPU (bf16 autocast, channels_last,
cudnn.benchmark), with and without `--prefetch`, with gradients pushed as bfloat16, and as
Downpour ran (Dean et al. 2012: a fetch every n_fetch steps, a push every n_push, `--every N`).
Every step of the first three columns moves the whole model both ways (resnet50: 102 MB each way),
which on one machine's object store and CPUs is what bounds them; the last column divides those
bytes by N. Rounds alternate; medians are reported.

    python benchmarks/bench_gpu_ray_worker.py [--models resnet50 inception_v3] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu_worker import timed  # noqa: E402
from common import machine  # noqa: E402

from ps_trainer.config import TrainConfig  # noqa: E402
from ps_trainer.models import build, get_spec, training_loss  # noqa: E402
from ps_trainer.trainer.actors import initial_checkpoint, make_shards, make_workers  # noqa: E402
from ps_trainer.trainer.cluster import ResourcePlan, start_ray  # noqa: E402
from ps_trainer.trainer.plan import prepare  # noqa: E402


def data(model: str, batch: int):
    s = get_spec(model).input_size
    rng = np.random.default_rng(0)
    return rng.standard_normal((2 * batch, 3, s, s), dtype=np.float32), rng.integers(0, 1000, 2 * batch)


def plain_loop(model_name: str, batch: int, steps: int) -> float:
    torch.backends.cudnn.benchmark = True
    model = build(model_name, num_classes=1000).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    x, y = data(model_name, batch)
    x = torch.from_numpy(x[:batch]).cuda().contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(y[:batch]).cuda()
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = training_loss(model(x), y)
        loss.backward()
        opt.step()

    return steps * batch / timed(step, steps)


def ray_worker(model_name: str, batch: int, steps: int, shards: int, prefetch: bool,
               push_dtype: str = "float32", every: int = 1) -> float:
    import ray

    cfg = TrainConfig(model=model_name, workers=1, ps_shards=shards, batch_size=batch,
                      progress=False, prefetch=prefetch, dataset="synthetic", push_dtype=push_dtype,
                      fetch_every=every, push_every=every,
                      run_dir=tempfile.mkdtemp(prefix="bench-gpu-")).validate()
    plan = prepare(cfg)
    x, y = data(model_name, batch)
    plan.data.x_train, plan.data.y_train = x, y.astype(np.int64)
    cpus = max(1, (os.cpu_count() or 2) - 2) // shards
    resources = ResourcePlan(1, 1, cpus, "cuda")
    initial_checkpoint(plan)
    shard_actors = make_shards(plan, resources)
    (worker,) = make_workers(plan, shard_actors, resources)
    try:
        ray.get(worker.run.remote(5))  # warm-up: first pulls, cudnn's choice of kernels
        out = ray.get(worker.run.remote(steps))
        return steps * batch / out["seconds"]
    finally:
        for a in shard_actors + [worker]:
            ray.kill(a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "inception_v3"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--every", type=int, default=4,
                    help="Downpour's n_fetch = n_push for the last column (default 4)")
    a = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    start_ray(None)
    rows, results = [], {}
    for m in a.models:
        base, ours, pre, half, down = [], [], [], [], []
        for _ in range(a.rounds):
            base.append(plain_loop(m, a.batch_size, a.steps))
            ours.append(ray_worker(m, a.batch_size, a.steps, a.shards, prefetch=False))
            pre.append(ray_worker(m, a.batch_size, a.steps, a.shards, prefetch=True))
            half.append(ray_worker(m, a.batch_size, a.steps, a.shards, prefetch=True,
                                   push_dtype="bfloat16"))
            down.append(ray_worker(m, a.batch_size, a.steps, a.shards, prefetch=True,
                                   push_dtype="bfloat16", every=a.every))
        b, o, p, h, d = (statistics.median(v) for v in (base, ours, pre, half, down))
        results[m] = {"plain": base, "worker": ours, "prefetch": pre, "prefetch_bf16": half,
                      f"prefetch_bf16_every{a.every}": down}
        rows.append(f"| {m} | {b:.0f} | {o:.0f} | {100 * o / b:.0f}% | {p:.0f} | {100 * p / b:.0f}% "
                    f"| {h:.0f} | {100 * h / b:.0f}% | {d:.0f} | {100 * d / b:.0f}% |")
        print(rows[-1], flush=True)
    text = "\n".join([
        f"Machine: {machine()}, {torch.cuda.get_device_name()}; batch {a.batch_size}, "
        f"{a.shards} shards on the CPUs, {a.steps} timed steps, {a.rounds} alternating rounds, "
        f"medians.", "",
        "| model | plain loop (bf16, channels_last) img/s | Ray worker img/s | ratio "
        "| with --prefetch img/s | ratio | --prefetch --push-dtype bfloat16 img/s | ratio "
        f"| the same, --fetch-every {a.every} --push-every {a.every} img/s | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", *rows])
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_ray_worker.json").write_text(json.dumps(results))
        Path(os.environ["OUT"], "gpu_ray_worker.md").write_text(text)


if __name__ == "__main__":
    main()
