"""The sweep half of `ps-train report`: plots and tables over the cells of a sweep directory.

Accuracy against steps, time and mean staleness per policy and number of workers (the comparisons
of Zhang et al. 2016 and Zheng et al. 2017), staleness histograms, raw against Polyak, and where
momentum varies the best momentum per number of workers (Mitliagkas et al. 2016). `seed` is
replication: cells that differ only in seed are one group, shown as mean +- std. Policies are
compared at the settings most groups share, never each at its own best.

A cell whose summary.json cannot be read is left out, and a cell's evals or pushes table that
cannot be read is left out of its plots; report.md lists both (`report.Problems`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on a headless machine and under pytest
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from ..config import TrainConfig  # noqa: E402

from .plots import (EVAL_COLUMNS, RESULTS, CHANCE, STYLE, Problems, _curve, _staleness,  # noqa: E402
                     _axes, _save, _empty, _int_bins, _pct, _mean_std)


def _sort_key(v):
    return (v is None, str(type(v)), v if v is not None else 0)


class Sweep:
    """sweep.parquet's rows, which settings vary, and the cells grouped over seeds."""

    def __init__(self, path: Path):
        self.path = path
        self.problems = Problems(path)
        try:  # written whole or not at all (sweep.py replaces it atomically), but may be damaged since
            rows = pq.read_table(path / "sweep.parquet").to_pylist()
        except (OSError, pa.ArrowException) as e:
            raise ValueError(f"{path / 'sweep.parquet'} cannot be read ({e}); `ps-train sweep "
                             f"{path / 'sweep.yaml'} --out {path}` writes it again from the cells") from None
        for r in rows:
            r["_dir"] = self._folder(r)
        # A row whose cell's own summary.json cannot be read describes a run whose record is gone:
        # left out, and listed (a rerun of the sweep runs that cell again).
        self.rows = [r for r in rows if self.problems.read(r["_dir"] / "summary.json", None,
                                                           note="; cell left out") is not None]
        fields = {f.name for f in TrainConfig.fields()}
        columns = list(self.rows[0]) if self.rows else []
        self.settings = [c for c in columns if c in fields and c not in RESULTS]
        self.varied = [c for c in self.settings
                       if len({repr(r[c]) for r in self.rows}) > 1]
        # Settings other than the two axes of every plot, and the replication.
        self.others = [c for c in self.varied if c not in ("policy", "workers", "seed")]
        for r in self.rows:
            for k in ("raw_top1", "polyak_top1", "raw_loss", "mean_staleness"):
                r[k] = float("nan") if r.get(k) is None else float(r[k])  # null: an unfinished cell
            r.setdefault("policy", "-")
            r.setdefault("workers", 0)
            if r.get("diverged") is None:
                r["diverged"] = not np.isfinite(r["raw_loss"]) or not r["raw_top1"] > CHANCE
        self.policies = sorted({r["policy"] for r in self.rows}, key=_sort_key)
        self.workers = sorted({r["workers"] for r in self.rows}, key=_sort_key)
        self._evals: dict[Path, dict] = {}
        for r in self.rows:  # small tables: read all now, so that report.md lists every bad one
            self.evals(r)
        groups: dict[tuple, list[dict]] = {}
        for r in self.rows:
            groups.setdefault((r["policy"], r["workers"], *(r[c] for c in self.others)), []).append(r)
        self._groups = dict(sorted(groups.items(), key=lambda kv: [_sort_key(v) for v in kv[0]]))
        # The value of each other setting that most groups share (the sweep's base value, e.g.
        # momentum 0.9 when one grid varies momentum for async only): policies are compared there,
        # never each at its own best, which would compare different settings.
        self.common = {c: Counter(k[2 + i] for k in self._groups).most_common(1)[0][0]
                       for i, c in enumerate(self.others)}

    def _folder(self, row: dict) -> Path:
        """The cell's run directory: its `run_dir` (relative to the sweep), else cells/<cell>."""
        d = Path(str(row.get("run_dir") or ""))
        d = d if d.is_absolute() else self.path / d
        return d if (d / "summary.json").is_file() else self.path / "cells" / str(row.get("cell"))

    def groups(self) -> dict[tuple, list[dict]]:
        """(policy, workers, *others) -> the cells that differ only in seed."""
        return self._groups

    def shown(self, policy, workers) -> tuple[tuple, list[dict]] | None:
        """The group of (policy, workers) the plots show: the one at the common settings, else
        (no such cell) the best."""
        key = (policy, workers, *(self.common[c] for c in self.others))
        if key in self._groups:
            return key, self._groups[key]
        return self.best(policy, workers)

    def best(self, policy, workers, **fixed) -> tuple[tuple, list[dict]] | None:
        """The group of (policy, workers) with the best mean final raw top-1 (over the others)."""
        found = [(k, g) for k, g in self.groups().items() if k[:2] == (policy, workers)
                 and all(g[0][c] == v for c, v in fixed.items())]
        if not found:
            return None
        return max(found, key=lambda kg: np.nan_to_num(_mean_std([r["raw_top1"] for r in kg[1]])[0],
                                                       nan=-1.0))

    def label(self, key: tuple) -> str:
        """`momentum 0.9, lr 0.1` for the other settings of a group key."""
        return ", ".join(f"{c} {v}" for c, v in zip(self.others, key[2:]))

    def evals(self, row: dict) -> dict:
        if row["_dir"] not in self._evals:
            self._evals[row["_dir"]] = self.problems.read(row["_dir"] / "evals.parquet", {},
                                                          columns=EVAL_COLUMNS)
        return self._evals[row["_dir"]]

    def pushes(self, row: dict) -> dict:
        return self.problems.read(row["_dir"] / "pushes.parquet", {}, columns=["staleness"])


