"""The benchmark suite (issue 15): ps-trainer against what a user would otherwise run, each
measured against its baseline in the same run, in the issue's order.

| # | what | script | baseline (same run) | target |
| - | --- | --- | --- | --- |
| 1 | server capacity | bench_server_capacity.py | raw object store; the Ray docs' parameter server | >= 5x the docs' at K=4; >= 75% of the raw rate at K=4 and 16, the printed ceiling at K=1 |
| 2 | worker pull path | bench_pull_path.py | `ray.get` of the same arrays + one memcpy | <= 1.5x |
| 3 | framework overhead | bench_worker.py | a plain PyTorch loop | >= 90% |
| 4 | synchronous baseline | bench_ddp.py | torch.distributed DDP (gloo) | <= 1.2x DDP's time; ahead with a straggler or a kill |
| 5 | update rule | bench_shard_update.py | one memcpy of the same bytes | <= 2.5x; DC-ASGD <= 2x the plain push |
| 6 | gRPC against Ray | bench_grpc.py | Ray's object store: one node, and two nodes (a worker on another machine) | <= 2x |
| 7 | scaling curve | bench_scaling.py | (a model fed by measured costs) | shards needed at 16 and 64 GPUs |

Each script prints its table and writes its own section of docs/benchmarks.md (bench_grpc.py:
docs/grpc.md). The scripts run one after another, never side by side: on a small machine two
benchmarks at once measure each other. `--smoke` runs each in its tiny mode (seconds, nothing
written): what `tests/test_bench_suite.py` runs so no script rots.

    python benchmarks/suite.py [--smoke] [--only 1 3 ...] [--list]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (item, what, script): the numbering, which the docs and the README cite.
ITEMS = [
    (1, "server capacity", "bench_server_capacity.py"),
    (2, "worker pull path", "bench_pull_path.py"),
    (3, "framework overhead", "bench_worker.py"),
    (4, "synchronous baseline (DDP)", "bench_ddp.py"),
    (5, "update rule", "bench_shard_update.py"),
    (6, "gRPC against Ray", "bench_grpc.py"),
    (7, "scaling curve", "bench_scaling.py"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="each script's tiny mode; nothing written")
    ap.add_argument("--only", type=int, nargs="+", metavar="N", help="run only these items")
    ap.add_argument("--list", action="store_true", help="list the items and exit")
    a = ap.parse_args(argv)
    known = {n for n, _, _ in ITEMS}
    if a.only and not set(a.only) <= known:
        ap.error(f"--only {' '.join(map(str, a.only))}: items are {min(known)}..{max(known)}")
    items = [it for it in ITEMS if not a.only or it[0] in a.only]
    if a.list:
        for n, what, script in items:
            print(f"{n}. {what}: benchmarks/{script}")
        return 0
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0")}
    rows = []
    for n, what, script in items:
        cmd = [sys.executable, str(HERE / script)] + (["--smoke"] if a.smoke else [])
        print(f"\n=== {n}. {what}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, env=env)  # output streams through: these take minutes
        rows.append((n, what, script, rc, time.perf_counter() - t0))
    print("\n| # | benchmark | script | result | time, s |\n| - | --- | --- | --- | ---: |")
    for n, what, script, rc, s in rows:
        print(f"| {n} | {what} | {script} | {'ok' if rc == 0 else f'FAILED (exit {rc})'} | {s:.0f} |")
    return 0 if all(rc == 0 for *_, rc, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
