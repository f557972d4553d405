"""Asynchronous SGD on a sharded parameter server, in one process (Downpour SGD, Dean et al. 2012).

The same pieces ps-train runs on Ray, wired together with threads instead of actors:
- two `ShardState`s hold the flat weights and apply Nesterov momentum and a Polyak average;
- four workers, each with its own model replica and data partition, loop: pull the weights,
  compute a gradient on a mini-batch, push it, without waiting for each other.
Staleness appears by itself: while one worker computes, the others move the weights on, so the
shard's version when a push arrives is ahead of the version the worker read. Each pull and push
of the first steps is printed; `worker/worker.py`'s `Worker` is the same loop plus threads for
communication, GPUs and Downpour's n_fetch / n_push.

    python examples/01_async_sgd_in_one_process.py [--steps 150] [--show 2]
"""

import argparse
import threading

import numpy as np
import torch

from ps_trainer.core import (FlatModel, LRSchedule, NesterovMomentum, ParamLayout, PolyakAverage,
                             ShardState)
from ps_trainer.data import Batches, load_dataset, partition
from ps_trainer.models import build, training_loss
from ps_trainer.trainer.evaluate import evaluate, recompute_bn
from ps_trainer.transport import InProcessClient

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--workers", type=int, default=4)
ap.add_argument("--shards", type=int, default=2)
ap.add_argument("--steps", type=int, default=150, help="steps per worker")
ap.add_argument("--show", type=int, default=2, help="print every pull and push of this many first steps")
args = ap.parse_args()
torch.set_num_threads(1)  # one thread per worker is the stable setting on a small machine
torch.manual_seed(0)
data = load_dataset("digits", seed=0)  # scikit-learn's 8x8 digits: no download
printing = threading.Lock()


def say(text: str) -> None:
    with printing:
        print(text, flush=True)


# 1. The parameter server: the model's weights, flattened and cut into shards.
model = build("digits_cnn", num_classes=data.num_classes, in_channels=1)
layout = ParamLayout.from_model(model)  # where each tensor lives in one flat vector
params, buffers = layout.flatten(model)  # (P,) weights, (B,) BatchNorm statistics
specs = layout.shards(args.shards)  # contiguous ranges, one per shard
shards = [ShardState(s.index, params[slice(*s.params)], buffers[slice(*s.buffers)],
                     optimizer=NesterovMomentum(momentum=0.9, weight_decay=5e-4),
                     schedule=LRSchedule(0.05), averager=PolyakAverage(decay=0.99))
          for s in specs]
client = InProcessClient(shards)  # the same four calls as the Ray and gRPC clients


# 2. A worker: its own replica and partition; pull, compute, push, and again.
def worker(wid: int, rows: list, indices: np.ndarray) -> None:
    replica = build("digits_cnn", num_classes=data.num_classes, in_channels=1)
    flat = FlatModel(replica, layout)  # its parameters and grads are views of flat tensors
    batches = Batches(data.x_train[indices], data.y_train[indices], 32, seed=wid)
    for step in range(args.steps):
        show = step < args.show
        read = []
        for spec, (arr, version) in zip(specs, client.pull(worker=wid)):  # pull every shard
            n = spec.num_params
            flat.params[spec.params[0]:spec.params[1]].copy_(torch.from_numpy(arr[:n]))
            flat.buffers[spec.buffers[0]:spec.buffers[1]].copy_(torch.from_numpy(arr[n:]))
            read.append(version)
        if show:
            say(f"worker {wid} step {step}: pulled versions {read}")
        x, y = next(batches)
        flat.zero_grad()
        loss = training_loss(flat.model(torch.as_tensor(x)), torch.as_tensor(y))
        loss.backward()  # the gradient lands in flat.grads
        handles = [client.push(spec.index, flat.grads[slice(*spec.params)].numpy(), read[k], wid,
                               flat.buffers[slice(*spec.buffers)].numpy())
                   for k, spec in enumerate(specs)]
        for r in client.results(handles):  # staleness = version at arrival - version read
            rows.append(r)
            if show:
                say(f"worker {wid} step {step}: pushed to shard {r.shard}: read version "
                    f"{r.version_read}, arrived at {r.version_read + r.staleness} -> staleness "
                    f"{r.staleness}, {r.outcome}, now version {r.version} (loss {loss.item():.3f})")


# 3. Run them concurrently: nobody waits for anybody.
rows: list = []
threads = [threading.Thread(target=worker, args=(i, rows, idx))
           for i, idx in enumerate(partition(len(data.y_train), args.workers, seed=0))]
for t in threads:
    t.start()
for t in threads:
    t.join()

# 4. Evaluate the raw weights and the Polyak average on held-out digits.
for averaged in (False, True):
    snap = client.pull(averaged)
    layout.load_into(model, np.concatenate([a[:s.num_params] for (a, _), s in zip(snap, specs)]),
                     np.concatenate([a[s.num_params:] for (a, _), s in zip(snap, specs)]))
    if averaged:  # averaged weights need their own BatchNorm statistics (as swa_utils.update_bn)
        recompute_bn(model, data.x_train, 32, 20, in_channels=1, image_size=8, seed=0)
    acc = evaluate(model, data.x_test, data.y_test, in_channels=1, image_size=8)["top1"]
    print(f"{'Polyak' if averaged else 'raw':>6} weights: {100 * acc:.1f}% held-out accuracy")
stale = np.array([r.staleness for r in rows])
print(f"{len(rows)} pushes, mean staleness {stale.mean():.2f}, max {stale.max()}, "
      f"shard versions {[s.version for s in shards]}")
