"""`ps-train sweep sweep.yaml`: a grid of runs, each a normal run directory, and one summary table.

    out: runs/staleness            # where the sweep lives (default: runs/sweep-<file name>)
    parallel: 2                    # cells at once (simulated cells; real runs go one at a time)
    base: {simulate: true, model: digits_cnn_small, epochs: 15}   # settings every cell shares
    grids:                         # each grid is a product of its lists; the sweep is their union
      - {workers: [1, 4, 16], policy: [async, staleness_lr], seed: [0, 1]}
      - {workers: [1, 4, 16], momentum: [0.0, 0.9], seed: [0, 1]}

Every cell is named by its values of every key any grid varies (`policy=async,workers=4,seed=0`),
so a configuration two grids share runs once. The sweep is resumable: a cell is finished when its
`summary.json` and `config.yaml` can be read and the summary is not marked interrupted; any other
cell is started again from scratch. After every cell, `sweep.parquet` is rewritten from the
finished cells' own files: one row per cell with all its settings and results (see `ROW_RESULTS`);
a cell whose files cannot be read is left out and listed. Simulated cells run in parallel
processes, one torch thread each; real runs each use the whole machine's Ray, so they run in turn.

Stopping. Ctrl-C or SIGTERM (to the main process alone, or to the whole process group) ends the
cells in flight at their next step, each writing what it has with its summary marked
interrupted; no new cell starts; sweep.parquet is written and the sweep exits 130 (`Interrupted`).
A second Ctrl-C kills the pool processes at once. One sweep at a time holds its folder
(`trainer.lock`), and a reaper (`trainer.reaper`) kills the pool processes should the main process
itself be killed, so no stray process goes on writing into the folder.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import math
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ..config import TrainConfig
from ..flags import ArgumentParser
from ..trainer import lock, reaper
from ..trainer.divergence import Diverged
from ..trainer.progress import ProgressBar

SPEC_KEYS = ("out", "parallel", "base", "grid", "grids")
ROW_RESULTS = ("raw_top1", "raw_top5", "raw_loss", "polyak_top1", "polyak_top5", "polyak_loss",
               "mean_staleness", "staleness_max", "steps", "train_seconds", "wall_seconds",
               "pushes_sent", "applied", "scaled", "compensated", "aggregated", "rejected",
               "simulated", "diverged")


@dataclasses.dataclass
class Cell:
    name: str
    settings: dict  # base + this cell's grid values

    def config(self, run_dir: Path) -> TrainConfig:
        return TrainConfig.from_dict({**self.settings, "run_dir": str(run_dir), "progress": False},
                                     source=f"cell {self.name}")


def load_spec(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"sweep file {path}: no such file")
    spec = yaml.safe_load(p.read_text()) or {}
    if not isinstance(spec, dict):
        raise ValueError(f"sweep file {path}: expected a mapping with keys {', '.join(SPEC_KEYS)}")
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise ValueError(f"sweep file {path}: unknown key(s) {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(SPEC_KEYS)}")
    grids = spec.get("grids") or ([spec["grid"]] if spec.get("grid") else [{}])
    for i, g in enumerate(grids):
        if not isinstance(g, dict) or not all(isinstance(v, list) and v for v in g.values()):
            raise ValueError(f"sweep file {path}: grid {i + 1} must map settings to non-empty lists, "
                             f"e.g. workers: [1, 4, 16]")
    spec["grids"] = grids
    spec.setdefault("base", {})
    spec.setdefault("out", str(Path("runs") / f"sweep-{p.stem}"))
    spec.setdefault("parallel", os.cpu_count() or 1)
    return spec


def expand(spec: dict) -> list[Cell]:
    """Every cell of the union of the grids, validated now (a bad value fails before any run)."""
    keys = list(dict.fromkeys(k for g in spec["grids"] for k in g))  # varied anywhere, in order
    defaults = TrainConfig().to_dict()
    cells: dict[str, Cell] = {}
    for grid in spec["grids"]:
        for values in itertools.product(*grid.values()):
            settings = {**spec["base"], **dict(zip(grid, values))}
            cfg = TrainConfig.from_dict(settings, source="sweep cell").validate()
            name = ",".join(f"{k}={_fmt(getattr(cfg, k.replace('-', '_'), defaults.get(k)))}"
                            for k in keys) or "base"
            cells.setdefault(name, Cell(name, settings))
    return list(cells.values())


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


class Interrupted(Exception):
    """The sweep was stopped by Ctrl-C or SIGTERM; the message says how far it got."""


# ---- pool processes ---------------------------------------------------------------------------
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# A pool process's own state (signal handlers are per process): the stop signals it received, and
# whether a cell is being set up (the first time in a process: seconds of imports and data).
_stop: list[int] = []
_setting_up = False


def _pool_init() -> None:
    """In each pool process: Ctrl-C and SIGTERM are noted, not raised (a KeyboardInterrupt in the
    pool's own queue code kills the process and breaks the pool), except during a cell's setup,
    which is abandoned there and then. While a simulation's event loop runs, its own handler
    (`trainer.signals`) takes the signal instead and ends the loop."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by `_Stop.spawning`


def _on_stop(signum, frame) -> None:
    _stop.append(signum)
    if _setting_up:
        raise KeyboardInterrupt  # caught in `_set_up`


def _run_cell(settings: dict, name: str, run_dir: str, stop: list | None = None) -> dict | None:
    """One cell, in a pool process (or the driver): run it, its log into run_dir/log.txt.
    A cell that diverged is a result, not a failure: its summary says so. None: a stop came
    before the cell began (the pool hands out queued cells even after the sweep was stopped)."""
    if _stop:
        return None
    try:
        return _run(settings, name, run_dir, stop)
    except Diverged as e:
        return e.summary


def _run(settings: dict, name: str, run_dir: str, stop: list | None = None) -> dict | None:
    """`stop`: the main process's noted signals, for a real (Ray) cell run there: one noted
    while the cell was being set up stops it as soon as its loop starts."""
    import torch

    torch.set_num_threads(1)
    cfg = Cell(name, settings).config(Path(run_dir))
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / "log.txt", "w") as logf:
        log = lambda s: print(s, file=logf, flush=True)  # noqa: E731
        if cfg.simulate:
            # As `simulate(cfg)` does, but in two steps, so that a stop during the setup is seen.
            with lock.hold(run_dir, "--run-dir"):
                sim = _set_up(cfg, log)
                if sim is None or _stop:  # stopped before it began: it has nothing to keep
                    return None
                summary = sim()  # a stop from here on ends its loop: it writes what it has
            if summary.get("interrupted"):  # the loop's own handler took the signal, not `_stop`'s
                _stop.append(signal.SIGINT)
            return summary
        from ..trainer import train

        return train(cfg, log=log, stop=stop)


