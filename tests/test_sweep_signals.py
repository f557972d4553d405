"""`ps-train sweep` stopped from outside, the ways a user stops it: Ctrl-C (SIGINT to its process
group), `kill` (SIGTERM to the main process only), a second Ctrl-C, `kill -9`; and a second sweep
started on a folder the first still holds.

Each test runs the real command in its own session and notes every process it starts (pool
processes, the reaper, multiprocessing's resource tracker) while it runs, so that "no process of
the sweep outlives it" is checked on the processes themselves. Every wait is bounded, and whatever
a test started is killed in a finally.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from ps_trainer.harness.sweep import finished
from ps_trainer.trainer import lock

CELLS = 3  # two run at once (parallel: 2), so one waits: a stopped sweep must not start it
# ~3 s of simulation per cell on one core: long enough to be stopped mid-run, short enough to
# rerun. A checkpoint every 100 of its ~1100 steps shows from outside that its loop is running.
SPEC = {"parallel": 2,
        "base": {"simulate": True, "model": "digits_cnn_small", "epochs": 25, "sim_evals": 3,
                 "checkpoint_steps": 100},
        "grids": [{"workers": [2], "seed": list(range(CELLS))}]}
STOPPED_WITHIN = 10.0  # s from the signal to the main process's exit
GONE_WITHIN = 5.0  # s from the main process's exit to the last of its processes'
RUN_WITHIN = 180.0  # s for a whole sweep, however loaded the machine


class SweepProcess:
    """`ps-train sweep SPEC --out DIR --no-report` in a session of its own, its output in files."""

    def __init__(self, tmp_path: Path, name: str = "run", spec: dict = SPEC):
        self.spec, self.out = tmp_path / "spec.yaml", tmp_path / "sweep"
        self.spec.write_text(yaml.safe_dump(spec))
        self.stdout, self.stderr = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ps_trainer.cli", "sweep", str(self.spec), "--out",
                 str(self.out), "--no-report"], stdout=out, stderr=err, start_new_session=True,
                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        self.seen: dict[int, float] = {}  # pid -> create time, of every descendant noted

    def note(self) -> None:
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                try:
                    self.seen.setdefault(p.pid, p.create_time())
                except psutil.Error:
                    pass
        except psutil.Error:
            pass

    def until(self, ready, timeout: float = 90.0) -> None:
        """Poll (noting processes) until `ready()`; fails if the sweep ended or time ran out."""
        deadline = time.time() + timeout
        while not ready():
            self.note()
            assert self.proc.poll() is None, f"the sweep ended first:\n{self.err()}"
            assert time.time() < deadline, f"timed out waiting:\n{self.err()}"
            time.sleep(0.1)
        self.note()

    def cell_running(self) -> bool:
        """A cell's simulation loop is running: it has written a checkpoint."""
        return any(self.out.glob("cells/*/checkpoints/LATEST.json"))

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def err(self) -> str:
        return self.stderr.read_text()

    def alive(self) -> list[str]:
        """The noted processes still running (same pid and start time), as command lines."""
        left = []
        for pid, started in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{pid}: {_cmdline(pid)[:120]}")
            except psutil.Error:
                pass
        return left

    def gone_within(self, seconds: float) -> float:
        """Seconds until every noted process has exited; fails naming those left."""
        t0 = time.time()
        while self.alive() and time.time() - t0 < seconds:
            time.sleep(0.1)
        assert not self.alive(), f"still running {seconds} s after the sweep: {self.alive()}"
        return time.time() - t0

    def kill(self) -> None:
        """Leave nothing behind, whatever the test did."""
        for pid, started in [(self.proc.pid, None), *self.seen.items()]:
            try:
                p = psutil.Process(pid)
                if started is None or p.create_time() == started:
                    p.kill()
            except psutil.Error:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def _cells(out: Path) -> dict[str, str]:
    """cell -> finished | interrupted (summary marked so) | no summary."""
    state = {}
    for d in sorted(out.glob("cells/*")):
        s = d / "summary.json"
        state[d.name] = ("finished" if finished(d) else
                         "interrupted" if s.is_file() and json.loads(s.read_text())["interrupted"]
                         else "no summary")
    return state


def _rerun_completes(tmp_path: Path, stopped: dict[str, str]) -> None:
    """A rerun skips the finished cells, runs the others and ends with every cell in sweep.parquet."""
    rerun = SweepProcess(tmp_path, "rerun")
    try:
        assert rerun.wait(RUN_WITHIN) == 0, rerun.err()
        done = sum(v == "finished" for v in stopped.values())
        assert f"{CELLS} cells, {done} already finished, {CELLS - done} to run" in \
            rerun.stdout.read_text()
        assert set(_cells(rerun.out).values()) == {"finished"} and len(_cells(rerun.out)) == CELLS
        table = pq.read_table(rerun.out / "sweep.parquet").to_pydict()
        assert sorted(table["cell"]) == sorted(_cells(rerun.out))  # one row per cell
        assert sorted(table["seed"]) == list(range(CELLS))
    finally:
        rerun.kill()


