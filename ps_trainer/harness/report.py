"""Reports: PNG plots and a `report.md` a person reads first, for a run or for a sweep of runs.

`ps-train report DIR` takes either kind of directory:

- a run directory (`summary.json`, `evals.parquet`, `pushes.parquet`): accuracy of the raw and
  Polyak-averaged weights (Polyak & Juditsky 1992) over steps and time, the staleness histogram
  of the pushes (Dean et al. 2012's Downpour has no bound on it), and the push loss per worker.
  The run's own end-of-run table stays at the top of its report.md; this section goes below
  `MARKER` and is replaced on every rerun, so reporting twice is the same as reporting once.
- a sweep directory (`sweep.parquet`, `cells/<cell>/`): accuracy against steps, time and mean
  staleness per policy and number of workers -- the comparison of Zhang et al. 2016
  ("Staleness-aware async-SGD") and Zheng et al. 2017 (DC-ASGD) -- and raw against Polyak.
  `seed` is replication: cells that differ only in seed are one group, shown as mean +- std.
  Where momentum varies, the best momentum per number of workers: asynchrony acts as implicit
  momentum, so the best explicit momentum falls as workers are added (Mitliagkas et al. 2016).

A report reads what is readable: every file of a run goes through `read`, and one that a killed
process left half-written (no Parquet footer, "Couldn't deserialize thrift", a cut JSON) or that is
missing is listed under "Files that could not be read" in report.md (and printed), not a traceback
that loses the rest.

Only numpy, pyarrow (the run tables through `trainer.metrics.read_table`), yaml and matplotlib (Agg:
no display) are used; nothing is downloaded.
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

from ..flags import ArgumentParser  # noqa: E402
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
def run_report(run: Path) -> tuple[Path, list[Path]]:
    """Plots of one run and its report section; returns (report.md, PNGs written)."""
    problems = Problems(run)
    summary = problems.read(run / "summary.json", {})
    # The title's model, workers and policy are in both; config.yaml stands in for a bad summary.
    about = {**problems.read(run / "config.yaml", {}), **summary}
    evals = problems.read(run / "evals.parquet", {}, columns=EVAL_COLUMNS)
    pushes = problems.read(run / "pushes.parquet", {}, columns=PUSH_COLUMNS)
    seconds = "virtual s" if summary.get("simulated") else "s"
    written: list[Path] = []
    with plt.rc_context(STYLE):
        fig, (a, b) = _axes(2, width=6)
        for ax, x, label in ((a, "step", "total worker steps"), (b, "elapsed", f"elapsed ({seconds})")):
            for weights, style in (("raw", "-o"), ("polyak", "-s")):
                xs, ys = _curve(evals, weights, x)
                if xs.size:
                    ax.plot(xs, 100 * ys, style, ms=3, label=f"{weights.replace('polyak', 'Polyak')} weights")
            ax.set(xlabel=label, ylabel="top-1 accuracy (%)", ylim=(0, 100))
            ax.legend(loc="lower right") if ax.lines else _empty(ax, "no evaluations")
        a.set_title("top-1 vs steps")
        b.set_title("top-1 vs time")
        fig.suptitle(f"{about.get('model')}, {about.get('workers')} workers, "
                     f"policy {about.get('policy')}")
        _save(fig, run / "accuracy.png", written)

        stale = _staleness(pushes)
        fig, (ax,) = _axes(1, width=6.4)
        if stale.size:
            ax.hist(stale, bins=_int_bins(stale), color="tab:blue", alpha=0.8)
            ax.axvline(stale.mean(), color="tab:red", ls="--", label=f"mean {stale.mean():.2f}")
            ax.legend()
        else:
            _empty(ax, "no pushes")
        ax.set(xlabel="staleness (shard versions since the pull)", ylabel="pushes (one per shard)",
               title="staleness of the pushes")
        _save(fig, run / "staleness.png", written)

        steps, worker, loss = _push_losses(pushes)
        fig, (ax,) = _axes(1, width=6.4)
        window = max(1, len(loss) // 30)  # about 30 independent points along the run
        for w in np.unique(worker):
            m = worker == w
            ax.plot(steps[m], _moving_average(loss[m], max(1, m.sum() // 30)), lw=0.8, alpha=0.35)
        if np.isfinite(loss).any():
            ax.plot(steps, _moving_average(loss, window), color="black", lw=2,
                    label=f"all workers (moving mean of {window} pushes)")
            ax.legend()
            finite = loss[np.isfinite(loss) & (loss > 0)]
            if finite.size and finite.max() / finite.min() > 30:
                ax.set_yscale("log")  # a diverging run spans decades
        else:
            _empty(ax, "no finite push loss (diverged?)" if loss.size else "no pushes")
        ax.set(xlabel="total worker steps", ylabel="training loss (cross-entropy)",
               title="push loss: each worker faint, the mean bold")
        _save(fig, run / "loss.png", written)

    out = summary.get("outcomes", {})
    sent = sum(out.values())
    lines = ["## Report", "",
             "| outcome | pushes | share |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v} | {100 * v / max(sent, 1):.1f}% |" for k, v in sorted(out.items())]
    raw, pol = summary.get("raw", {}), summary.get("polyak", {})
    lines += ["", "| mean staleness | max staleness | raw top-1 | Polyak top-1 |",
              "| ---: | ---: | ---: | ---: |",
              f"| {summary.get('mean_staleness', float('nan')):.2f} | {summary.get('max_staleness', '')} "
              f"| {_pct(raw.get('top1', float('nan')))} | {_pct(pol.get('top1', float('nan')))} |", ""]
    lines += [f"![{p.stem}]({p.name})" for p in written]
    lines += problems.section()
    md = run / "report.md"
    head = md.read_text(errors="replace").split(MARKER)[0].rstrip() if md.is_file() else ""
    md.write_text((head + "\n\n" if head else "") + MARKER + "\n" + "\n".join(lines) + "\n")
    return md, written


# ---- a sweep directory ------------------------------------------------------------------------
def build_report(path) -> tuple[Path, list[Path]]:
    """Report on a run or a sweep directory: (report.md, the PNG files written)."""
    path = Path(path)
    if all((path / f).is_file() for f in SWEEP_FILES):
        from .report_sweep import sweep_report

        return sweep_report(path)
    if any((path / f).exists() for f in RUN_FILES):
        return run_report(path)
    raise ValueError(f"{path}: neither a run directory (expected summary.json, evals.parquet and "
                     "pushes.parquet, as `ps-train --run-dir` writes) nor a sweep directory "
                     "(expected sweep.parquet and cells/); pass one of those")


def report(path) -> Path:
    """Write the plots and report.md of a run or sweep directory; returns report.md's path."""
    return build_report(path)[0]


def main(argv=None) -> int:
    parser = ArgumentParser(
        prog="ps-train report",
        description="Plot a run directory or a sweep directory into PNGs and a report.md.")
    parser.add_argument("dir", help="a run directory (summary.json, evals.parquet, pushes.parquet) "
                                    "or a sweep directory (sweep.parquet, cells/)")
    args = parser.parse_args(argv)
    md, pngs = build_report(args.dir)
    print(md)
    for p in pngs:
        print(p)
    return 0
