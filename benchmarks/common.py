"""Shared helpers for the benchmarks: medians of interleaved repeats, machine description, and
writing a section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def group_push(shard, grad, others) -> None:
    """One push of `grad` that finds `others` (gradients of other pushes) queued behind the busy
    shard, as `ShardState.push` meets them: each checked (in its own thread, before the lock:
    here in turn), then all decided and applied in one pass (group commit)."""
    from ps_trainer.core.shard import _Queued

    for o in others:
        assert not shard._check(o, None, None)
    with shard._queue_lock:
        shard._queue += [_Queued(o, shard.version, 0, None, "") for o in others]
    assert shard.push(grad, shard.version, worker=0).outcome == "applied"


def median_time(fn, repeats: int = 7, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section `## name` of docs/benchmarks.md."""
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nWritten by the scripts in `benchmarks/`; each target is a ratio against a baseline measured in the same run.\n"
    section = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    DOC.write_text(text)
