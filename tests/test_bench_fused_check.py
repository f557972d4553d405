"""The one-pass push's benchmark (benchmarks/bench_fused_check.py, issue 15) in its smoke mode:
the kernel builds, computes the compiled loop's numbers, sums each gradient, flags exactly the
gradient with a NaN and leaves the state it read untouched; the table's ratios follow from its
times."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_fused_check.py"
ROW = re.compile(r"^\| (\d) \| (\d) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \| "
                 r"([\d.]+) \| ([\d.]+) \|$", re.M)


@pytest.mark.slow  # compiles the push loop (Inductor) and the C kernel
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_fused_check_prototype_smoke():
    p = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True,
                       timeout=600, cwd=BENCH.parent.parent)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    if "nothing to measure" in p.stdout:
        pytest.skip("no AVX2 or no compiled loop on this machine")
    rows = ROW.findall(p.stdout)
    assert [(int(r[0]), int(r[1])) for r in rows] == [(1, 1), (1, 4), (2, 1), (2, 4)], p.stdout
    for threads, G, now, alone, streaming, ratio, now_each, fused_each in rows:
        now, streaming, G = float(now), float(streaming), int(G)
        assert min(now, float(alone), streaming) > 0
        # times printed to 0.1 ms (each within 0.05 of its value), the ratio to 0.01: the ratio
        # of the values lies between these bounds of the printed times, within 0.005
        lo, hi = (streaming - 0.05) / (now + 0.05), (streaming + 0.05) / max(now - 0.05, 1e-9)
        assert lo - 0.005 <= float(ratio) <= hi + 0.005, (ratio, streaming, now)
        assert abs(float(now_each) - now / G) <= 0.05 + 0.05 / G
        assert abs(float(fused_each) - streaming / G) <= 0.05 + 0.05 / G
    assert "The one pass's new state is within float32 rounding" in p.stdout
    assert "the sums flagged gradients [3]; the state the kernel read is unchanged" in p.stdout
