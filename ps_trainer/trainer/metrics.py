"""The run directory: resolved config, metrics as Parquet, the summary.

`pushes.parquet` has one row per push (time, worker, shard, step, version_read, staleness,
outcome, lr, loss, version, reason, and the seconds the step spent computing, in injected delay and
waiting for a coordinating policy: compute, delay, wait); `evals.parquet` one row per evaluation of each weight set
(time, elapsed, step, weights = raw | polyak, top1, top5, loss, bn). Rows are written in row
groups as they arrive, so memory stays flat over a long run.
"""

from __future__ import annotations

import datetime as dt
import json
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
    """Append-only Parquet file with a fixed schema; `close()` makes it readable.

    `keep` (resuming a run): carry over the first `keep` rows of the existing file, the rows its
    checkpoint accounts for (later ones belong to work the checkpoint does not have)."""

    def __init__(self, path: Path, schema: pa.Schema, keep: int | None = None):
        self.path, self.schema = path, schema
        old = None
        if keep and path.is_file():
            try:
                old = pq.read_table(path).slice(0, keep)
            except (OSError, pa.ArrowInvalid) as e:  # killed mid-write: no footer
                raise ValueError(f"{path} cannot be read to resume ({e}); move it away to resume "
                                 f"without the metrics before the checkpoint") from None
        self.writer = pq.ParquetWriter(path, schema)
        self.rows = 0
        if old is not None and old.num_rows:
            self.writer.write_table(old.cast(schema))
            self.rows = old.num_rows

    def write(self, rows: list[dict]) -> None:
        if rows:
            self.writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))
            self.rows += len(rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


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

    def close(self) -> None:
        self.pushes.close()
        self.evals.close()