def _set_up(cfg: TrainConfig, log):
    """The cell's `Simulation`, or None if a stop came while it was being built."""
    global _setting_up
    _setting_up = True
    try:
        from .simulate import Simulation

        return Simulation(cfg, log=log)
    except KeyboardInterrupt:
        return None
    finally:
        _setting_up = False


# ---- the sweep table ---------------------------------------------------------------------------
def row_of(cell_dir: Path) -> dict | None:
    """The sweep.parquet row of a finished cell, from its own files; None if the cell has not
    finished (not run, or stopped: no summary.json, or one marked interrupted). Raises
    `report.Unreadable` if a file it needs cannot be read."""
    from .plots import Unreadable, read

    if not (cell_dir / "summary.json").exists():
        return None
    s = read(cell_dir / "summary.json")
    if s.get("interrupted"):
        return None
    cfg = read(cell_dir / "config.yaml")
    try:
        outcomes = s.get("outcomes", {})
        raw_loss = s["raw"]["loss"]
        classes = s.get("num_classes", 10)
        # run_dir relative to the sweep directory, so a sweep can be moved or copied whole (after
        # the config's own absolute run_dir, which it replaces).
        return {"cell": cell_dir.name, **cfg, "run_dir": f"cells/{cell_dir.name}",
                "raw_top1": s["raw"]["top1"], "raw_top5": s["raw"]["top5"], "raw_loss": raw_loss,
                "polyak_top1": s["polyak"]["top1"], "polyak_top5": s["polyak"]["top5"],
                "polyak_loss": s["polyak"]["loss"], "mean_staleness": s["mean_staleness"],
                # not `max_staleness`: that name is drop_stale's setting, a column of its own here
                "staleness_max": s["max_staleness"], "steps": s["steps"],
                "train_seconds": s["train_seconds"], "wall_seconds": s.get("wall_seconds", s["train_seconds"]),
                "pushes_sent": s["pushes_sent"],
                **{k: int(outcomes.get(k, 0)) for k in ("applied", "scaled", "compensated", "aggregated", "rejected")},
                "simulated": bool(s.get("simulated", False)),
                # Diverged: the loss blew up, or the model is no better than twice chance.
                "diverged": not math.isfinite(raw_loss) or s["raw"]["top1"] <= 2.0 / classes}
    except (KeyError, TypeError, ValueError) as e:
        raise Unreadable(cell_dir / "summary.json", f"unreadable (no {e})") from None


