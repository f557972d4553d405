"""`ps-train sweep` and `ps-train report` on real simulated runs: a small sweep end to end
(cells/<name>/ run directories, one sweep.parquet row per cell, resumable), its report, and the
report of a single run directory; and reports of sweeps and runs whose files a killed process left
half-written, which list those files and report the rest.

The numbers in report.md are checked against sweep.parquet recomputed here with numpy."""

import itertools
import json
import os
import shutil
import subprocess
import sys

import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ps_trainer.cli import main as ps_train
from ps_trainer.harness.report import MARKER, build_report, main, report
from ps_trainer.harness.sweep import expand, finished, load_spec, run_sweep, write_table

POLICIES, WORKERS, MOMENTA, SEEDS = ("async", "staleness_lr"), (2, 4), (0.0, 0.9), (0, 1)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """16 simulated cells, policy x workers x momentum x seed, run by `ps-train sweep` itself in
    2 processes; then run again, which must skip every cell (resumable)."""
    out = tmp_path_factory.mktemp("sweep")
    spec = out / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "out": str(out / "sweep"), "parallel": 2,
        "base": {"simulate": True, "model": "digits_cnn_small", "epochs": 2, "sim_evals": 4},
        "grids": [{"policy": list(POLICIES), "workers": list(WORKERS), "momentum": list(MOMENTA),
                   "seed": list(SEEDS)}]}))
    lines = []
    assert ps_train(["sweep", str(spec), "--no-report"]) == 0
    sweep = out / "sweep"
    stamps = {p: p.stat().st_mtime_ns for p in sweep.glob("cells/*/summary.json")}
    assert len(stamps) == 16
    run_sweep(spec, log=lines.append, progress=False)
    assert "16 cells, 16 already finished, 0 to run" in lines[0]
    assert stamps == {p: p.stat().st_mtime_ns for p in sweep.glob("cells/*/summary.json")}
    return sweep


def test_sweep_table_has_one_row_per_cell_with_settings_and_results(sweep_dir):
    t = pq.read_table(sweep_dir / "sweep.parquet").to_pydict()
    assert len(t["cell"]) == 16 and len(set(t["cell"])) == 16
    cells = set(zip(t["policy"], t["workers"], t["momentum"], t["seed"]))
    assert cells == set(itertools.product(POLICIES, WORKERS, MOMENTA, SEEDS))
    assert "momentum=0,policy=async,seed=0,workers=2" in t["cell"]  # the grid's key order
    for i, cell in enumerate(t["cell"]):
        s = json.loads((sweep_dir / "cells" / cell / "summary.json").read_text())
        assert t["raw_top1"][i] == s["raw"]["top1"] and t["staleness_max"][i] == s["max_staleness"]
        assert t["max_staleness"][i] == 4  # the setting (drop_stale's bound) keeps its name
        assert t["simulated"][i] and t["pushes_sent"][i] == sum(s["outcomes"].values())


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    img = matplotlib.image.imread(path)  # (H, W, 4) floats
    assert img.shape[0] >= 300 and img.shape[1] >= 500, (path.name, img.shape)
    ink = (img[..., :3] < 0.9).any(axis=-1).mean()  # share of pixels that are not white
    assert ink > 0.02, f"{path.name} looks empty ({ink:.3f} of pixels drawn)"


