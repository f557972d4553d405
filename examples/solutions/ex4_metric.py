"""Solution of exercise 4 (docs/exercises.md): per-worker staleness percentiles in the summary.

Where it goes: the function into ps_trainer/trainer/summary.py, above `SUMMARY_METRICS`, and
`"staleness_percentiles": staleness_percentiles` into `SUMMARY_METRICS`. Every run's summary.json
(real or simulated) then has a `staleness_percentiles` entry. `install` does the same for
tests/test_exercise_solutions.py.
"""

from __future__ import annotations

import numpy as np


def staleness_percentiles(pushes: dict) -> dict[str, dict[str, float]]:
    """{worker: {"p50": ..., "p95": ...}} of the staleness of each worker's push rows (every shard's
    row counts; -1, an unreadable push, does not), by numpy's default (linear) percentile. Workers
    ascending, as strings (JSON keys); a worker with no readable row is left out. A mean hides the
    tail, and the tail is where stragglers live (Dean & Barroso 2013)."""
    worker, stale = np.asarray(pushes["worker"]), np.asarray(pushes["staleness"])
    out = {}
    for w in np.unique(worker):
        s = stale[(worker == w) & (stale >= 0)]
        if s.size:
            p50, p95 = np.percentile(s, [50, 95])
            out[str(int(w))] = {"p50": float(p50), "p95": float(p95)}
    return out


def install(monkeypatch) -> None:
    from ps_trainer.trainer import summary

    monkeypatch.setattr(summary, "staleness_percentiles", staleness_percentiles, raising=False)
    monkeypatch.setitem(summary.SUMMARY_METRICS, "staleness_percentiles", staleness_percentiles)
