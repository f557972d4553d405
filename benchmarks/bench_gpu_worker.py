"""GPU: one worker's images/s against a plain PyTorch loop on the same GPU (run on a CUDA machine).

Without Ray on the GPU machine this measures the in-process transport, which is *synchronous*:
each step pulls every shard (host -> device copy), computes, copies the gradient back and applies
the shard update on the CPU before the next step. It is therefore a lower bound for the Ray
worker, whose pushes overlap the next step's compute.

    python benchmarks/bench_gpu_worker.py [--models resnet50 inception_v3] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from ps_trainer.core import FlatModel, LRSchedule, NesterovMomentum, ParamLayout, PolyakAverage, ShardState
from ps_trainer.data import Batches
from ps_trainer.models import build, get_spec, training_loss
from ps_trainer.transport import InProcessClient
from ps_trainer.worker.worker import Worker


def batches(spec, batch, n=None):
    s = spec.input_size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n or 4 * batch, 3, s, s), dtype=np.float32)
    return Batches(x, rng.integers(0, 1000, len(x)), batch, 0)


def timed(step, steps):
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def plain(name, batch, steps):
    model = build(name, num_classes=1000).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, fused=True)
    data = batches(get_spec(name), batch)

    def step():
        x, y = next(data)
        opt.zero_grad()
        training_loss(model(torch.from_numpy(x).cuda(non_blocking=True)), torch.from_numpy(y).cuda()).backward()
        opt.step()
    return steps * batch / timed(step, steps)


def worker(name, batch, steps, shards):
    model = build(name, num_classes=1000)
    layout = ParamLayout.from_model(model)
    p, b = layout.flatten(model)
    specs = layout.shards(shards)
    states = [ShardState(s.index, p[slice(*s.params)], b[slice(*s.buffers)],
                         optimizer=NesterovMomentum(0.9, 1e-4), schedule=LRSchedule(0.01),
                         averager=PolyakAverage(0.9999)) for s in specs]
    w = Worker(0, FlatModel(model, layout, device="cuda"), specs, InProcessClient(states),
               batches(get_spec(name), batch), device="cuda", max_inflight=0)
    return steps * batch / timed(w.step, steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet50", "inception_v3"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--cpu-threads", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(a.cpu_threads)
    torch.backends.cudnn.benchmark = True
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, batch {a.batch_size}, "
          f"{a.shards} shards, {a.cpu_threads} CPU threads for the shard update")
    print("| model | plain loop img/s | ps-trainer worker (in-process, synchronous) img/s | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for m in a.models:
        base = [plain(m, a.batch_size, a.steps) for _ in range(a.rounds)]
        ours = [worker(m, a.batch_size, a.steps, a.shards) for _ in range(a.rounds)]
        b, o = statistics.median(base), statistics.median(ours)
        print(f"| {m} | {b:.0f} | {o:.0f} | {100 * o / b:.0f}% |", flush=True)


if __name__ == "__main__":
    main()