def _mean_curve(sweep: Sweep, cells: list[dict], x: str, points: int = 100):
    """Raw top-1 of the cells interpolated onto a common grid of x: (grid, mean, std)."""
    curves = [c for c in (_curve(sweep.evals(r), "raw", x) for r in cells) if c[0].size]
    if not curves:
        return None
    lo, hi = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
    grid = np.linspace(lo, hi, points) if hi > lo else curves[0][0]
    ys = np.array([np.interp(grid, cx, cy) for cx, cy in curves])  # (seeds, points)
    return grid, ys.mean(0), ys.std(0)


def _colors(values):
    cmap = plt.get_cmap("viridis")
    return {v: cmap(0.9 * i / max(1, len(values) - 1)) for i, v in enumerate(values)}


def _curves_plot(sweep: Sweep, x: str, xlabel: str, title: str, path: Path, written: list) -> None:
    colors = _colors(sweep.workers)
    fig, axes = _axes(len(sweep.policies), height=4.8, sharey=True)
    for ax, policy in zip(axes, sweep.policies):
        for k in sweep.workers:
            found = sweep.shown(policy, k)
            curve = found and _mean_curve(sweep, found[1], x)
            if not curve:
                continue
            grid, mean, std = curve
            extra = sweep.label(found[0])
            ax.plot(grid, 100 * mean, color=colors[k], lw=2,
                    label=f"{k} workers" + (f" ({extra})" if extra else ""))
            if len(found[1]) > 1:
                ax.fill_between(grid, 100 * (mean - std), 100 * (mean + std), color=colors[k], alpha=0.15)
        ax.set(title=f"policy {policy}", xlabel=xlabel, ylim=(0, 100))
        if ax.lines:  # below the panel: inside, it hid the slow curves of many workers
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
        else:
            _empty(ax, "no evaluations")
    axes[0].set_ylabel("raw top-1 accuracy (%)")
    seeds = "mean ± std over seeds" if "seed" in sweep.varied else "one seed"
    best = ("; " + ", ".join(f"{c} {v}" for c, v in sweep.common.items())) if sweep.others else ""
    fig.suptitle(f"{title} ({seeds}{best})")
    _save(fig, path, written)


def _staleness_plot(sweep: Sweep, path: Path, written: list) -> None:
    fig, axes = _axes(len(sweep.policies))
    colors = _colors(sweep.workers)
    for ax, policy in zip(axes, sweep.policies):
        pooled = {}
        for k in sweep.workers:
            found = sweep.shown(policy, k)
            parts = [_staleness(sweep.pushes(r)) for r in (found[1] if found else [])]
            if parts and sum(p.size for p in parts):
                pooled[k] = np.concatenate(parts)
        if not pooled:
            _empty(ax, "no pushes")
        else:
            everything = np.concatenate(list(pooled.values()))
            bins = _int_bins(everything)
            for k, s in pooled.items():
                ax.hist(s, bins=bins, density=True, histtype="step", lw=1.8, color=colors[k],
                        label=f"{k} workers (mean {s.mean():.1f})")
            ax.set_xlim(-0.5, np.percentile(everything, 99.5) + 1)  # the far tail flattens the rest
            ax.legend()
        ax.set(title=f"policy {policy}", xlabel="staleness (versions)", ylabel="density")
    fig.suptitle("staleness of the pushes (seeds pooled)")
    _save(fig, path, written)


