"""Workers outside Ray: the parameter server over gRPC (protos/ps_trainer/v1/parameter_server.proto).

A worker on a laptop, a machine outside the cluster or a process in another language reaches the
shards through four calls: GetLayout (the model and the shard plan), Pull (a shard's weights,
streamed in 1 MiB chunks), Push (a gradient, the same) and RetireWorker. `GrpcClient` makes them,
with the same methods as the in-process and Ray clients, so the `Worker` loop is unchanged.

With no `--ps`, this script first starts a parameter server in its own process here
(`ps-train serve`: digits_cnn, 2 shards, on 127.0.0.1 and a free port), then two workers join it
as threads of this process. With `--ps grpc://HOST:PORT` they join a server that already runs
(e.g. `ps-train serve --model digits_cnn --port 50051`, or a Ray run started with
`--serve-grpc 50051`).

    python examples/04_grpc_worker.py [--ps grpc://127.0.0.1:50051] [--steps 200]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ps_trainer.core import FlatModel, ParamLayout
from ps_trainer.data import Batches, load_dataset, partition
from ps_trainer.models import build
from ps_trainer.trainer.evaluate import evaluate
from ps_trainer.transport.grpc_client import GrpcClient
from ps_trainer.worker.worker import Worker

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--ps", default="", help="grpc://HOST:PORT of a running server (default: start one)")
ap.add_argument("--workers", type=int, default=2)
ap.add_argument("--steps", type=int, default=200, help="steps per worker")
args = ap.parse_args()
torch.set_num_threads(1)

server = None  # the server process this script started, if any
if not args.ps:  # 1. A standalone parameter server, in its own process (what `ps-train serve` is)
    run_dir = tempfile.mkdtemp(prefix="ps-serve-")
    server = subprocess.Popen(
        [sys.executable, "-m", "ps_trainer.cli", "serve", "--model", "digits_cnn", "--ps-shards",
         "2", "--port", "0", "--workers", str(args.workers), "--run-dir", run_dir,
         "--progress", "false"], stdout=subprocess.DEVNULL, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    info = Path(run_dir, "server.json")  # it writes its port there once it listens
    while server.poll() is None:
        try:
            args.ps = f"grpc://127.0.0.1:{json.loads(info.read_text())['port']}"
            break
        except (OSError, ValueError):  # not there yet, or half written
            time.sleep(0.2)
    else:
        sys.exit(f"ps-train serve exited with {server.returncode}")
print(f"parameter server at {args.ps}")

# 2. What the server holds: the model's name and its shard plan; we build the same model here.
with GrpcClient(args.ps) as probe:
    layout = probe.server_layout
print(f"it holds {layout.info.model} in {len(layout.shards)} shards, policy {layout.info.policy}")
data = load_dataset("digits", seed=0)
parts = partition(len(data.y_train), args.workers, seed=0)


def work(k: int) -> None:
    """One worker: its own client and id, the same `Worker` loop as on Ray."""
    model = build(layout.info.model, num_classes=layout.info.num_classes,
                  in_channels=layout.info.in_channels)
    client = GrpcClient(args.ps, fingerprint=ParamLayout.from_model(model).fingerprint())
    wid, clock = client.register()  # a new id from the server (clock: its pushes so far)
    idx = parts[wid % args.workers]
    w = Worker(wid, FlatModel(model), layout.specs(), client,
               Batches(data.x_train[idx], data.y_train[idx], 32, seed=wid), clock=clock)
    for step in range(args.steps):
        w.step()
        if step % 50 == 0 or step == args.steps - 1:
            rows = w.drain_rows()
            print(f"worker {wid} step {step}: loss {w.last_loss:.3f}, staleness of its last "
                  f"pushes {[r['staleness'] for r in rows[-4:]]}", flush=True)
    w.flush()
    client.retire(wid)
    client.close()


threads = [threading.Thread(target=work, args=(k,)) for k in range(args.workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()

# 3. The server's counters, and its averaged weights evaluated here.
with GrpcClient(args.ps) as client:
    stats = client.stats()
    snap = client.pull(averaged=True)
specs = layout.specs()
model = build(layout.info.model, num_classes=layout.info.num_classes,
              in_channels=layout.info.in_channels)
ParamLayout.from_model(model).load_into(
    model, np.concatenate([a[:s.num_params] for (a, _), s in zip(snap, specs)]),
    np.concatenate([a[s.num_params:] for (a, _), s in zip(snap, specs)]))
acc = evaluate(model, data.x_test, data.y_test, in_channels=1, image_size=8)["top1"]
for s in stats["shards"]:
    print(f"shard {s['shard']}: version {s['version']}, {s['pushes']} pushes {s['counters']}, "
          f"mean staleness {s['mean_staleness']:.2f}")
print(f"Polyak weights (BatchNorm statistics as pushed): {100 * acc:.1f}% held-out accuracy")
if server is not None:
    try:
        server.wait(timeout=120)  # it ends once every worker it expects has joined and retired
    finally:
        server.kill()  # (a no-op once it ended)