def finished(run_dir: Path) -> bool:
    """Whether a cell is done: a rerun skips it. A cell that cannot be read is not: it runs again."""
    from .plots import Unreadable

    try:
        return row_of(run_dir) is not None
    except Unreadable:
        return False


def write_table(out: Path, cells: list[Cell]) -> tuple[int, list[str]]:
    """Rewrite sweep.parquet from the finished cells' own files. Returns (cells in it, the cells
    left out because a file of theirs cannot be read, as `cell: file: why`)."""
    from .plots import Unreadable

    rows, unreadable = [], []
    for c in cells:
        try:
            row = row_of(out / "cells" / c.name)
        except Unreadable as e:
            unreadable.append(f"{c.name}: {e.path.name}: {e.why}")
            continue
        if row is not None:
            rows.append(row)
    path = out / "sweep.parquet"
    if rows:
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, path)  # atomic: a reader never sees half a table
    return len(rows), unreadable


# ---- stopping ---------------------------------------------------------------------------------
class _Stop:
    """Ctrl-C and SIGTERM in the sweep's main process while the sweep runs (truthy once one came).

    The first is noted and passed on to the pool processes (Ctrl-C in a terminal reaches the whole
    process group, but `kill` only this process): their cells end at the next step and write what
    they have. The second kills the pool processes and exits 130 at once."""

    def __init__(self):
        self.signals: list[int] = []
        self.pool: cf.ProcessPoolExecutor | None = None
        self._previous: dict = {}

    def __enter__(self) -> "_Stop":
        if threading.current_thread() is threading.main_thread():  # the only place handlers go
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __bool__(self) -> bool:
        return bool(self.signals)

    def _handle(self, signum, frame) -> None:
        self.signals.append(signum)
        if len(self.signals) == 1:
            self.tell_pool(signal.SIGINT)
            return
        self.tell_pool(signal.SIGKILL)
        # os.write, not print: this handler may interrupt a print (a reentrant call would raise)
        os.write(2, b"\nps-train sweep: stopped at once; the cells in flight were killed "
                    b"and will run again on a rerun\n")
        os._exit(130)

    def tell_pool(self, sig: int) -> None:
        """Send `sig` to every pool process (its pids: the executor has no public list)."""
        for pid in list(getattr(self.pool, "_processes", None) or {}):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass  # already exited

    @contextmanager
    def spawning(self):
        """Around starting pool processes: they inherit the blocked stop signals, and so cannot
        die of a Ctrl-C before `_pool_init` installs their handler and unblocks them. Here a
        signal waits until the block ends, then reaches `_handle`: none is lost."""
        if not self._previous:
            yield
            return
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


