"""Checkpoints: atomic, verified, code-free files; exact resume of an interrupted simulation;
refusal (and no change) on a corrupt, truncated or foreign checkpoint; export."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ps_trainer.models import build

from ps_trainer.cli import main
from ps_trainer.core import checkpoint

SIM = ["--simulate", "--model", "digits_cnn_small", "--workers", "4", "--epochs", "10",
       "--sim-evals", "20", "--checkpoint-steps", "40", "--no-progress"]


def ps_train(*args):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "ps_trainer.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow  # an interrupt drill (16 s): the default run passed 10 min on a slower VM
def test_interrupted_and_resumed_simulation_ends_bit_identical(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*SIM, "--run-dir", str(whole)]) == 0
    proc = ps_train(*SIM, "--run-dir", str(cut))
    latest = cut / "checkpoints" / "LATEST.json"
    deadline = time.time() + 60
    while not latest.is_file() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # a user's Ctrl-C, somewhere mid-run
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    cut_at = json.loads(latest.read_text())["versions"]
    final = json.loads((whole / "checkpoints" / "LATEST.json").read_text())["versions"]
    assert 0 < cut_at[0] < final[0], (cut_at, final)  # it really stopped part-way
    assert main(["--resume", str(cut), "--no-progress"]) == 0
    for f in ("pushes.parquet", "evals.parquet"):
        assert pq.read_table(whole / f).equals(pq.read_table(cut / f)), f
    a, _ = checkpoint.load(str(whole))
    b, _ = checkpoint.load(str(cut))
    for x, y in zip(a, b):
        assert x["version"] == y["version"] and x["counters"] == y["counters"]
        for k in ("params", "momentum", "average", "buffers"):
            np.testing.assert_array_equal(x[k], y[k])
    s = json.loads((cut / "summary.json").read_text())
    assert s["accounted"] and not s["interrupted"]


@pytest.mark.parametrize("weights", ["raw", "polyak"])
def test_export_loads_strictly_and_scores_what_the_run_reported(tmp_path, weights):
    from ps_trainer.config import TrainConfig
    from ps_trainer.trainer.evaluate import evaluate
    from ps_trainer.trainer.plan import prepare

    run = tmp_path / "run"
    assert main(["--simulate", "--model", "digits_cnn_small", "--epochs", "3", "--sim-evals", "2",
                 "--no-progress", "--run-dir", str(run)]) == 0
    out = tmp_path / f"{weights}.pt"
    assert main(["export", str(run), "--weights", weights, "--out", str(out)]) == 0
    model = build("digits_cnn_small", num_classes=10)
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    data = prepare(TrainConfig(model="digits_cnn_small")).data
    top1 = evaluate(model, data.x_test, data.y_test, in_channels=1, image_size=8)["top1"]
    summary = json.loads((run / "summary.json").read_text())
    assert top1 == pytest.approx(summary[weights]["top1"])  # the very network that was evaluated
    assert main(["export", str(run), "--weights", "best", "--out", str(out)]) == 2
