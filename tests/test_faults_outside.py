"""Fault drills from outside: a real `ps-train` run in a subprocess, and `kill -9` of one of its
processes, found by pid, at a moment the code under test does not choose.

No `--crash-*-at` flag is used here: the code does not know a fault is coming. Each drill asserts
the outcome a user relies on: exit code, the restart in summary.json, every push accounted for,
accuracy, versions that never repeat, no process left behind, and a resumable run directory.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from ps_trainer.core import checkpoint

pytestmark = pytest.mark.slow

RUN = ["--model", "digits_cnn_small", "--workers", "3", "--ps-shards", "2", "--eval-every", "5",
       "--no-progress"]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


class Run:
    """`ps-train ARGS` as a subprocess in its own session, with its processes found by name."""

    def __init__(self, run_dir: Path, *args: str):
        self.dir = run_dir
        self.log = open(run_dir.parent / f"{run_dir.name}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "ps_trainer.cli", *RUN, *args,
                                      "--run-dir", str(run_dir)], env=ENV, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.seen: set[psutil.Process] = set()

    def processes(self, title: str = "") -> list[psutil.Process]:
        found = []
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.add(p)
                try:
                    if " ".join(p.cmdline()).startswith(title):
                        found.append(p)
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        return found

    def wait_for(self, what, timeout: float = 120.0, message: str = ""):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = what()
            if value:
                return value
            assert self.proc.poll() is None, f"exited early ({self.proc.returncode}): {self.output()}"
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {message}: {self.output()}")

    def kill(self, title: str) -> int:
        """kill -9 one process whose title starts with `title` (a random one); its pid."""
        victim = random.choice(self.wait_for(lambda: self.processes(title), message=title))
        os.kill(victim.pid, signal.SIGKILL)
        return victim.pid

    def finish(self, timeout: float = 300.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()

    def output(self, tail: int = 3000) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.dir.parent / f"{self.dir.name}.log").read_text()[-tail:]

    def checkpoint_written(self, sequence: int = 1) -> bool:
        latest = self.dir / "checkpoints" / "LATEST.json"
        try:
            return json.loads(latest.read_text())["sequence"] >= sequence
        except (OSError, ValueError):
            return False


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_versions_never_repeat(run_dir: Path) -> None:
    rows = pq.read_table(run_dir / "pushes.parquet").to_pydict()
    for shard in (0, 1):
        applied = [v for sh, v, o in zip(rows["shard"], rows["version"], rows["outcome"])
                   if sh == shard and o != "rejected"]
        assert len(applied) == len(set(applied)), f"shard {shard} issued a version twice"


def assert_whole(s: dict, workers: int = 3, shards: int = 2) -> None:
    """Every push accounted for, and every worker step pushed to every shard. A worker killed
    between its pushes to two shards leaves one that reached only some of them: that step is
    done again by its replacement, so each worker restart may add up to shards - 1 pushes."""
    assert s["accounted"], s
    extra = s["pushes_sent"] - shards * s["steps"]
    assert 0 <= extra <= (shards - 1) * len(s["worker_restarts"]), s
    assert s["polyak"]["top1"] > 0.9, s["polyak"]


def test_a_shard_killed_after_a_checkpoint_comes_back_from_it(tmp_path):
    run = Run(tmp_path / "run", "--epochs", "30", "--checkpoint-every", "2")
    try:
        run.wait_for(run.checkpoint_written, message="checkpoint 1")
        time.sleep(random.uniform(0.2, 2.0))  # a moment the run does not choose
        run.kill("ray::ParameterServerShard")
        assert run.finish() == 0, run.output()
    finally:
        run.close()
    s = summary(run.dir)
    (r,) = s["shard_restarts"]
    assert r["checkpoint"] >= 1 and r["restored_version"] > 0, r
    assert r["updates_lost"] == r["top_seen"] - r["restored_version"] >= 0
    assert r["continued_at"] > r["top_seen"]
    assert_whole(s)
    assert_versions_never_repeat(run.dir)
    assert "constructor arguments in the object store" not in run.output(10**6)  # ray#53727


def test_a_shard_killed_before_the_first_checkpoint_comes_back_from_the_initial_weights(tmp_path):
    run = Run(tmp_path / "run", "--epochs", "40", "--checkpoint-every", "1000")  # ~20 s of steps
    try:
        run.wait_for(lambda: len(run.processes("ray::WorkerActor")) == 3, message="workers")
        time.sleep(random.uniform(1.0, 3.0))
        run.kill("ray::ParameterServerShard")
        assert run.finish() == 0, run.output()
    finally:
        run.close()
    s = summary(run.dir)
    (r,) = s["shard_restarts"]
    assert r["checkpoint"] == 0 and r["restored_version"] == 0, r  # checkpoint 0: the initial weights
    assert_whole(s)
    assert_versions_never_repeat(run.dir)


def test_a_worker_and_a_shard_killed_in_one_run(tmp_path):
    run = Run(tmp_path / "run", "--epochs", "30", "--checkpoint-every", "2")
    try:
        run.wait_for(run.checkpoint_written, message="checkpoint 1")
        worker = run.kill("ray::WorkerActor")
        time.sleep(random.uniform(1.0, 3.0))
        shard = run.kill("ray::ParameterServerShard")
        assert worker != shard
        assert run.finish() == 0, run.output()
    finally:
        run.close()
    s = summary(run.dir)
    assert len(s["worker_restarts"]) == 1 and len(s["shard_restarts"]) == 1, s
    assert 0 <= s["metrics_rows_lost"] < 100  # rows the dead worker had not handed over yet
    assert_whole(s)
    assert_versions_never_repeat(run.dir)


def test_the_driver_killed_leaves_readable_metrics_no_processes_and_a_resumable_run(tmp_path):
    run = Run(tmp_path / "run", "--epochs", "40", "--checkpoint-every", "2")
    try:
        run.wait_for(lambda: run.checkpoint_written(2), message="checkpoint 2")
        time.sleep(random.uniform(0.0, 1.5))
        run.processes()  # note every process of the run
        assert len(run.seen) >= 5  # Ray's own, 2 shards, 3 workers
        os.kill(run.proc.pid, signal.SIGKILL)
        run.proc.wait(10)
        deadline = time.time() + 15
        while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in run.seen) \
                and time.time() < deadline:
            time.sleep(0.2)
        left = [p for p in run.seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, [p.cmdline() for p in left]
    finally:
        run.close()
    meta = json.loads((run.dir / "checkpoints" / "LATEST.json").read_text())
    before = pq.read_table(run.dir / "pushes.parquet")  # readable after kill -9
    _, ck = checkpoint.load(str(run.dir))
    assert before.num_rows >= ck["rows"]["pushes"] > 0
    assert not (run.dir / "summary.json").exists()

    resumed = subprocess.run([sys.executable, "-m", "ps_trainer.cli", "--resume", str(run.dir),
                              "--no-progress", "--max-time", "5"], env=ENV, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    s = summary(run.dir)
    assert s["accounted"], s
    rows = pq.read_table(run.dir / "pushes.parquet").to_pydict()
    kept = ck["rows"]["pushes"]
    assert len(rows["version"]) > kept  # both parts in one table
    assert rows["version"][:kept] == before.to_pydict()["version"][:kept]
    for shard, version in zip(rows["shard"][kept:], rows["version"][kept:]):
        assert version > meta["versions"][shard]  # versions continue above the checkpoint
    assert_versions_never_repeat(run.dir)


def test_a_restarted_shard_that_cannot_read_its_checkpoint_stops_the_run_naming_the_file(tmp_path):
    run = Run(tmp_path / "run", "--epochs", "30", "--checkpoint-every", "1000")
    try:
        run.wait_for(lambda: len(run.processes("ray::WorkerActor")) == 3, message="workers")
        latest = json.loads((run.dir / "checkpoints" / "LATEST.json").read_text())
        lost = run.dir / "checkpoints" / latest["file"]
        lost.unlink()  # as if it were on another node's disk
        time.sleep(random.uniform(0.5, 2.0))
        run.kill("ray::ParameterServerShard")
        assert run.finish() == 1, run.output()
    finally:
        run.close()
    assert str(lost) in run.output(10**6)  # the message names the file
    s = summary(run.dir)
    assert s["shard_restarts"] == []  # it never went on from the initial weights
    assert json.loads((run.dir / "checkpoints" / "LATEST.json").read_text()) == latest  # kept


def test_a_shard_killed_with_no_restarts_allowed_stops_the_run_with_a_message(tmp_path):
    run = Run(tmp_path / "run", "--epochs", "30", "--checkpoint-every", "2",
              "--max-shard-failures", "0")
    try:
        run.wait_for(run.checkpoint_written, message="checkpoint 1")
        run.kill("ray::ParameterServerShard")
        assert run.finish(120) == 1, run.output()
    finally:
        run.close()
    out = run.output()
    assert "--max-shard-failures 0 allows no more restarts" in out, out
    assert "Traceback" not in out
    s = summary(run.dir)
    assert s["worker_restarts"] == [] and not s["accounted"]  # the dead shard's counts are lost