# ---- running ----------------------------------------------------------------------------------
def run_sweep(spec_path: str | Path, out: str | Path | None = None, parallel: int | None = None,
              log=print, progress: bool = True) -> Path:
    """Run (or resume) the sweep; returns its directory, holding sweep.parquet and the cells.
    Raises `Interrupted` if Ctrl-C or SIGTERM stopped it, ValueError if another process is
    running a sweep in the same folder."""
    spec = load_spec(spec_path)
    cells = expand(spec)
    out = Path(out or spec["out"])
    parallel = max(1, int(parallel or spec["parallel"]))
    with lock.hold(out, "ps-train sweep"), _Stop() as stop:
        reaper.watch()  # if this process is killed outright, its pool processes die with it
        (out / "cells").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(spec_path, out / "sweep.yaml")
        todo = [c for c in cells if not finished(out / "cells" / c.name)]
        for c in todo:  # a cell interrupted mid-run starts again from scratch
            shutil.rmtree(out / "cells" / c.name, ignore_errors=True)
        log(f"sweep {out}: {len(cells)} cells, {len(cells) - len(todo)} already finished, "
            f"{len(todo)} to run")
        bar = ProgressBar(len(cells), enabled=progress)
        done = len(cells) - len(todo)
        t0 = time.time()
        simulated = [c for c in todo if c.config(out).simulate]
        real = [c for c in todo if c not in simulated]

        def finish(cell: Cell, summary: dict) -> None:
            nonlocal done
            done += 1
            write_table(out, cells)
            bar.update(done, cell=cell.name, top1=f"{100 * summary['raw']['top1']:.1f}%")

        failures: list[str] = []
        if simulated and not stop:
            _run_pool(out, simulated, min(parallel, len(simulated)), stop, finish, failures, log)
        for c in real:
            if stop:
                break
            try:
                summary = _run_cell(c.settings, c.name, str(out / "cells" / c.name), stop.signals)
            except Exception as e:  # noqa: BLE001
                failures.append(f"{c.name}: {e}")
                continue
            if summary.get("interrupted"):  # it stopped on a signal, noted in stop.signals
                if not stop:
                    stop.signals.append(signal.SIGINT)
            else:
                finish(c, summary)
        bar.close()
        written, unreadable = write_table(out, cells)
        if unreadable:
            log("left out of sweep.parquet, a file cannot be read (a rerun runs them again): "
                + "; ".join(unreadable))
        if stop:
            raise Interrupted(f"interrupted: {written} of {len(cells)} cells finished (in "
                              f"{out / 'sweep.parquet'}); `ps-train sweep {spec_path} --out {out}` "
                              f"runs the other {len(cells) - written}")
        log(f"sweep finished in {time.time() - t0:.0f} s: {out / 'sweep.parquet'}")
        if failures:
            raise RuntimeError(f"{len(failures)} cell(s) failed (rerun to retry them): " + "; ".join(failures))
        return out


def _run_pool(out: Path, cells: list[Cell], processes: int, stop: _Stop, finish, failures: list,
              log) -> None:
    """The simulated cells, `processes` at a time; returns once none runs and the pool is gone."""
    # spawn: a clean interpreter per pool process, whatever the driver has imported
    pool = cf.ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn"),
                                  initializer=_pool_init)
    stop.pool = pool
    pending: dict[cf.Future, Cell] = {}
    try:
        with stop.spawning():  # pool processes start at the first submits
            pending = {pool.submit(_run_cell, c.settings, c.name, str(out / "cells" / c.name)): c
                       for c in cells}
        told = False
        while pending:
            if stop and not told:
                told = True
                for f in pending:
                    f.cancel()  # those not handed to a pool process yet never start
                log("\nstopping: the cells in flight write what they have; Ctrl-C again kills them")
            # A timeout, so that a stop is seen even while no cell ends.
            done, _ = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
            for f in done:
                cell = pending.pop(f)
                if f.cancelled():
                    continue
                try:
                    summary = f.result()
                except BrokenProcessPool as e:
                    # A pool process died (killed, out of memory): the others are in an unknown
                    # state and the executor would wait for them forever. Their cells run again.
                    stop.tell_pool(signal.SIGKILL)
                    if not stop:
                        failures.append(f"{cell.name}: {e}")
                    continue
                except Exception as e:  # noqa: BLE001 - one bad cell must not lose the others
                    failures.append(f"{cell.name}: {e}")
                    continue
                if summary is not None and not summary.get("interrupted"):
                    finish(cell, summary)
    finally:
        if pending:  # leaving early (an error here): stop the cells rather than wait for them
            stop.tell_pool(signal.SIGINT)
        pool.shutdown(wait=True, cancel_futures=True)
        stop.pool = None


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="ps-train sweep", description="Run (or resume) a grid of runs "
                                "described by a YAML file, then write its report.")
    p.add_argument("spec", help="sweep YAML file (see examples/03_staleness_sweep.yaml)")
    p.add_argument("--out", default=None, help="sweep directory (default: the file's `out`)")
    p.add_argument("--parallel", type=int, default=None, help="cells at once (default: the file's "
                   "`parallel`, else the number of CPUs)")
    p.add_argument("--no-report", action="store_true", help="skip writing the report")
    args = p.parse_args(argv)
    try:
        out = run_sweep(args.spec, args.out, args.parallel)
    except Interrupted as e:
        print(f"ps-train sweep: {e}", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a Ctrl-C
    if not args.no_report:
        from .report import report

        print(f"report: {report(out)}")
    return 0
