"""`ps-train sweep sweep.yaml`: a grid of runs, each a normal run directory, and one summary table.

    out: runs/staleness            # where the sweep lives (default: runs/sweep-<file name>)
    parallel: 2                    # cells at once (simulated cells; real runs go one at a time)
    base: {simulate: true, model: digits_cnn_small, epochs: 15}   # settings every cell shares
    grids:                         # each grid is a product of its lists; the sweep is their union
      - {workers: [1, 4, 16], policy: [async, staleness_lr], seed: [0, 1]}
      - {workers: [1, 4, 16], momentum: [0.0, 0.9], seed: [0, 1]}

Every cell is named by its values of every key any grid varies (`policy=async,workers=4,seed=0`),
so a configuration two grids share runs once. The sweep is resumable: a cell whose run directory
has a `summary.json` is finished and skipped; a half-written one is started again. After every
cell, `sweep.parquet` is rewritten from the finished cells' own files: one row per cell with all
its settings and results (see `ROW_RESULTS`). Simulated cells run in parallel processes, one torch
thread each; real runs each use the whole machine's Ray, so they run in turn.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import itertools
import json
import math
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ..config import TrainConfig
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


def _run_cell(settings: dict, name: str, run_dir: str) -> dict:
    """One cell, in a pool process (or the driver): run it, its log into run_dir/log.txt.
    A cell that diverged is a result, not a failure: its summary says so."""
    try:
        return _run(settings, name, run_dir)
    except Diverged as e:
        return e.summary


def _run(settings: dict, name: str, run_dir: str) -> dict:
    import torch

    torch.set_num_threads(1)
    cfg = Cell(name, settings).config(Path(run_dir))
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / "log.txt", "w") as logf:
        log = lambda s: print(s, file=logf, flush=True)  # noqa: E731
        if cfg.simulate:
            from .simulate import simulate

            return simulate(cfg, log=log)
        from ..trainer import train

        return train(cfg, log=log)


def finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file()


def row_of(cell_dir: Path) -> dict:
    """The sweep.parquet row of a finished cell, from its own files."""
    cfg = yaml.safe_load((cell_dir / "config.yaml").read_text())
    s = json.loads((cell_dir / "summary.json").read_text())
    outcomes = s.get("outcomes", {})
    raw_loss = s["raw"]["loss"]
    classes = s.get("num_classes", 10)
    # run_dir relative to the sweep directory, so a sweep can be moved or copied whole.
    return {"cell": cell_dir.name, "run_dir": f"cells/{cell_dir.name}", **cfg,
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


def write_table(out: Path, cells: list[Cell]) -> Path:
    rows = [row_of(out / "cells" / c.name) for c in cells if finished(out / "cells" / c.name)]
    path = out / "sweep.parquet"
    if rows:
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, path)  # atomic: a reader never sees half a table
    return path


def run_sweep(spec_path: str | Path, out: str | Path | None = None, parallel: int | None = None,
              log=print, progress: bool = True) -> Path:
    """Run (or resume) the sweep; returns its directory, holding sweep.parquet and the cells."""
    spec = load_spec(spec_path)
    cells = expand(spec)
    out = Path(out or spec["out"])
    parallel = max(1, int(parallel or spec["parallel"]))
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

    failures = []
    if simulated:
        # spawn: a clean interpreter per pool process, whatever the driver has imported
        with cf.ProcessPoolExecutor(min(parallel, len(simulated)),
                                    mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_run_cell, c.settings, c.name, str(out / "cells" / c.name)): c
                       for c in simulated}
            for f in cf.as_completed(futures):
                try:
                    finish(futures[f], f.result())
                except Exception as e:  # noqa: BLE001 - one bad cell must not lose the others
                    failures.append(f"{futures[f].name}: {e}")
    for c in real:
        try:
            finish(c, _run_cell(c.settings, c.name, str(out / "cells" / c.name)))
        except Exception as e:  # noqa: BLE001
            failures.append(f"{c.name}: {e}")
    bar.close()
    write_table(out, cells)
    log(f"sweep finished in {time.time() - t0:.0f} s: {out / 'sweep.parquet'}")
    if failures:
        raise RuntimeError(f"{len(failures)} cell(s) failed (rerun to retry them): " + "; ".join(failures))
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ps-train sweep", description="Run (or resume) a grid of runs "
                                "described by a YAML file, then write its report.")
    p.add_argument("spec", help="sweep YAML file (see examples/staleness_sweep.yaml)")
    p.add_argument("--out", default=None, help="sweep directory (default: the file's `out`)")
    p.add_argument("--parallel", type=int, default=None, help="cells at once (default: the file's "
                   "`parallel`, else the number of CPUs)")
    p.add_argument("--no-report", action="store_true", help="skip writing the report")
    args = p.parse_args(argv)
    out = run_sweep(args.spec, args.out, args.parallel)
    if not args.no_report:
        from .report import report

        print(f"report: {report(out)}")
    return 0
