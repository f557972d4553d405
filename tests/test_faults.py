"""Faults on real local Ray: a worker process dies mid-run and is replaced on its partition; a
run interrupted with Ctrl-C resumes from its checkpoint with the same versions and schedule; bad
checkpoints are refused before any actor starts, changing nothing."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from ps_trainer.cli import main
from ps_trainer.core import checkpoint

RUN = ["--model", "digits_cnn_small", "--workers", "3", "--ps-shards", "2", "--eval-every", "5",
       "--no-progress"]


@pytest.mark.slow  # a fault drill (10 s): the default run passed 10 min on a slower VM
def test_a_dead_worker_is_replaced_and_the_run_finishes(ray_local, tmp_path):
    run = tmp_path / "run"
    assert main([*RUN, "--epochs", "6", "--crash-worker-at", "1@25", "--run-dir", str(run)]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert len(s["worker_restarts"]) == 1 and "worker 1" in s["worker_restarts"][0]
    # sent = recorded by the shards = rows written + the rows the dead process had not handed
    # to the driver yet (its metrics, drained every 0.5 s; the pushes themselves all arrived)
    assert s["accounted"] and 0 <= s["metrics_rows_lost"] < 100
    assert s["pushes_sent"] == sum(s["outcomes"].values())
    # every worker did its share of steps, the replacement finishing what the dead one left
    steps_each = 90  # 6 epochs x 1437 / (32 x 3), rounded up
    assert all(abs(v - 3 * steps_each) <= 2 for v in s["versions"]), s["versions"]
    assert s["polyak"]["top1"] > 0.9


@pytest.mark.slow  # a fault drill (8 s): the default run passed 10 min on a slower VM
def test_too_many_worker_deaths_stop_the_run_with_a_message(ray_local, tmp_path):
    run = tmp_path / "run"
    assert main([*RUN, "--epochs", "4", "--crash-worker-at", "0@5", "--max-worker-failures", "0",
                 "--run-dir", str(run)]) == 1
    s = json.loads((run / "summary.json").read_text())
    assert s["worker_restarts"] == []


@pytest.mark.slow  # 25 s; the default run keeps test_train_e2e's Ctrl-C test
def test_ctrl_c_checkpoints_and_resume_continues_versions_and_schedule(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    args = [*RUN, "--epochs", "30", "--lr-schedule", "step", "--lr-decay-epochs", "1",
            "--lr-decay", "0.5", "--checkpoint-every", "1", "--run-dir", str(run)]
    proc = subprocess.Popen([sys.executable, "-m", "ps_trainer.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    latest = run / "checkpoints" / "LATEST.json"
    deadline = time.time() + 120
    # checkpoint 0 (the initial weights) is there from the start: wait for a periodic one
    while not (latest.is_file() and json.loads(latest.read_text())["sequence"] >= 1) \
            and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    first = json.loads((run / "summary.json").read_text())
    cut = json.loads(latest.read_text())["versions"]
    assert cut == first["versions"]  # the final checkpoint holds every push that was applied
    rows_before = pq.read_table(run / "pushes.parquet").num_rows

    assert main(["--resume", str(run), "--no-progress", "--max-time", "4"]) == 0
    s = json.loads((run / "summary.json").read_text())
    rows = pq.read_table(run / "pushes.parquet").to_pydict()
    assert len(rows["worker"]) > rows_before and s["accounted"]  # metrics appended
    assert rows["version"][:rows_before] == pq.read_table(run / "pushes.parquet").to_pydict()["version"][:rows_before]
    resumed = list(zip(rows["shard"][rows_before:], rows["version"][rows_before:], rows["lr"][rows_before:]))
    assert all(v > cut[shard] for shard, v, _ in resumed)  # versions continue, never repeat
    assert all(s["versions"][i] > cut[i] for i in range(2))
    # the step schedule continues from the restored version (x0.5 every epoch = 45 updates)
    for shard, v, lr in resumed:
        assert lr == pytest.approx(0.05 * 0.5 ** ((v - 1) // 45)), (v, lr)
    assert max(lr for _, _, lr in resumed) < 0.05


def test_bad_checkpoints_are_refused_before_anything_starts(tmp_path):
    run = tmp_path / "run"
    assert main(["--simulate", "--model", "digits_cnn_small", "--epochs", "1", "--sim-evals", "2",
                 "--no-progress", "--run-dir", str(run)]) == 0
    latest = json.loads((run / "checkpoints" / "LATEST.json").read_text())
    ckpt = run / "checkpoints" / latest["file"]
    good = ckpt.read_bytes()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    def refused(match):
        with pytest.raises(ValueError, match=match):
            checkpoint.load(str(run), model="digits_cnn_small")
        assert main(["--resume", str(run), "--no-progress"]) == 2
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before

    ckpt.write_bytes(good[:len(good) // 2])  # truncated
    refused("corrupt or truncated")
    flipped = bytearray(good)
    flipped[len(good) // 3] ^= 0xFF
    ckpt.write_bytes(bytes(flipped))  # one corrupted byte
    refused("sha256")
    ckpt.write_bytes(good)
    with pytest.raises(ValueError, match="model 'digits_cnn_small'.*builds 'digits_cnn'"):
        checkpoint.load(str(run), model="digits_cnn", fingerprint="0" * 16)
    assert main(["--resume", str(run), "--model", "digits_cnn", "--no-progress"]) == 2
    assert main(["--resume", str(tmp_path / "nowhere")]) == 2


def test_checkpoint_on_a_pyarrow_uri_round_trips(tmp_path):
    run = tmp_path / "run"
    uri = f"file://{tmp_path}/shared/ckpts"
    assert main(["--simulate", "--model", "digits_cnn_small", "--epochs", "1", "--sim-evals", "2",
                 "--no-progress", "--run-dir", str(run), "--checkpoint-dir", uri]) == 0
    states, meta = checkpoint.load(uri, model="digits_cnn_small")
    assert (tmp_path / "shared" / "ckpts" / "checkpoints" / "LATEST.json").is_file()
    assert not (run / "checkpoints").exists()
    assert meta["format"] == 1 and len(states) == 2 and states[0]["version"] > 0


@pytest.mark.parametrize("simulate", [True, False])
def test_a_diverging_run_stops_with_a_message_and_keeps_its_last_good_checkpoint(
        ray_local, tmp_path, simulate):
    run = tmp_path / "run"
    flags = ["--simulate", "--sim-evals", "2", "--checkpoint-steps", "4"] if simulate else \
        ["--workers", "2", "--checkpoint-every", "0.5"]
    rc = main(["--model", "digits_cnn_small", "--epochs", "20", "--lr", "100", "--no-progress",
               "--run-dir", str(run), *flags])
    assert rc == 1
    s = json.loads((run / "summary.json").read_text())
    assert "training diverged" in s["diverged"] and "lower --lr" in s["diverged"]
    assert s["steps"] < 20 * 1437 // 32  # it stopped early
    assert s["outcomes"]["rejected"] > 0 and s["accounted"]  # NaN pushes rejected and counted
    # The simulator checkpoints every 4 steps, so it always has one to keep; a Ray run may
    # diverge before its first (0.5 s): then it must say so rather than write a diverged one.
    if simulate or checkpoint.exists(str(run)):
        states, meta = checkpoint.load(str(run), model="digits_cnn_small")
        assert all(np.isfinite(sd["params"]).all() for sd in states)  # the last good one
        assert f"the last good checkpoint ({meta['sequence']}) is kept" in s["diverged"]
    else:
        assert "is kept" not in s["diverged"]


@pytest.mark.slow  # a fault drill (13 s): the default run passed 10 min on a slower VM
def test_a_dead_shard_comes_back_from_its_checkpoint_and_versions_stay_monotonic(ray_local, tmp_path):
    run = tmp_path / "run"
    assert main([*RUN, "--epochs", "8", "--crash-shard-at", "0@250", "--checkpoint-steps", "10",
                 "--checkpoint-every", "0", "--run-dir", str(run)]) == 0
    s = json.loads((run / "summary.json").read_text())
    (r,) = s["shard_restarts"]
    # Almost always from a periodic checkpoint; on a loaded machine the workers may outrun the
    # driver's first one, and then from checkpoint 0, the initial weights (never from nothing).
    assert r["shard"] == 0 and r["checkpoint"] is not None
    assert 0 < r["restored_version"] <= 250 if r["checkpoint"] >= 1 else r["restored_version"] == 0
    assert r["updates_lost"] == r["top_seen"] - r["restored_version"] >= 0
    assert r["continued_at"] > r["top_seen"]
    # every push accounted: the ones the restored shard forgot are those it lost since the checkpoint
    assert s["accounted"] and s["pushes_sent"] == 3 * 2 * s["steps"] // 3
    rows = pq.read_table(run / "pushes.parquet").to_pydict()
    applied = [v for sh, v, o in zip(rows["shard"], rows["version"], rows["outcome"])
               if sh == 0 and o != "rejected"]
    assert len(applied) == len(set(applied))  # no version of shard 0 was ever issued twice
    rejected = [why for sh, why in zip(rows["shard"], rows["reason"]) if sh == 0 and why]
    assert all(why.startswith("recovering") for why in rejected)
    assert s["polyak"]["top1"] > 0.9
