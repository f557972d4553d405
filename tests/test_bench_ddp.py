"""The synchronous baseline's smoke run (benchmarks/bench_ddp.py --smoke): DDP on gloo and
ps-train's sync and async policies each train 2 epochs of digits with 2 workers, as real
processes, and the table it prints says they reached its stated accuracy with the steps the
settings imply."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}

pytestmark = pytest.mark.slow  # three trainings, each with its own start-up: ~40-75 s on 2 cores


def rows(out: str) -> dict[str, list[str]]:
    """The first table's rows by system: their cells, without the system's name (the CPU table
    after it has rows of the same names)."""
    found = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("DDP (gloo)", "ps-train sync", "ps-train async"):
            found.setdefault(cells[0], cells[1:])
    return found


def test_smoke_run_trains_ddp_and_both_policies_to_the_stated_accuracy(tmp_path):
    before = (ROOT / "docs" / "benchmarks.md").read_bytes()
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_ddp.py"), "--smoke"],
                       capture_output=True, text=True, timeout=300, env=ENV, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    target = float(re.search(r"\| s to (\d+)% \|", out).group(1)) / 100
    assert target == 0.8
    table = rows(out)
    assert set(table) == {"DDP (gloo)", "ps-train sync", "ps-train async"}, out
    # 2 epochs of the 1,438 training digits, batch 32 per worker, 2 workers: 45 steps each
    steps_per_worker = math.ceil(2 * 1438 / (32 * 2))
    for system, cells in table.items():
        startup, training, ratio, worker_steps, updates, _, _, final, _, polyak = cells[:10]
        assert float(startup) > 0 and float(training) > 0 and float(ratio) > 0, (system, cells)
        assert int(worker_steps) == 2 * steps_per_worker, (system, cells)
        # DDP and BSP: one update per 2 gradients; async: one per gradient
        assert int(updates) == steps_per_worker * (2 if system == "ps-train async" else 1)
        assert float(final.rstrip("%")) / 100 >= target, (system, cells)
        if system != "DDP (gloo)":  # ps-train's Polyak-averaged weights too
            assert float(polyak.rstrip("%")) / 100 >= target, (system, cells)
    assert table["DDP (gloo)"][2] == "1.00"  # the ratio column is against DDP
    assert "Target: ps-train within 1.2x of DDP's training time" in out
    assert (ROOT / "docs" / "benchmarks.md").read_bytes() == before  # --smoke writes nothing