def _staleness_accuracy_plot(sweep: Sweep, path: Path, written: list) -> None:
    fig, (ax,) = _axes(1, width=7, height=4.8)
    xs = []
    for i, policy in enumerate(sweep.policies):
        pts = []
        for k in sweep.workers:
            found = sweep.shown(policy, k)
            if found:
                sx, sxe = _mean_std([r["mean_staleness"] for r in found[1]])
                ay, aye = _mean_std([r["raw_top1"] for r in found[1]])
                pts.append((sx, np.nan_to_num(sxe), 100 * ay, 100 * np.nan_to_num(aye), k))
        if not pts:
            continue
        sx, sxe, ay, aye, ks = zip(*pts)
        ax.errorbar(sx, ay, xerr=sxe, yerr=aye, fmt="-o", ms=6, capsize=3, label=policy,
                    color=f"C{i}")
        xs += list(zip(sx, ay, ks))
    _label_workers(ax, xs)
    xs = np.array([x for x, _, _ in xs if np.isfinite(x)])
    if xs.size and xs.max() > 20 and xs.max() / max(xs.min(), 0.5) > 30:
        ax.set_xscale("symlog", linthresh=1)  # staleness spans decades; symlog keeps 0 on the axis
    ax.legend(title="policy") if ax.lines else _empty(ax)
    ax.set_xlim(left=0)  # staleness 0 (sync) is a point of reference, not an edge case
    ax.set(ylim=(0, 108), xlabel="mean staleness (versions)", ylabel="final raw top-1 (%)",
           title="final accuracy vs staleness (K = workers; mean ± std over seeds)")
    _save(fig, path, written)


def _label_workers(ax, points) -> None:
    """`K=4` next to the points; once for points of equal K that nearly coincide (the policies
    of one K often have the same staleness), so labels do not print over each other."""
    placed: list[tuple] = []
    span = max([abs(x) for x, _, _ in points if np.isfinite(x)] + [1.0])
    for x, y, k in points:
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        if any(k == pk and abs(x - px) < 0.04 * span and abs(y - py) < 6 for px, py, pk in placed):
            continue
        placed.append((x, y, k))
        ax.annotate(f"K={k}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9,
                    color="0.25")


def _raw_polyak_plot(sweep: Sweep, path: Path, written: list) -> None:
    fig, (ax,) = _axes(1, width=6, height=5.6)
    for i, policy in enumerate(sweep.policies):
        cells = [r for r in sweep.rows if r["policy"] == policy]
        ax.scatter([100 * r["raw_top1"] for r in cells], [100 * r["polyak_top1"] for r in cells],
                   s=30, alpha=0.75, color=f"C{i}", edgecolor="k", lw=0.4, label=policy)
    lo = min([100 * min(r["raw_top1"], r["polyak_top1"]) for r in sweep.rows] + [100.0])
    lo = max(0.0, lo - 5) if np.isfinite(lo) else 0.0
    ax.plot([lo, 100], [lo, 100], "k--", lw=1, label="Polyak = raw")
    ax.set(xlim=(lo, 100), ylim=(lo, 100), aspect="equal", xlabel="final raw top-1 (%)",
           ylabel="final Polyak top-1 (%)", title="Polyak average vs raw weights, every cell")
    ax.legend(loc="lower right")
    _save(fig, path, written)


def _momentum(sweep: Sweep) -> tuple[str, list[tuple]]:
    """For one policy: per workers, (workers, {momentum: (mean, std, n)}, best momentum)."""
    policy = "async" if "async" in sweep.policies else sweep.policies[0]
    momenta = sorted({r["momentum"] for r in sweep.rows})
    table = []
    for k in sweep.workers:
        by_m = {}
        for m in momenta:
            found = sweep.best(policy, k, momentum=m)
            if found:
                by_m[m] = (*_mean_std([r["raw_top1"] for r in found[1]]), len(found[1]))
        if by_m:  # a best among one tried momentum would be no finding: None
            best = max(by_m, key=lambda m: np.nan_to_num(by_m[m][0], nan=-1.0))
            table.append((k, by_m, best if len(by_m) > 1 else None))
    return policy, table


