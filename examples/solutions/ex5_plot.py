"""Solution of exercise 5 (docs/exercises.md): staleness over time, one line per worker.

Where it goes: the function into ps_trainer/harness/report.py, above `RUN_PLOTS` (np is already
imported there), and `"staleness_over_time": staleness_over_time` into `RUN_PLOTS`. Then
`ps-train report RUN` writes RUN/staleness_over_time.png and links it from report.md. `install`
does the same for tests/test_exercise_solutions.py.
"""

from __future__ import annotations

import numpy as np


def staleness_over_time(pushes: dict, ax) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Draw each worker's push staleness against time on `ax`; return {worker: (seconds since the
    first push, staleness)} as drawn. Rows with staleness -1 (unreadable pushes) are left out; a
    push has one row per shard, and each is a point. A straggler's line sits above the others:
    the gradients it sends are the stalest (Chen et al. 2016)."""
    if not pushes or len(pushes.get("staleness", ())) == 0:
        ax.text(0.5, 0.5, "no pushes", ha="center", va="center", transform=ax.transAxes)
        return {}
    t, worker, stale = (np.asarray(pushes[k]) for k in ("time", "worker", "staleness"))
    keep = stale >= 0
    t, worker, stale = t[keep], worker[keep], stale[keep]
    t0 = t.min() if t.size else 0.0
    series = {}
    for w in np.unique(worker):
        mine = worker == w
        order = np.argsort(t[mine], kind="stable")
        x, y = t[mine][order] - t0, stale[mine][order]
        ax.plot(x, y, lw=0.9, label=f"worker {int(w)}")
        series[int(w)] = (x, y)
    ax.set(xlabel="time since the first push (s)", ylabel="staleness (versions)",
           title="staleness over time, per worker")
    if ax.lines:
        ax.legend()
    return series


def install(monkeypatch) -> None:
    from ps_trainer.harness import report

    monkeypatch.setattr(report, "staleness_over_time", staleness_over_time, raising=False)
    monkeypatch.setitem(report.RUN_PLOTS, "staleness_over_time", staleness_over_time)
