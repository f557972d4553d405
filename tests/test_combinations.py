"""Invariants that only break in combination: a setting that is right on its own and wrong next to
another (BSP with Downpour's fetch/push knobs, staleness with accumulated gradients, SSP across a
restart, epoch-based settings under BSP with backup workers, published snapshots in the simulator).
Each is checked over the combinations of settings that can break it, not one at a time."""

import json

import pyarrow.parquet as pq
import pytest

from ps_trainer.cli import main
from ps_trainer.config import TrainConfig
from ps_trainer.trainer.run import prepare, shard_options

BASE = dict(model="digits_cnn_small", progress=False)


# ---- epoch-based settings count the versions an epoch of data makes -------------------------------
@pytest.mark.parametrize("policy,per_version", [("sync", 3), ("bounded", 1), ("async", 1)])
def test_epoch_based_settings_follow_the_versions_an_epoch_makes(policy, per_version):
    """Under BSP with K = 4 workers and b = 1 backup, a version is one step on K - b = 3 gradients,
    so an epoch makes 3 times fewer versions than pushes: the lr decay ("x0.96 every 8 epochs"),
    the warm-up and the Polyak start count in those versions. SSP is async-like: one per push."""
    cfg = TrainConfig.from_dict({**BASE, "workers": 4, "policy": policy, "backup_workers": 1,
                                 "batch_size": 16, "push_every": 2, "lr_schedule": "step",
                                 "lr_decay_epochs": 8, "lr_decay": 0.96, "warmup_epochs": 1,
                                 "polyak_start_epochs": 2}).validate()
    plan = prepare(cfg)
    n_train = len(plan.data.y_train)
    per_epoch = n_train / (16 * 2 * per_version)  # versions per epoch
    assert plan.updates_per_epoch == pytest.approx(per_epoch)
    options = shard_options(plan)
    assert options["schedule"].step_size == round(8 * per_epoch)
    assert options["schedule"].warmup == round(per_epoch)
    assert options["averager"].start == round(2 * per_epoch)


# ---- SSP across a worker restart and a resume, on real Ray ----------------------------------------
def straggler_pushes_before(rows: dict, t: float, straggler: int) -> int:
    return sum(1 for w, sh, tt in zip(rows["worker"], rows["shard"], rows["time"])
               if w == straggler and sh == 0 and tt <= t)


def test_ssp_holds_across_a_worker_restart_and_a_resume_on_ray(ray_local, tmp_path):
    """SSP (bound 1) with a 4x straggler (worker 2): the others may never be more than one clock
    ahead of it, so when one makes its last push the straggler has made nearly all of its own.
    That must hold for the replacement of a worker that died at step 15 (its clock continues from
    the shards' count, not from 0), and for every worker of a resumed run (whose checkpoint was
    taken with every worker retired, and whose clocks continue)."""
    run, bound = tmp_path / "run", 1
    common = ["--model", "digits_cnn_small", "--workers", "3", "--ps-shards", "2", "--eval-every",
              "30", "--no-progress", "--policy", "bounded", "--ssp-bound", str(bound),
              "--stragglers", "1", "--straggler-slowdown", "4"]
    assert main([*common, "--epochs", "3", "--crash-worker-at", "1@15", "--run-dir", str(run)]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert len(s["worker_restarts"]) == 1 and s["accounted"]
    rows = pq.read_table(run / "pushes.parquet").to_pydict()
    steps = 45  # 3 epochs x 1437 / (32 x 3), rounded up
    last = max(t for w, t in zip(rows["worker"], rows["time"]) if w == 1)  # the replacement's
    # At its last pull (clock steps - 1) the straggler had pushed steps - 1 - bound times; a
    # push's row is timed just after it is sent, hence one of slack.
    assert straggler_pushes_before(rows, last, 2) >= steps - bound - 2
    assert main(["--resume", str(run), "--epochs", "6", "--no-progress"]) == 0
    rows = pq.read_table(run / "pushes.parquet").to_pydict()
    for fast in (0, 1):
        last = max(t for w, t in zip(rows["worker"], rows["time"]) if w == fast)
        assert straggler_pushes_before(rows, last, 2) >= 2 * steps - bound - 2, fast
