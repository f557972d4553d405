"""The new policies on real local Ray actors: SSP and BSP hold pulls inside the threaded shard
actors without deadlock, DC-ASGD finds the weights each worker read, and injected stragglers are
recorded. Every push is accounted for."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from ps_trainer.cli import main


@pytest.mark.parametrize("flags,expect", [
    (["--policy", "bounded", "--ssp-bound", "1"], {"applied"}),
    (["--policy", "sync", "--backup-workers", "1"], {"aggregated", "rejected"}),
    (["--policy", "dc_asgd"], {"compensated"}),
])
def test_policy_runs_on_ray_with_a_straggler(ray_local, tmp_path, flags, expect):
    run = tmp_path / "run"
    argv = ["--model", "digits_cnn_small", "--workers", "3", "--epochs", "4", "--eval-every", "5",
            "--stragglers", "1", "--straggler-slowdown", "3", "--delay", "uniform",
            "--delay-mean", "0.002", "--run-dir", str(run), "--no-progress", *flags]
    assert main(argv) == 0
    s = yaml.safe_load((run / "summary.json").read_text())
    rows = {k: np.asarray(v) for k, v in pq.read_table(run / "pushes.parquet").to_pydict().items()}
    assert s["accounted"] and len(rows["worker"]) == s["pushes_sent"] == sum(s["outcomes"].values())
    assert set(s["outcomes"]) <= expect | {"applied"} and expect & set(s["outcomes"])
    assert (rows["delay"][rows["worker"] == 2] > 0).all()  # the straggler's injected delay
    assert s["polyak"]["top1"] > 0.5, s
    if "sync" in flags:
        rejected = rows["outcome"] == "rejected"
        assert all(r.startswith("late") for r in rows["reason"][rejected])
        # a step sums at most K - b = 2 gradients, and at least 1 (once the fast workers have
        # finished, the straggler's quorum is itself)
        for i, v in enumerate(s["versions"]):
            accepted = int((~rejected & (rows["shard"] == i)).sum())
            assert (accepted + 1) // 2 <= v <= accepted
    if "bounded" in flags:
        assert rows["wait"].max() > 0  # fast workers were held back by the straggler