@pytest.mark.parametrize("how", [
    # SIGINT to the whole process group, as a terminal sends it (27 s: slow set; the default
    # run keeps `test_a_second_ctrl_c_stops_at_once`)
    pytest.param("ctrl-c", marks=pytest.mark.slow),
    pytest.param("sigterm", marks=pytest.mark.slow),  # `kill PID`: the main process alone
])
def test_a_stopped_sweep_exits_130_leaves_no_process_and_resumes(tmp_path, how):
    sweep = SweepProcess(tmp_path)
    try:
        sweep.until(sweep.cell_running)
        t0 = time.time()
        if how == "ctrl-c":
            os.killpg(sweep.proc.pid, signal.SIGINT)
        else:
            os.kill(sweep.proc.pid, signal.SIGTERM)
        rc = sweep.wait(60)
        stopped_in = time.time() - t0
        gone_in = sweep.gone_within(GONE_WITHIN)
        print(f"{how}: exit {rc} after {stopped_in:.1f} s; its {len(sweep.seen)} processes gone "
              f"{gone_in:.1f} s later")
        assert rc == 130, sweep.err()
        assert stopped_in < STOPPED_WITHIN

        # One line says how far it got and how to resume; the cells in flight are not finished,
        # and the waiting cell never started.
        last = sweep.err().strip().splitlines()[-1]
        m = re.fullmatch(rf"ps-train sweep: interrupted: (\d) of {CELLS} cells finished .*"
                         rf"`ps-train sweep {sweep.spec} --out {sweep.out}` runs the other (\d)", last)
        assert m, last
        state = _cells(sweep.out)
        assert 1 <= len(state) <= 2, state  # those running when it was stopped, no other
        assert "interrupted" in state.values(), state  # the one whose loop ran: not finished
        assert int(m[1]) == sum(v == "finished" for v in state.values()) == 0, state
        assert lock.holder(sweep.out) is None  # the folder is free again

        _rerun_completes(tmp_path, state)
    finally:
        sweep.kill()


@pytest.mark.slow
def test_a_killed_sweep_leaves_no_process_and_resumes(tmp_path):
    """`kill -9` runs no cleanup: the reaper is what takes the pool processes down."""
    sweep = SweepProcess(tmp_path)
    try:
        sweep.until(sweep.cell_running)
        pool = [pid for pid in sweep.seen if "spawn_main" in _cmdline(pid)]
        assert len(pool) == 2  # the pool processes were running
        os.kill(sweep.proc.pid, signal.SIGKILL)
        assert sweep.wait(10) == -signal.SIGKILL
        gone_in = sweep.gone_within(GONE_WITHIN)
        print(f"kill -9: its {len(sweep.seen)} processes gone {gone_in:.1f} s later")
        state = _cells(sweep.out)
        assert "finished" not in state.values(), state
        _rerun_completes(tmp_path, state)
    finally:
        sweep.kill()


@pytest.mark.slow  # 9-13 s: moved to the slow set to keep the default run under 10 min
def test_a_second_ctrl_c_stops_at_once(tmp_path):
    sweep = SweepProcess(tmp_path)
    try:
        sweep.until(sweep.cell_running)
        os.killpg(sweep.proc.pid, signal.SIGINT)
        time.sleep(0.2)
        t0 = time.time()
        os.killpg(sweep.proc.pid, signal.SIGINT)
        assert sweep.wait(30) == 130, sweep.err()
        stopped_in = time.time() - t0
        gone_in = sweep.gone_within(GONE_WITHIN)
        print(f"second Ctrl-C: exit 130 after {stopped_in:.1f} s; processes gone {gone_in:.1f} s later")
        assert stopped_in < 3.0
        assert "stopped at once" in sweep.err()
        assert "finished" not in _cells(sweep.out).values()
    finally:
        sweep.kill()


@pytest.mark.slow  # 9-13 s: moved to the slow set to keep the default run under 10 min
def test_a_second_sweep_on_a_held_folder_is_refused(tmp_path):
    first = SweepProcess(tmp_path, "first")
    try:
        first.until(lambda: lock.holder(first.out) == first.proc.pid)
        second = subprocess.run(
            [sys.executable, "-m", "ps_trainer.cli", "sweep", str(first.spec), "--out",
             str(first.out), "--no-report"], capture_output=True, text=True, timeout=120,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        assert second.returncode == 2, second.stderr
        assert second.stderr.startswith("ps-train sweep: error: ")
        assert str(first.out) in second.stderr and f"pid {first.proc.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.proc.poll() is None  # the first goes on, untouched
        os.killpg(first.proc.pid, signal.SIGINT)
        assert first.wait(60) == 130
    finally:
        first.kill()


@pytest.mark.slow
def test_ctrl_c_while_a_real_cell_sets_up_stops_that_cell_when_its_loop_starts(tmp_path):
    """A real (Ray) cell runs in the main process; a Ctrl-C that lands while it starts Ray and
    its actors is noted by the sweep and handed to the run, which stops as soon as its loop
    starts instead of training to the end (200 epochs: minutes)."""
    spec = {"base": {"model": "digits_cnn_small", "workers": 2, "epochs": 200, "eval_every": 5},
            "grids": [{"seed": [0, 1]}]}
    sweep = SweepProcess(tmp_path, spec=spec)
    try:
        sweep.until(lambda: any(sweep.out.glob("cells/*/log.txt")))  # the first cell began
        os.killpg(sweep.proc.pid, signal.SIGINT)
        t0 = time.time()
        assert sweep.wait(60) == 130, sweep.err()
        stopped = time.time() - t0
        sweep.gone_within(GONE_WITHIN)
        cells = list(sweep.out.glob("cells/*"))
        assert len(cells) == 1 and not finished(cells[0])  # the second never started
        assert stopped < 40, stopped
    finally:
        sweep.kill()
