"""The benchmark suite never rots: every script it names exists and has a smoke mode, and the smoke
runs of the scripts no other test covers (bench_worker, bench_grpc) produce real numbers. The
whole suite's smoke run is in the slow set."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import suite  # noqa: E402  (benchmarks/ is scripts, not a package)

ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def run(*args: str, timeout: float = 240) -> str:
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                       env=ENV, cwd=BENCH.parent)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def test_every_item_of_the_suite_is_a_script_with_a_smoke_mode():
    assert [n for n, _, _ in suite.ITEMS] == list(range(1, 8))  # the seven, in order
    for _, _, script in suite.ITEMS:
        text = (BENCH / script).read_text()
        assert '"--smoke"' in text and '"--no-write"' in text, script
    listed = run(str(BENCH / "suite.py"), "--list").splitlines()
    assert [line.split(": ")[1] for line in listed] == [f"benchmarks/{s}" for *_, s in suite.ITEMS]


def test_an_unknown_item_is_one_clear_line():
    p = subprocess.run([sys.executable, str(BENCH / "suite.py"), "--only", "9"],
                       capture_output=True, text=True, env=ENV)
    assert p.returncode == 2 and "--only 9: items are 1..7" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.slow  # starts Ray or runs a benchmark: the slow set keeps it from rotting
def test_worker_benchmark_smoke_measures_both_loops():
    out = run(str(BENCH / "bench_worker.py"), "--smoke")
    row = re.search(r"^\| digits_cnn \| (\d+)" + r" \| (\d+) \| (\d+)%" * 3 + r" \|$", out, re.M)
    assert row, out
    plain, *cells = map(int, row.groups())  # separate calls, exchange, exchange + prefetch
    assert plain > 0
    for ours, ratio in zip(cells[::2], cells[1::2]):
        assert ours > 0 and abs(ratio - 100 * ours / plain) <= 1


@pytest.mark.slow  # starts Ray or runs a benchmark: the slow set keeps it from rotting
def test_grpc_benchmark_smoke_times_both_transports():
    out = run(str(BENCH / "bench_grpc.py"), "--smoke")
    rows = dict(re.findall(r"^\| (Ray \(object store\)|gRPC \(TCP loopback\)|bare TCP socket "
                           r"\(the floor\)|Ray across two nodes \(object manager\)) \| (.*)$",
                           out, re.M))
    assert set(rows) == {"Ray (object store)", "gRPC (TCP loopback)", "bare TCP socket (the floor)",
                         "Ray across two nodes (object manager)"}, out
    for cells in rows.values():
        pull, push, total, *rates = (float(c) for c in cells.strip(" |").split(" | "))
        assert 0 < pull and 0 < push and total > 0 and all(r > 0 for r in rates)
    assert re.search(r"ratio of the median rounds \d+\.\d\dx Ray's", out)
    assert re.search(r"gRPC \(TCP loopback\) against the bare socket: ratio of the median rounds "
                     r"\d+\.\d\dx", out)
    # the comparison for a worker on another machine: Ray's object stores on two nodes
    assert re.search(r"gRPC \(TCP loopback\) against Ray across two nodes \(object manager\): "
                     r"ratio of the median rounds \d+\.\d\dx", out)


@pytest.mark.slow
def test_the_whole_suite_runs_in_smoke_mode():
    out = run(str(BENCH / "suite.py"), "--smoke", timeout=1500)
    results = re.findall(r"^\| (\d) \| .* \| (ok|FAILED.*) \| \d+ \|$", out, re.M)
    assert results == [(str(n), "ok") for n in range(1, 8)], out[-3000:]
