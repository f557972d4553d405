"""A fault drill from outside: start a real `ps-train` run, `kill -9` one of its processes by pid
after some seconds, and show what the run made of it.

    python examples/fault_drill.py --kill shard --after 30 -- --workers 4 --epochs 60 --checkpoint-every 5
    python examples/fault_drill.py --kill worker shard --after 20 -- --epochs 40
    python examples/fault_drill.py --kill driver --after 20 -- --epochs 40   # then resumes it

The code under test is not told: no `--crash-*-at` flag is used. `shard` and `worker` kill a
random `ray::ParameterServerShard` / `ray::WorkerActor` process (several names: one each, a few
seconds apart); `driver` kills `ps-train` itself, checks that none of its processes is left after
15 s, and then runs `ps-train --resume` on the run directory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import psutil

TITLES = {"shard": "ray::ParameterServerShard", "worker": "ray::WorkerActor"}


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_one(driver: int, title: str) -> int:
    procs = [p for p in descendants(driver) if " ".join(p.cmdline()).startswith(title)]
    victim = random.choice(procs)
    os.kill(victim.pid, signal.SIGKILL)
    return victim.pid


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kill", nargs="+", choices=["shard", "worker", "driver"], default=["shard"])
    p.add_argument("--after", type=float, default=20.0, help="seconds into the run")
    p.add_argument("--run-dir", default=None)
    p.add_argument("args", nargs="*", help="ps-train flags (after --)")
    a = p.parse_args()
    run_dir = a.run_dir or tempfile.mkdtemp(prefix="drill-")
    cmd = [sys.executable, "-m", "ps_trainer.cli", "--no-progress", "--run-dir", run_dir, *a.args]
    print("$", " ".join(cmd[2:]), flush=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd, start_new_session=True)
    time.sleep(a.after)
    for what in a.kill:
        if what == "driver":
            seen = descendants(proc.pid)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            print(f"\n[drill] {time.time() - t0:.1f} s: kill -9 of the driver (pid {proc.pid})")
            time.sleep(15)
            left = [q.pid for q in seen if q.is_running() and q.status() != psutil.STATUS_ZOMBIE]
            print(f"[drill] processes of the run still alive 15 s later: {len(left)} of {len(seen)}")
            print(f"[drill] resuming: ps-train --resume {run_dir}", flush=True)
            proc = subprocess.Popen([sys.executable, "-m", "ps_trainer.cli", "--no-progress",
                                     "--resume", run_dir], start_new_session=True)
            break
        pid = kill_one(proc.pid, TITLES[what])
        print(f"\n[drill] {time.time() - t0:.1f} s: kill -9 of a {what} (pid {pid})", flush=True)
        time.sleep(3)
    rc = proc.wait()
    print(f"\n[drill] exit status {rc} after {time.time() - t0:.1f} s; run directory {run_dir}")
    try:
        s = json.load(open(os.path.join(run_dir, "summary.json")))
    except (OSError, ValueError):
        print("[drill] no summary.json")
        return 1
    print(json.dumps({k: s.get(k) for k in ("worker_restarts", "shard_restarts", "accounted",
                                            "pushes_sent", "outcomes", "metrics_rows_lost",
                                            "polyak", "versions")}, indent=1, default=str))
    return rc


if __name__ == "__main__":
    sys.exit(main())
