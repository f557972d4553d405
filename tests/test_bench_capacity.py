"""The server-capacity, pull-path and chunked-push benchmarks (issue 15, items 1 and 2) in their
smoke modes, as subprocesses on a real local Ray: every cell measured something, the shards
counted exactly the pushes the workers made, the Ray docs' baseline ran, the tables add up."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def run(script: str, *args: str, timeout: float = 180) -> str:
    p = subprocess.run([sys.executable, str(BENCH / script), "--smoke", *args], capture_output=True,
                       text=True, timeout=timeout, env=ENV, cwd=BENCH.parent)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


CELL = re.compile(r"^round (\d+)  (ps-trainer|\(a\) object store|\(b\) Ray docs PS|\(c\) store \+ update)\s+(\S+)"
                  r"(?: S=(\d+))? K=(\d+): ([\d.]+) updates/s \((\d+) updates; shard pushes ([\d, -]+)(?:; (\d+) applied together)?\)$",
                  re.M)


@pytest.mark.slow  # starts Ray or runs a benchmark: the slow set keeps it from rotting
@pytest.mark.parametrize("loop", ["", "--pipelined"])
def test_server_capacity_smoke_counts_every_update_on_every_path(loop):
    """`--pipelined`: the workers send each push before they fetch the reply to the one before."""
    out = run("bench_server_capacity.py", *[x for x in [loop] if x])
    cells = CELL.findall(out)
    paths = {c[1] for c in cells}
    assert paths == {"ps-trainer", "(a) object store", "(b) Ray docs PS", "(c) store + update"}, out
    for _, path, _, S, K, rate, updates, pushes, together in cells:
        assert float(rate) > 0 and int(updates) >= 2 * int(K), (path, S, K)  # --min-updates 2
        if path == "ps-trainer":  # each shard counted exactly the workers' updates
            assert [int(x) for x in pushes.split(", ")] == [int(updates)] * int(S), (S, K, pushes)
            assert 0 <= int(together) <= int(S) * int(updates)  # (a push batched, counted once)
        else:
            assert together == ""
    ours = sum(int(c[6]) for c in cells if c[1] == "ps-trainer")
    assert f"({ours} updates in all), every one applied" in out
    # the table: MB/s is updates/s x 2 x the model's bytes (its float32 bytes: 2 x 4 x
    # (25,557,032 + 53,120) / 100, in --smoke), the ratios are the rates' (one round: no medians)
    rows = re.findall(r"^\| resnet50 \| (\d+) \| (\d+) \| ([\d.]+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| "
                      r"(\d+)% \| (\d+)% \| (\d+)% \| (\d+)% \|$", out, re.M)
    assert len(rows) == 4, out  # smoke: S=1 and 2, K=1 and 2
    for S, K, ours_rate, ours_mb, base_rate, bare_rate, pct, bare_pct, vs_bare, together in rows:
        assert 0 <= int(together) <= 100
        if K == "1":  # one worker pushes one gradient at a time: nothing ever queues
            assert together == "0"
        assert float(ours_rate) > 0 and float(base_rate) > 0 and float(bare_rate) > 0
        assert abs(int(ours_mb) / float(ours_rate) - 2.04888) < 0.01 * 2.04888 + 0.5 / float(ours_rate)
        for shown, x, y in ((pct, ours_rate, base_rate), (bare_pct, bare_rate, base_rate),
                            (vs_bare, ours_rate, bare_rate)):
            assert abs(int(shown) - 100 * float(x) / float(y)) <= 1
    docs = re.search(r"^\| 2 \| ([\d.]+) \| \d+ \| ([\d.]+) \| ([\d.]+)x \|", out, re.M)
    assert docs and float(docs.group(1)) > 0, out
    assert abs(float(docs.group(3)) - float(docs.group(2)) / float(docs.group(1))) < 0.06
    assert re.search(r"\*\*ps-trainer against \(b\) at K=2: [\d.]+x", out)
    assert "| (b) Ray docs | 3: " in out and "| 9 |" in out  # the copy counts
    assert re.search(r"\*\*\(c\), the store plus the plainest update, against \(a\)\*\*.*K=1 \d+%", out)
    assert re.search(r"\*\*ps-trainer against \(c\)\*\*: \d+% at the median cell", out)
    # the ceiling at K=1, S=1: (a)'s time per update plus the pass, against (a)'s
    ceiling = re.search(r"measured in this run: ([\d.]+) ms for resnet50\)\. Against \(a\)'s median "
                        r"rate, that is at most (\d+)% \(resnet50\); ps-trainer reached (\d+)% of \(a\), "
                        r"(\d+)% of that ceiling\.", out)
    assert ceiling, out
    pass_ms, limit, reached, share = ceiling.groups()
    s1k1 = [r for r in rows if r[:2] == ("1", "1")][0]
    rate_a = float(s1k1[4])
    expect = 100 / (1 + rate_a * float(pass_ms) / 1e3)
    assert float(pass_ms) > 0 and abs(int(limit) - expect) <= 1 + 100 * rate_a * 0.05 / 1e3, out  # (ms shown to 0.1)
    assert int(reached) == int(s1k1[6])  # the table's ps-trainer / (a)
    assert abs(int(share) - 100 * int(reached) / int(limit)) <= 1 + 100 / int(limit)


@pytest.mark.slow  # starts Ray or runs a benchmark: the slow set keeps it from rotting
def test_pull_path_smoke_times_the_worker_against_get_plus_memcpy():
    out = run("bench_pull_path.py")
    rows = re.findall(r"^\| (\d) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \| "
                      r"([\d.]+)x \(([\d.]+)-([\d.]+)x\) \| (\d+) \| ([\d.]+) \| ([\d.]+)x \|$",
                      out, re.M)
    assert [r[0] for r in rows] == ["1", "2"], out
    for _, ours, client, base, ratio, q2, q1, q3, mbs, copy, copy_ratio in rows:
        assert float(ours) > 0 and 0 < float(client) and float(base) > 0 and int(mbs) > 0
        assert float(copy) > 0 and float(copy_ratio) > 0
        o, b = float(ours), float(base)  # ms rounded to 0.1: the ratio lies within their bounds
        assert (o - 0.05) / (b + 0.05) - 0.01 <= float(ratio) <= (o + 0.05) / (b - 0.05) + 0.01
        assert float(q1) <= float(q2) <= float(q3)
    assert re.search(r"\*\*Worker pull = at most [\d.]+x the baseline\*\*.* With a landing copy "
                     r"\(a GPU worker's path, `land=\"copy\"`\): at most [\d.]+x\.", out)


@pytest.mark.slow  # starts Ray or runs a benchmark: the slow set keeps it from rotting
def test_chunked_push_smoke_measures_every_chunk_count_against_the_store():
    out = run("bench_chunked_push.py")
    if "nothing to measure" in out:
        pytest.skip("no C compiler with AVX2: the one-pass push cannot run here")
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| (\d+)% \| (\d+)% \|$", out, re.M)
    assert [r[0] for r in rows] == ["1", "2", "4", "8"], out
    base = float(rows[0][1])  # (a) unchunked
    for C, store, ours, vs_base, vs_same in rows:
        assert float(store) > 0 and float(ours) > 0
        # one round: the ratios are the rates' (shown to 0.01 updates/s, percentages to 1)
        assert abs(int(vs_base) - 100 * float(ours) / base) <= 1
        assert abs(int(vs_same) - 100 * float(ours) / float(store)) <= 1
    best = max(rows, key=lambda r: float(r[2]))
    assert re.search(rf"Best chunk count for the one pass: C={best[0]} \({best[2]} updates/s "
                     rf"against {rows[0][2]} unchunked\)", out), out
