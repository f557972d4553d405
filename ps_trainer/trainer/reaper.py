"""Nothing a run or a sweep started outlives it: a watchdog process that reaps orphans.

A driver killed with `kill -9` runs no cleanup. Ray's local node takes most of its processes down
with the driver, but not all (its dashboard and runtime-env agents were seen to live on), and a
sweep's pool processes would go on writing into the sweep folder. So `watch()` starts one small
process, in its own session (Ctrl-C in the terminal does not reach it), that every half second
notes every descendant of the driver. Once the driver is gone it kills, with SIGKILL, every noted
process that is still alive (the same pid *and* start time, so a reused pid is never hit), then
exits. A driver that ends normally has already stopped its actors; the reaper then only mops up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

_started: dict[int, subprocess.Popen] = {}  # driver pid -> its reaper


def watch() -> None:
    """Start this process's reaper (once per process; a no-op where it is already running)."""
    me = os.getpid()
    if me in _started and _started[me].poll() is None:
        return
    # Run as a plain script, not `-m`: importing the package would import torch (seconds).
    _started[me] = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(me)],
                                    start_new_session=True, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def reap(driver: int, period: float = 0.5) -> int:
    """Watch `driver` until it exits, then kill what it left behind; returns how many."""
    me = os.getpid()
    noted: dict[int, float] = {}
    try:
        parent = psutil.Process(driver)
        while parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE:
            for child in parent.children(recursive=True):
                if child.pid != me:
                    try:
                        noted.setdefault(child.pid, child.create_time())
                    except psutil.Error:
                        pass
            time.sleep(period)
    except psutil.Error:
        pass  # the driver is gone
    killed = 0
    for pid, started in noted.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == started:
                p.kill()
                killed += 1
        except psutil.Error:
            pass  # already gone
    return killed


if __name__ == "__main__":
    reap(int(sys.argv[1]))