def _momentum_plot(sweep: Sweep, path: Path, written: list) -> None:
    policy, table = _momentum(sweep)
    colors = _colors(sweep.workers)
    fig, (ax,) = _axes(1, width=7, height=4.8)
    momenta = sorted({r["momentum"] for r in sweep.rows})
    dodge = 0.008 * (momenta[-1] - momenta[0] or 1)  # error bars of one momentum side by side
    for i, (k, by_m, best) in enumerate(table):
        m = sorted(by_m)
        shift = dodge * (i - (len(table) - 1) / 2)
        ax.errorbar([v + shift for v in m], [100 * by_m[v][0] for v in m],
                    yerr=[100 * np.nan_to_num(by_m[v][1]) for v in m],
                    fmt="-o", capsize=3, color=colors[k], label=f"{k} workers")
        if best is not None:
            ax.plot([best + shift], [100 * by_m[best][0]], "*", ms=16, color=colors[k], mec="k")
    ax.plot([], [], "*", ms=12, color="0.6", mec="k", label="best momentum")
    ax.set(xlabel="momentum", ylabel="final raw top-1 (%)",
           title=f"momentum vs workers (policy {policy}; mean ± std over seeds)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1))
    _save(fig, path, written)


def sweep_report(path: Path) -> tuple[Path, list[Path]]:
    """Plots of a sweep and its report.md (overwritten); returns (report.md, PNGs written)."""
    sweep = Sweep(path)
    rows, written = sweep.rows, []
    lines = [f"# Sweep report: {path.name}", ""]
    if not rows:
        md = path / "report.md"
        md.write_text("\n".join(lines + ["No finished cells in sweep.parquet yet."]
                                + sweep.problems.section() + [""]))
        return md, written
    simulated = all(r.get("simulated") for r in rows)
    seconds = "virtual s" if simulated else "s"
    with plt.rc_context(STYLE):
        _curves_plot(sweep, "step", "total worker steps", "raw top-1 vs steps",
                     path / "accuracy_vs_steps.png", written)
        _curves_plot(sweep, "elapsed", f"elapsed ({seconds})", "raw top-1 vs time",
                     path / "accuracy_vs_time.png", written)
        _staleness_accuracy_plot(sweep, path / "accuracy_vs_staleness.png", written)
        _staleness_plot(sweep, path / "staleness_hist.png", written)
        _raw_polyak_plot(sweep, path / "raw_vs_polyak.png", written)
        if "momentum" in sweep.varied:
            _momentum_plot(sweep, path / "momentum_vs_workers.png", written)

    diverged = sum(bool(r["diverged"]) for r in rows)
    varied = "; ".join(f"{c}: {', '.join(str(v) for v in sorted({r[c] for r in rows}, key=_sort_key))}"
                       for c in sweep.varied) or "nothing"
    lines += [f"{len(rows)} cell{'s' * (len(rows) != 1)} ({diverged} diverged: final loss NaN or raw top-1 ≤ "
              f"{100 * CHANCE:.0f}%){', simulated' if simulated else ''}. Varied: {varied}.", "",
              "## Results per policy and number of workers", "",
              "Top-1 of the final weights, mean ± std over seeds (n)."
              + (" ✓ marks the setting shown in the plots (the one most groups share, so policies are compared at equal settings)." if sweep.others else ""),
              ""]
    head = ["policy", "workers", *sweep.others, "n", "mean staleness", "raw top-1", "Polyak top-1",
            "diverged"] + (["plotted"] if sweep.others else [])
    lines += ["| " + " | ".join(head) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in head[2:]) + " |"]
    for key, cells in sweep.groups().items():
        raw, pol = _mean_std([r["raw_top1"] for r in cells]), _mean_std([r["polyak_top1"] for r in cells])
        n = len(cells)
        row = [*map(str, key), str(n), f"{_mean_std([r['mean_staleness'] for r in cells])[0]:.2f}",
               _pct(*raw, n), _pct(*pol, n), str(sum(bool(r["diverged"]) for r in cells))]
        if sweep.others:
            row.append("✓" if sweep.shown(*key[:2])[0] == key else "")
        lines.append("| " + " | ".join(row) + " |")

    if "momentum" in sweep.varied:
        policy, table = _momentum(sweep)
        momenta = sorted({r["momentum"] for r in rows})
        lines += ["", f"## Best momentum per number of workers (policy {policy})", "",
                  "| workers | " + " | ".join(f"momentum {m}" for m in momenta) + " | best momentum |",
                  "| ---: | " + " | ".join("---:" for _ in momenta) + " | ---: |"]
        for k, by_m, best in table:
            cells = [_pct(*by_m[m]) if m in by_m else "" for m in momenta]
            lines.append(f"| {k} | " + " | ".join(cells) + (f" | **{best}** |" if best is not None
                                                               else " | - (one momentum tried) |"))

    both = [(r["raw_top1"], r["polyak_top1"]) for r in rows
            if np.isfinite(r["raw_top1"]) and np.isfinite(r["polyak_top1"])]
    if both:
        raw, pol = np.array(both).T
        lines += ["", "## Raw vs Polyak", "",
                  f"Polyak ≥ raw in {int((pol >= raw).sum())} of {len(both)} cells; "
                  f"mean difference {100 * (pol - raw).mean():+.2f} points (Polyak − raw)."]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in written]
    lines += sweep.problems.section() + [""]
    md = path / "report.md"
    md.write_text("\n".join(lines))
    return md, written


# ---- entry points -----------------------------------------------------------------------------
