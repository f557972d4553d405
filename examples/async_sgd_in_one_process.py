"""Asynchronous SGD on a sharded parameter server, in one process, in one screen of code.

The same pieces ps-train runs on Ray, wired together with threads instead of actors: two
`ShardState`s hold the flat weights and apply Nesterov momentum (plus a Polyak average); four
`Worker`s, each with its own model replica and data partition, pull, compute a gradient and push it
without waiting for each other. Staleness appears by itself: while one worker computes, the others
move the weights on.

    python examples/async_sgd_in_one_process.py
"""

import threading

import numpy as np
import torch

from ps_trainer.core import (FlatModel, LRSchedule, NesterovMomentum, ParamLayout, PolyakAverage,
                             ShardState)
from ps_trainer.data import Batches, load_dataset, partition
from ps_trainer.models import build
from ps_trainer.trainer.evaluate import evaluate, recompute_bn
from ps_trainer.transport import InProcessClient
from ps_trainer.worker.worker import Worker

WORKERS, SHARDS, STEPS = 4, 2, 150
torch.set_num_threads(1)
torch.manual_seed(0)
data = load_dataset("digits", seed=0)

# 1. The parameter server: the model's weights, flattened and cut into shards.
model = build("digits_cnn")
layout = ParamLayout.from_model(model)
params, buffers = layout.flatten(model)
specs = layout.shards(SHARDS)
shards = [ShardState(s.index, params[slice(*s.params)], buffers[slice(*s.buffers)],
                     optimizer=NesterovMomentum(momentum=0.9, weight_decay=5e-4),
                     schedule=LRSchedule(0.05), averager=PolyakAverage(decay=0.99))
          for s in specs]
client = InProcessClient(shards)

# 2. The workers: a model replica each, a disjoint partition of the data each.
workers = [Worker(i, FlatModel(build("digits_cnn"), layout), specs, client,
                  Batches(data.x_train[idx], data.y_train[idx], 32, seed=i))
           for i, idx in enumerate(partition(len(data.y_train), WORKERS, seed=0))]

# 3. Run them concurrently: nobody waits for anybody.
threads = [threading.Thread(target=lambda w=w: ([w.step() for _ in range(STEPS)], w.flush()))
           for w in workers]
for t in threads:
    t.start()
for t in threads:
    t.join()
rows = [r for w in workers for r in w.drain_rows()]

# 4. Evaluate the raw weights and the Polyak average on held-out digits.
for averaged in (False, True):
    snap = client.pull(averaged)
    layout.load_into(model, np.concatenate([a[:s.num_params] for (a, _), s in zip(snap, specs)]),
                     np.concatenate([a[s.num_params:] for (a, _), s in zip(snap, specs)]))
    if averaged:  # averaged weights need their own BatchNorm statistics (as swa_utils.update_bn)
        recompute_bn(model, data.x_train, 32, 20, in_channels=1, image_size=8, seed=0)
    acc = evaluate(model, data.x_test, data.y_test, in_channels=1, image_size=8)["top1"]
    print(f"{'Polyak' if averaged else 'raw':>6} weights: {100 * acc:.1f}% held-out accuracy")
print(f"{len(rows)} pushes, mean staleness {np.mean([r['staleness'] for r in rows]):.2f}, "
      f"shard versions {[s.version for s in shards]}")
