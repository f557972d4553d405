"""What both reports draw with: reading a run's files (a damaged one is listed, never a
traceback), the list of files that could not be read, and the small plotting and formatting
helpers of the run report (`report.py`) and the sweep report (`report_sweep.py`).

Only numpy, pyarrow (the run tables through `trainer.metrics.read_table`), yaml and matplotlib
(Agg: no display) are used; nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on a headless machine and under pytest
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import yaml  # noqa: E402

from ..trainer.metrics import read_table  # noqa: E402


MARKER = "<!-- ps-train report -->"
DPI = 110
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
         "figure.titlesize": 13, "axes.grid": True, "grid.alpha": 0.3}
# Any of these makes a folder a run directory; whichever are missing or unreadable are listed.
RUN_FILES = ("summary.json", "config.yaml", "evals.parquet", "pushes.parquet")
SWEEP_FILES = ("sweep.parquet",)
# Result columns of sweep.parquet (harness/sweep.py writes them): never settings.
RESULTS = {"raw_top1", "raw_top5", "raw_loss", "polyak_top1", "polyak_top5", "polyak_loss",
           "mean_staleness", "staleness_max", "steps", "train_seconds", "wall_seconds",
           "pushes_sent", "applied", "scaled", "compensated", "aggregated", "rejected",
           "simulated", "diverged", "cell", "run_dir", "progress"}
EVAL_COLUMNS = ["step", "elapsed", "weights", "top1"]  # the plots need them: a table without is unreadable
PUSH_COLUMNS = ["time", "worker", "step", "staleness", "loss"]
CHANCE = 0.2  # raw top-1 at or below this (10 classes: 0.1) counts as diverged


# ---- reading ----------------------------------------------------------------------------------
class Unreadable(ValueError):
    """A file of a run that is missing, cut short by a killed writer, or not what its name says."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = Path(path), why


def read(path: Path, columns=None):
    """One file of a run: a Parquet table as numpy columns, summary.json or config.yaml as a dict.

    The one place the run's files are read (sweep.py's too), so that whatever pyarrow, json or
    yaml raise on a bad file becomes an `Unreadable` naming it, which the caller lists and goes on.
    """
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            # A folder of part files, or a single file (runs from before parts).
            t = read_table(path, columns=columns).to_pydict()
            return {k: np.asarray(v) for k, v in t.items()}
        text = path.read_text()
        value = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except FileNotFoundError:
        raise Unreadable(path, "missing") from None
    except (OSError, ValueError, pa.ArrowException, yaml.YAMLError) as e:
        raise Unreadable(path, f"unreadable ({_reason(e)})") from None
    if not isinstance(value, dict):
        raise Unreadable(path, f"unreadable (a {type(value).__name__}, not a mapping)")
    return value


def _reason(e: Exception) -> str:
    """An error's first line, without the `Could not open Parquet input source '<path>': `
    that pyarrow puts before the reason."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return first.split("': ", 1)[-1][:160]


class Problems(list):
    """The files a report could not read, as `path: why` relative to the report's folder."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def read(self, path: Path, default, note: str = "", **kw):
        """`read(path)`, or `default` with the failure noted."""
        try:
            return read(path, **kw)
        except Unreadable as e:
            where = e.path.relative_to(self.root) if e.path.is_relative_to(self.root) else e.path
            line = f"{where}: {e.why}{note}"
            if line not in self:
                self.append(line)
            return default

    def section(self) -> list[str]:
        """report.md's lines listing them (none if all was read); printed too, since a report that
        quietly left a cell out would mislead."""
        for p in self:
            print(f"ps-train report: could not read {p}", file=sys.stderr)
        if not self:
            return []
        return ["", "## Files that could not be read", "",
                "Left out of the plots and tables above (a process killed while writing, or a file "
                "damaged since):", ""] + [f"- {p}" for p in self]


def _curve(evals: dict, weights: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, top-1) of one set of weights, in evaluation order."""
    if not evals:
        return np.zeros(0), np.zeros(0)
    keep = evals["weights"] == weights
    order = np.argsort(evals[x][keep], kind="stable")
    return evals[x][keep][order].astype(float), evals["top1"][keep][order].astype(float)


def _staleness(pushes: dict) -> np.ndarray:
    s = pushes.get("staleness", np.zeros(0, dtype=np.int64))
    return s[s >= 0]  # -1 marks a malformed push whose version could not be read


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` finite values (NaN losses are skipped, not propagated)."""
    ok = np.isfinite(y)
    k = np.ones(max(1, window))
    total = np.convolve(np.where(ok, y, 0.0), k)[: len(y)]
    count = np.convolve(ok.astype(float), k)[: len(y)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _push_losses(pushes: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(total worker steps so far, worker, loss) of each push, in time order.

    A push has one row per shard; one is kept. The x-axis counts all workers' steps, as
    evals.parquet's `step` does, so the loss and accuracy plots share their axis.
    """
    if not pushes or len(pushes["step"]) == 0:
        return np.zeros(0), np.zeros(0, dtype=int), np.zeros(0)
    w, step = pushes["worker"].astype(np.int64), pushes["step"].astype(np.int64)
    _, first = np.unique(w * (1 << 40) + step, return_index=True)
    first = first[np.lexsort((step[first], w[first]))]  # by worker, then step
    w, step, t, loss = w[first], step[first], pushes["time"][first], pushes["loss"][first]
    new_steps = np.diff(step, prepend=0)
    new_steps[np.r_[True, w[1:] != w[:-1]]] = step[np.r_[True, w[1:] != w[:-1]]]
    order = np.argsort(t, kind="stable")
    return np.cumsum(new_steps[order]).astype(float), w[order], loss[order].astype(float)


# ---- small plotting helpers -------------------------------------------------------------------
def _axes(n: int, width: float = 5.2, height: float = 4.0, max_cols: int = 3, **kw):
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, **kw)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(fig, path: Path, written: list[Path]) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    written.append(path)


def _empty(ax, what: str = "no data") -> None:
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _int_bins(values: np.ndarray, most: int = 80) -> np.ndarray:
    """Bins centred on integers (staleness is a count of versions), at most `most` of them."""
    top = int(values.max()) if values.size else 1
    width = max(1, math.ceil((top + 1) / most))
    return np.arange(-0.5, top + width + 0.5, width)


def _pct(mean: float, std: float = float("nan"), n: int = 1) -> str:
    """A top-1 as a percentage: `93.21 ± 0.45%` over n > 1 seeds, else `93.21%`."""
    if not np.isfinite(mean):
        return "n/a"
    return f"{100 * mean:.2f} ± {100 * std:.2f}%" if n > 1 and np.isfinite(std) else f"{100 * mean:.2f}%"


def _mean_std(v) -> tuple[float, float]:
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")


# ---- a run directory --------------------------------------------------------------------------
