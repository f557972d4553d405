"""The run directory: resolved config, metrics as Parquet, the summary.

`pushes.parquet` has one row per push (time, worker, shard, step, version_read, staleness,
outcome, lr, loss, version, reason, and the seconds the step spent computing, in injected delay and
waiting for a coordinating policy: compute, delay, wait); `evals.parquet` one row per evaluation of each weight set
(time, elapsed, step, weights = raw | polyak, top1, top5, loss, bn). Each table is a folder of
closed Parquet parts (see `ParquetLog`): rows stream to disk as they arrive, so memory stays flat
over a long run, and a driver killed at any moment leaves every flushed row readable.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PUSH_SCHEMA = pa.schema([("time", pa.float64()), ("worker", pa.int32()), ("shard", pa.int32()),
                         ("step", pa.int64()), ("version_read", pa.int64()),
                         ("staleness", pa.int64()), ("outcome", pa.string()), ("lr", pa.float64()),
                         ("loss", pa.float64()), ("version", pa.int64()), ("reason", pa.string()),
                         ("compute", pa.float64()), ("delay", pa.float64()), ("wait", pa.float64())])
EVAL_SCHEMA = pa.schema([("time", pa.float64()), ("elapsed", pa.float64()), ("step", pa.int64()),
                         ("weights", pa.string()), ("top1", pa.float64()), ("top5", pa.float64()),
                         ("loss", pa.float64()), ("bn", pa.string())])


def new_run_dir(root: str | Path, model: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{stamp}-{model}"
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stamp}-{model}-{n}"
    return path


class ParquetLog:
    """An append-only table that survives its writer being killed: a folder of closed parts.

    `pushes.parquet/` is a Hive-style folder of `part-000001.parquet`, `part-000002.parquet`, ...
    (pyarrow, pandas, DuckDB and Spark read the folder as one table, in part order). Rows go into
    a hidden part (`.part-000003.parquet`, which readers skip) that `flush()` closes and renames
    into place, so a `kill -9` at any moment loses at most the rows since the last flush and never
    makes the table unreadable. The driver flushes at every checkpoint (and every minute), so a
    resumed run finds on disk every row its checkpoint accounts for.

    `keep` (resuming a run): the rows the checkpoint accounts for (later ones belong to work the
    checkpoint does not have): a count of first rows, or, for pushes, {(worker, shard): n}, the
    first n rows of each worker and shard (a checkpoint taken while pushes are in flight has a
    count per shard, not a clean cut of the table). `kept` says how many of each were found."""

    def __init__(self, path: Path, schema: pa.Schema, keep: int | dict | None = None):
        self.path, self.schema = Path(path), schema
        self.rows = 0
        self.kept: dict = {}
        self.writer = None
        _recover_swap(self.path)
        if self.path.is_file():  # a table from before parts: becomes part 0
            self.path.rename(self.path.with_name(self.path.name + ".single"))
            self.path.mkdir()
            (self.path.with_name(self.path.name + ".single")).rename(self.path / _part(0))
        if self.path.is_dir():
            for hidden in self.path.glob(".part-*"):  # a part its writer never closed
                hidden.unlink()
            if keep:
                try:
                    self.kept = _truncate(self.path, schema, keep)
                except (OSError, pa.ArrowInvalid) as e:
                    raise ValueError(f"{self.path} cannot be read to resume ({e}); move it away "
                                     f"to resume without the metrics before the checkpoint") from None
                self.rows = sum(self.kept.values())
                if isinstance(keep, int) and self.rows < keep:
                    raise ValueError(f"{self.path} holds {self.rows} rows but the checkpoint "
                                     f"accounts for {keep}; move it away to resume without the "
                                     f"metrics before the checkpoint")
            else:
                shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.parts = max([_index(p) for p in self.path.glob("part-*.parquet")], default=0)

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        if self.writer is None:
            self.parts += 1
            self.writer = pq.ParquetWriter(self.path / ("." + _part(self.parts)), self.schema)
        self.writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))
        self.rows += len(rows)

    def flush(self) -> None:
        """Close the open part and move it into place: from now on its rows are readable."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            os.replace(self.path / ("." + _part(self.parts)), self.path / _part(self.parts))

    def close(self) -> None:
        self.flush()


def _part(i: int) -> str:
    return f"part-{i:06d}.parquet"


def _index(p: Path) -> int:
    return int(p.name.split("-")[1].split(".")[0])


def _recover_swap(path: Path) -> None:
    """Finish a `_truncate` swap that a crash interrupted (see there)."""
    new, old = path.with_name(path.name + ".new"), path.with_name(path.name + ".old")
    if new.is_dir() and not path.exists():
        new.rename(path)
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def _truncate(path: Path, schema: pa.Schema, keep: int | dict) -> dict:
    """Keep the rows `keep` names (see `ParquetLog`) of the table in `path`, streamed (one batch
    in memory at a time); returns how many were kept ({None: n}, or per (worker, shard)). The
    kept rows are written to `<path>.new/` first, then swapped in by two renames, so a crash
    leaves either the old table or the new one (`_recover_swap` finishes the swap)."""
    new, old = path.with_name(path.name + ".new"), path.with_name(path.name + ".old")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir()
    kept: dict = {None: 0} if isinstance(keep, int) else dict.fromkeys(keep, 0)
    with pq.ParquetWriter(new / _part(1), schema) as w:
        for batch in iter_batches(path):
            if isinstance(keep, int):
                batch = batch.slice(0, keep - kept[None])
                kept[None] += batch.num_rows
            else:
                mask = []
                for key in zip(batch.column("worker").to_pylist(), batch.column("shard").to_pylist()):
                    mask.append(kept.get(key, 0) < keep.get(key, 0))
                    if mask[-1]:
                        kept[key] += 1
                batch = batch.filter(pa.array(mask, pa.bool_()))
            if batch.num_rows:
                w.write_table(pa.Table.from_batches([batch]).cast(schema))
    path.rename(old)
    new.rename(path)
    shutil.rmtree(old)
    return kept


def parts(path: str | Path) -> list[Path]:
    """The closed part files of a run table in order (a table written as a single file is its own
    only part)."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(path.glob("part-*.parquet"), key=_index) if path.is_dir() else []


def iter_batches(path: str | Path, columns: list[str] | None = None):
    """The record batches of a run table, part by part: memory stays at one batch."""
    for part in parts(path):
        yield from pq.ParquetFile(part).iter_batches(columns=columns)


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """A run table (`pushes.parquet` or `evals.parquet`, a folder of parts or a single file) as
    one table, in the order it was written. Raises FileNotFoundError if there is none, and
    pyarrow's errors if a part is corrupt."""
    found = parts(path)
    if not found:
        raise FileNotFoundError(f"{path}: no such table")
    return pa.concat_tables(pq.read_table(p, columns=columns) for p in found)


class RunDirectory:
    def __init__(self, path: Path, config_yaml: str, keep_rows: dict | None = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.yaml").write_text(config_yaml)
        keep = keep_rows or {}
        self.pushes = ParquetLog(self.path / "pushes.parquet", PUSH_SCHEMA, keep.get("pushes"))
        self.evals = ParquetLog(self.path / "evals.parquet", EVAL_SCHEMA, keep.get("evals"))

    def write_summary(self, summary: dict, table: str) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        (self.path / "report.md").write_text(table + "\n")

    def flush(self) -> None:
        """Make every row written so far readable (a part file each), e.g. before a checkpoint."""
        self.pushes.flush()
        self.evals.flush()

    def close(self) -> None:
        self.pushes.close()
        self.evals.close()