def _pct(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{100 * v.mean():.2f} ± {100 * v.std(ddof=1):.2f}%"


def test_sweep_report_plots_and_tables(sweep_dir):
    md, pngs = build_report(sweep_dir)
    assert md == sweep_dir / "report.md"
    names = {p.name for p in pngs}
    assert names == {"accuracy_vs_steps.png", "accuracy_vs_time.png", "accuracy_vs_staleness.png",
                     "staleness_hist.png", "raw_vs_polyak.png", "momentum_vs_workers.png"}
    for p in pngs:
        _check_png(p)
    text = md.read_text()
    for name in names:
        assert f"]({name})" in text
    for policy in POLICIES:
        assert f"| {policy} |" in text

    t = pq.read_table(sweep_dir / "sweep.parquet").to_pydict()
    assert f"{len(t['cell'])} cells ({sum(t['diverged'])} diverged" in text
    # Every group's raw and Polyak top-1, mean ± std over the two seeds, as the table shows them.
    for policy, workers, momentum in itertools.product(POLICIES, WORKERS, MOMENTA):
        idx = [i for i in range(len(t["cell"])) if (t["policy"][i], t["workers"][i],
                                                     t["momentum"][i]) == (policy, workers, momentum)]
        assert len(idx) == len(SEEDS)
        raw, pol = _pct([t["raw_top1"][i] for i in idx]), _pct([t["polyak_top1"][i] for i in idx])
        line = next(ln for ln in text.splitlines()
                    if ln.startswith(f"| {policy} | {workers} | {momentum} | {len(SEEDS)} |"))
        assert raw in line and pol in line, (line, raw, pol)

    # Best momentum per number of workers, for policy async.
    for workers in WORKERS:
        means = {m: np.mean([t["raw_top1"][i] for i in range(len(t["cell"]))
                             if (t["policy"][i], t["workers"][i], t["momentum"][i]) == ("async", workers, m)])
                 for m in MOMENTA}
        best = max(means, key=means.get)
        assert any(ln.startswith(f"| {workers} | ") and ln.endswith(f"| **{best}** |")
                   for ln in text.splitlines()), f"best momentum {best} for {workers} workers"

    raw, pol = np.array(t["raw_top1"]), np.array(t["polyak_top1"])
    assert (f"Polyak ≥ raw in {int((pol >= raw).sum())} of {len(raw)} cells; "
            f"mean difference {100 * (pol - raw).mean():+.2f} points") in text


def test_run_report_keeps_summary_and_is_idempotent(sweep_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(next((sweep_dir / "cells").iterdir()), run)
    original = (run / "report.md").read_text()
    assert MARKER not in original

    assert main([str(run)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[0] == str(run / "report.md")
    assert {p.rsplit("/", 1)[-1] for p in printed[1:]} == {"accuracy.png", "staleness.png", "loss.png"}
    for name in ("accuracy.png", "staleness.png", "loss.png"):
        _check_png(run / name)
    first = (run / "report.md").read_text()
    assert first.startswith(original.rstrip())  # the end-of-run table stays on top

    report(run)
    second = (run / "report.md").read_text()
    assert second == first and second.count(MARKER) == 1

    s = json.loads((run / "summary.json").read_text())
    section = second.split(MARKER)[1]
    assert f"| applied | {s['outcomes']['applied']} |" in section
    assert f"| {s['mean_staleness']:.2f} | {s['max_staleness']} | {100 * s['raw']['top1']:.2f}% " \
           f"| {100 * s['polyak']['top1']:.2f}% |" in section


def test_degenerate_sweeps_do_not_crash(sweep_dir, tmp_path):
    """One cell; a cell without pushes; a NaN loss and an unusable run_dir: still a report."""
    one = tmp_path / "one"
    shutil.copytree(sweep_dir, one)
    rows = pq.read_table(one / "sweep.parquet").to_pylist()
    shutil.rmtree(one / rows[1]["run_dir"] / "pushes.parquet")  # a folder of part files
    rows[1]["raw_loss"] = float("nan")
    rows[1]["run_dir"] = "/no/such/dir"  # resolved to cells/<cell>
    pq.write_table(pa.Table.from_pylist(rows[:2]), one / "sweep.parquet")  # one policy, 2 seeds
    md, pngs = build_report(one)
    assert len(pngs) == 5 and "momentum_vs_workers.png" not in {p.name for p in pngs}
    assert "2 cells" in md.read_text()

    pq.write_table(pa.Table.from_pylist(rows[1:2]), one / "sweep.parquet")  # single cell, no pushes
    md, pngs = build_report(one)
    assert "1 cell " in md.read_text() and all(p.is_file() for p in pngs)
    _, pngs = build_report(one / "cells" / rows[1]["cell"])  # its run directory, without pushes
    assert {p.name for p in pngs} == {"accuracy.png", "staleness.png", "loss.png"}


def test_bad_path_names_it(tmp_path):
    (tmp_path / "stray.txt").write_text("x")
    with pytest.raises(ValueError, match=f"{tmp_path}.*summary.json.*sweep.parquet"):
        report(tmp_path)
    with pytest.raises(ValueError, match="no-such-dir"):
        main([str(tmp_path / "no-such-dir")])


def test_a_diverging_cell_is_a_result_not_a_failed_sweep(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "out": str(tmp_path / "sweep"), "parallel": 2,
        "base": {"simulate": True, "model": "digits_cnn_small", "epochs": 3, "sim_evals": 2},
        "grids": [{"lr": [0.05, 100.0]}]}))
    out = run_sweep(spec, log=lambda s: None, progress=False)
    t = pq.read_table(out / "sweep.parquet").to_pydict()
    by_lr = dict(zip(t["lr"], t["diverged"]))
    assert by_lr == {0.05: False, 100.0: True}
    s = json.loads((out / "cells" / "lr=100" / "summary.json").read_text())
    assert "training diverged" in s["diverged"]


# ---- damaged files ----------------------------------------------------------------------------
def _parts(table):
    """The files of a run table (a folder of part files, or one file)."""
    return [table] if table.is_file() else sorted(table.glob("*.parquet"))


def _cut_in_half(table):
    """As a writer killed mid-write leaves it: no footer."""
    for f in _parts(table):
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])


