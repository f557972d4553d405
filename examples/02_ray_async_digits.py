"""The same algorithm as 01, on Ray: shards and workers are actors in their own processes.

What `ps-train` does, from Python: one `TrainConfig` (every field documented in config.py, the
same names as the flags), `train(cfg)` starts Ray locally (loopback only) or joins `address`,
starts the parameter-server shards (`ParameterServerShard` actors) and the workers (`WorkerActor`,
each the `Worker` loop of worker/worker.py on its own data partition), watches them, evaluates
the raw and the Polyak-averaged weights, and returns the summary it also writes into the run
directory (pushes.parquet has one row per push: worker, shard, version read, staleness, outcome).

    python examples/02_ray_async_digits.py [--workers 4] [--shards 2] [--epochs 40] [--policy async]
"""

import argparse
import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pyarrow.parquet as pq  # noqa: E402

from ps_trainer.config import TrainConfig  # noqa: E402
from ps_trainer.trainer.run import train  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--workers", type=int, default=4)
ap.add_argument("--shards", type=int, default=2)
ap.add_argument("--epochs", type=int, default=40, help="passes over the data, all workers together")
ap.add_argument("--policy", default="async", help="async, bounded, sync, staleness_lr or dc_asgd")
ap.add_argument("--run-dir", default="", help="where the run writes (default: runs/<model>-<time>)")
args = ap.parse_args()

cfg = TrainConfig(model="digits_cnn", dataset="digits", workers=args.workers,
                  ps_shards=args.shards, epochs=args.epochs, policy=args.policy,
                  run_dir=args.run_dir, progress=False).validate()  # the flags' checks, in one place
summary = train(cfg)  # prints the summary table at the end

# The run directory holds everything: read its push table like any Parquet file.
pushes = pq.read_table(f"{summary['run_dir']}/pushes.parquet",
                       columns=["worker", "staleness"]).to_pydict()
per_worker: dict[int, list[int]] = {}
for w, s in zip(pushes["worker"], pushes["staleness"]):
    per_worker.setdefault(w, []).append(s)
for w, s in sorted(per_worker.items()):
    print(f"worker {w}: {len(s)} pushes, mean staleness {sum(s) / len(s):.2f}")
print(f"raw {100 * summary['raw']['top1']:.1f}%, Polyak {100 * summary['polyak']['top1']:.1f}% "
      f"held-out accuracy; {summary['pushes_sent']} pushes sent, accounted: {summary['accounted']}; "
      f"{summary['train_seconds']:.1f} s of training; run directory {summary['run_dir']}")
