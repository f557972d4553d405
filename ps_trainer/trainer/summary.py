"""The end-of-run summary: a table a person reads first, and the same numbers as a dict.

It also checks the accounting invariant of DESIGN.md for every worker: pushes sent = pushes the
shards recorded (applied + scaled + ... + rejected), and that the metrics file has one row each.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from .metrics import read_table

# Extra entries of summary.json, each computed from the run's push rows: name -> function of a
# dict of numpy columns (worker, staleness, shard, version; one row per push and shard; staleness
# -1 marks a push too malformed to read) returning a JSON-able value. Empty here: a metric added
# to it (exercise 4 of docs/exercises.md) lands in every run's summary, real or simulated.
SUMMARY_METRICS: dict = {}


def summarize(plan, final_evals: list[dict], shard_stats: list[dict], progress: dict,
              run_path: Path, train_time: float, *, interrupted: bool = False,
              stopped_for_time: bool = False, lost_rows: dict | None = None,
              shard_restarts: list | None = None) -> tuple[dict, str]:
    cfg = plan.cfg
    columns = ["worker", "staleness", "shard", "version"]
    try:
        pushes = read_table(run_path / "pushes.parquet", columns=columns)
    except FileNotFoundError:  # stopped before any push was acknowledged: no rows yet
        pushes = pa.table({c: pa.array([], pa.int64()) for c in columns})
    staleness = np.asarray(pushes.column("staleness").to_numpy())
    staleness = staleness[staleness >= 0]
    outcomes = Counter()
    recorded = Counter()  # worker -> pushes the shards counted
    for s in shard_stats:
        outcomes.update(s["counters"])
        for w, c in s["worker_counters"].items():
            recorded[int(w)] += sum(c.values())
    sent = {int(w): p["pushes_sent"] for w, p in progress.items()}
    rows_per_worker = Counter(pushes.column("worker").to_pylist())
    # A worker process that died took its not-yet-drained rows with it: counted, not hidden.
    lost = {w: int((lost_rows or {}).get(w, 0)) for w in sent}
    # A shard restored from a checkpoint forgot the pushes it recorded after it: exactly the rows
    # of that shard with versions between the checkpoint's and the one it continued at.
    forgotten = Counter()
    if shard_restarts:
        cols = {k: np.asarray(pushes.column(k).to_numpy()) for k in ("worker", "shard", "version")}
        for r in shard_restarts:
            hit = (cols["shard"] == r["shard"]) & (cols["version"] > r["restored_version"]) \
                & (cols["version"] < r["continued_at"])
            forgotten.update(cols["worker"][hit].tolist())
    # The forgotten pushes are known by their rows; a dead worker's lost rows may have been
    # forgotten too (when a shard restarted after they were recorded), and nobody can tell: then
    # the shards' side is only known to within those rows. With no lost rows, it is exact.
    accounted = all(sent[w] == rows_per_worker[w] + lost[w]
                    and recorded[w] + forgotten[w] <= sent[w] <= recorded[w] + forgotten[w] + lost[w]
                    for w in sent)
    images = sum(p["images"] for p in progress.values())
    steps = sum(p["steps"] for p in progress.values())
    evals = {r["weights"]: r for r in final_evals}
    summary = {
        "model": cfg.model, "dataset": cfg.dataset, "num_classes": plan.data.num_classes,
        "workers": cfg.workers,
        "ps_shards": cfg.ps_shards, "policy": cfg.policy, "run_dir": str(run_path),
        "train_seconds": train_time, "steps": steps, "images": images,
        "images_per_s": images / max(train_time, 1e-9), "steps_per_s": steps / max(train_time, 1e-9),
        "pushes_sent": sum(sent.values()), "outcomes": dict(outcomes), "accounted": accounted,
        "metrics_rows_lost": sum(lost.values()),
        "mean_staleness": float(staleness.mean()) if staleness.size else 0.0,
        "max_staleness": int(staleness.max()) if staleness.size else 0,
        "versions": [s["version"] for s in shard_stats],
        "raw": {k: evals["raw"][k] for k in ("top1", "top5", "loss")},
        "polyak": {k: evals["polyak"][k] for k in ("top1", "top5", "loss")},
        "polyak_bn": evals["polyak"]["bn"], "interrupted": interrupted,
        "stopped_for_time": stopped_for_time,
    }
    if SUMMARY_METRICS:
        cols = {c: np.asarray(pushes.column(c).to_numpy()) for c in columns}
        summary.update({name: metric(cols) for name, metric in SUMMARY_METRICS.items()})
    lines = [f"## ps-train: {cfg.model} on {cfg.dataset}, {_count(cfg.workers, 'worker')}, "
             f"{_count(cfg.ps_shards, 'shard')}, policy {cfg.policy}"
             + (" (interrupted)" if interrupted else " (stopped at --max-time)" if stopped_for_time else ""),
             "",
             "| weights | top-1 | top-5 | loss | BatchNorm statistics |",
             "| --- | ---: | ---: | ---: | --- |"]
    for w in ("raw", "polyak"):
        e = evals[w]
        lines.append(f"| {w} | {100 * e['top1']:.2f}% | {100 * e['top5']:.2f}% | {e['loss']:.4f} | {e['bn']} |")
    lines += ["",
              "| pushes sent | " + " | ".join(sorted(outcomes)) + " | accounted | mean staleness | max staleness |",
              "| ---: | " + " | ".join("---:" for _ in outcomes) + " | --- | ---: | ---: |",
              f"| {summary['pushes_sent']} | " + " | ".join(str(outcomes[k]) for k in sorted(outcomes))
              + f" | {'yes' if accounted else 'NO'} | {summary['mean_staleness']:.2f} | {summary['max_staleness']} |",
              "",
              f"{steps} worker steps, {images} images in {train_time:.1f} s: "
              f"{summary['images_per_s']:.0f} images/s, {summary['steps_per_s']:.1f} steps/s; "
              f"shard versions {summary['versions']}",
              f"run directory: {run_path}"]
    return summary, "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