def _garble_footer(table):
    """As the user's race left it: a footer there, but not Thrift ("Couldn't deserialize thrift")."""
    for f in _parts(table):
        data = bytearray(f.read_bytes())
        n = int.from_bytes(data[-8:-4], "little")  # footer length, before the closing b"PAR1"
        data[-8 - n:-8] = b"\xff" * n
        f.write_bytes(bytes(data))


def test_report_of_a_sweep_with_damaged_cells_lists_them_and_reports_the_rest(sweep_dir, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(sweep_dir, damaged)
    cut, garbage = sorted(p.name for p in (damaged / "cells").iterdir())[:2]
    _cut_in_half(damaged / "cells" / cut / "evals.parquet")
    (damaged / "cells" / garbage / "summary.json").write_text('{"raw": {"top1": 0.9')  # cut short

    # The command a user runs, in a process of its own: exit 0 and no traceback.
    done = subprocess.run([sys.executable, "-m", "ps_trainer.cli", "report", str(damaged)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert f"could not read cells/{cut}/evals.parquet: unreadable (" in done.stderr
    assert f"could not read cells/{garbage}/summary.json: unreadable (" in done.stderr

    text = (damaged / "report.md").read_text()
    listed = text.split("## Files that could not be read")[1]
    assert f"- cells/{cut}/evals.parquet: unreadable (Parquet magic bytes not found" in listed
    assert f"- cells/{garbage}/summary.json: unreadable (" in listed and "cell left out" in listed
    # The others are reported: every cell but the garbled one (the cut one's results are in its
    # summary; only its curve is missing), and every plot.
    t = pq.read_table(damaged / "sweep.parquet").to_pydict()
    assert f"{len(t['cell']) - 1} cells (" in text
    for name in ("accuracy_vs_steps", "accuracy_vs_time", "accuracy_vs_staleness", "staleness_hist",
                 "raw_vs_polyak", "momentum_vs_workers"):
        _check_png(damaged / f"{name}.png")


def test_report_of_a_damaged_run_directory_lists_what_it_could_not_read(sweep_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(next((sweep_dir / "cells").iterdir()), run)
    _garble_footer(run / "pushes.parquet")
    (run / "summary.json").write_text("garbage")
    md, pngs = build_report(run)
    assert {p.name for p in pngs} == {"accuracy.png", "staleness.png", "loss.png"}
    _check_png(run / "accuracy.png")  # the evaluations were readable: plotted
    listed = md.read_text().split("## Files that could not be read")[1]
    assert "- pushes.parquet: unreadable (Couldn't deserialize thrift" in listed
    assert "- summary.json: unreadable (" in listed
    assert "evals.parquet" not in listed and "config.yaml" not in listed
    err = capsys.readouterr().err
    assert "could not read pushes.parquet" in err and "could not read summary.json" in err

    # Only what is missing there: a run directory that never got its summary is still one.
    (run / "summary.json").unlink()
    shutil.rmtree(run / "evals.parquet")
    md, _ = build_report(run)
    listed = md.read_text().split("## Files that could not be read")[1]
    assert "- summary.json: missing" in listed and "- evals.parquet: missing" in listed


def test_sweep_table_skips_and_lists_unreadable_cells_and_interrupted_ones_are_not_finished(
        sweep_dir, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(sweep_dir, out)
    cells = expand(load_spec(out / "sweep.yaml"))
    bad_config, interrupted, garbage = (out / "cells" / c.name for c in cells[:3])
    (bad_config / "config.yaml").write_text("workers: [unclosed")
    s = json.loads((interrupted / "summary.json").read_text())
    (interrupted / "summary.json").write_text(json.dumps({**s, "interrupted": True}))
    (garbage / "summary.json").write_text("")

    written, unreadable = write_table(out, cells)
    assert written == len(cells) - 3
    assert [u.split(":")[:2] for u in unreadable] == [[bad_config.name, " config.yaml"],
                                                      [garbage.name, " summary.json"]]
    t = pq.read_table(out / "sweep.parquet").to_pydict()
    assert len(t["cell"]) == written and interrupted.name not in t["cell"]
    # None of the three is finished: a rerun of the sweep runs each again.
    assert not any(finished(d) for d in (bad_config, interrupted, garbage))
    assert all(finished(out / "cells" / c.name) for c in cells[3:])
