"""Invariants that only break in combination: a setting that is right on its own and wrong next to
another (BSP with Downpour's fetch/push knobs, staleness with accumulated gradients, SSP across a
restart, epoch-based settings under BSP with backup workers, published snapshots in the simulator).
Each is checked over the combinations of settings that can break it, not one at a time."""

import pytest

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
