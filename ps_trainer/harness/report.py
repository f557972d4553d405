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

from pathlib import Path

from ..flags import ArgumentParser
from .plots import (EVAL_COLUMNS, MARKER, PUSH_COLUMNS, RUN_FILES, STYLE, SWEEP_FILES, Problems,
                    _axes, _curve, _empty, _int_bins, _moving_average, _pct, _push_losses, _save,
                    _staleness, np, plt)

# Extra plots of the run report: name -> draw(pushes, ax), which draws on one matplotlib axes from
# the run's push rows (a dict of numpy columns: PUSH_COLUMNS; empty if the table is unreadable);
# each becomes <name>.png in the run directory, linked from report.md. Empty here: exercise 5 of
# docs/exercises.md adds one.
RUN_PLOTS: dict = {}


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

        for name, draw in RUN_PLOTS.items():
            fig, (ax,) = _axes(1, width=6.4)
            draw(pushes, ax)
            _save(fig, run / f"{name}.png", written)

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
