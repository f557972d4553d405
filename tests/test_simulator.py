"""The deterministic simulator: bit-identical repeats, staleness as queueing theory says, the
coordinating policies on virtual time, stragglers and backup workers."""

import numpy as np
import pyarrow.parquet as pq

import pytest

from ps_trainer.cli import main
from ps_trainer.config import TrainConfig
from ps_trainer.harness.simulate import Simulation
from ps_trainer.trainer.metrics import parts


def sim(tmp_path, name="run", **settings):
    base = dict(simulate=True, model="digits_cnn_small", epochs=2, sim_evals=3, progress=False)
    s = Simulation(TrainConfig.from_dict({**base, **settings}).validate(), run_dir=tmp_path / name,
                   log=lambda s: None)
    return s, s()


def table(path):
    return pq.read_table(path).to_pydict()


def test_same_seed_gives_bit_identical_metrics_and_another_seed_does_not(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert main(["--simulate", "--model", "digits_cnn_small", "--workers", "4", "--epochs", "2",
                     "--sim-evals", "3", "--delay", "exponential", "--delay-mean", "0.005",
                     "--seed", str(seed), "--run-dir", str(tmp_path / name), "--no-progress"]) == 0
    for f in ("pushes.parquet", "evals.parquet"):
        a, b = parts(tmp_path / "a" / f), parts(tmp_path / "b" / f)
        assert a and [p.read_bytes() for p in a] == [p.read_bytes() for p in b], f
        assert table(tmp_path / "a" / f) == table(tmp_path / "b" / f)
    assert table(tmp_path / "a" / "pushes.parquet")["staleness"] != \
        table(tmp_path / "c" / "pushes.parquet")["staleness"]
    rows = table(tmp_path / "a" / "pushes.parquet")
    assert max(rows["delay"]) > 0 and all(d >= 0 for d in rows["delay"])  # recorded


@pytest.mark.parametrize("k", [2, 4, 8])
def test_mean_staleness_is_about_k_minus_1_for_k_equally_fast_workers(tmp_path, k):
    _, summary = sim(tmp_path, workers=k, epochs=3)
    assert summary["mean_staleness"] == pytest.approx(k - 1, rel=0.1, abs=0.15)
    # In lock-step (no jitter) each worker pulls right after its own push, so every push after the
    # first round has seen exactly the K - 1 pushes of the others: a spike at K - 1.
    _, lockstep = sim(tmp_path, "lockstep", workers=k, epochs=3, sim_jitter=0.0)
    st = table(tmp_path / "lockstep" / "pushes.parquet")["staleness"]
    assert sorted(set(st[2 * k:])) == [k - 1] and sorted(st[:2 * k]) == sorted(2 * list(range(k)))


def test_bounded_zero_equals_sync_for_plain_sgd_in_the_simulator(tmp_path):
    k, lr = 4, 0.02
    common = dict(workers=k, momentum=0.0, weight_decay=0.0, epochs=1)
    ssp, s1 = sim(tmp_path, "ssp", policy="bounded", ssp_bound=0, lr=lr, **common)
    bsp, s2 = sim(tmp_path, "bsp", policy="sync", lr=k * lr, **common)
    steps = s1["steps"] // k
    assert s1["versions"] == [k * steps] * 2 and s2["versions"] == [steps] * 2
    assert s2["outcomes"] == {"aggregated": s2["pushes_sent"]}
    for a, b in zip(ssp.shards, bsp.shards):
        np.testing.assert_allclose(a.params, b.params, rtol=1e-4, atol=1e-6)
    waits = table(tmp_path / "ssp" / "pushes.parquet")["wait"]
    assert max(waits) > 0  # the fast workers did wait for the slowest (jittered) one


def test_ssp_bound_caps_how_far_ahead_a_worker_runs(tmp_path):
    s, summary = sim(tmp_path, workers=4, policy="bounded", ssp_bound=2, stragglers=1,
                     straggler_slowdown=3.0)
    rows = table(tmp_path / "run" / "pushes.parquet")
    # the straggler (worker 3) holds the others back: nobody runs ahead freely
    assert summary["accounted"] and max(rows["wait"]) > 0
    fast = [w for w, s_ in zip(rows["worker"], rows["shard"]) if w == 0 and s_ == 0]
    assert len(fast) == summary["steps"] // 4  # everyone still does its share of steps


def test_a_straggler_makes_stale_pushes_and_backup_workers_drop_them(tmp_path):
    _, summary = sim(tmp_path, workers=4, stragglers=1, straggler_slowdown=4.0)
    rows = table(tmp_path / "run" / "pushes.parquet")
    w, st, delay, t = (np.asarray(rows[c]) for c in ("worker", "staleness", "delay", "time"))
    assert (delay[w == 3] > 0).all() and (delay[w != 3] == 0).all()
    # While all four run (each does the same number of steps, so the straggler ends alone), its
    # gradients are the stalest: about 3 fast workers x 4 steps each per straggler step.
    together = t <= min(t[w == i].max() for i in range(4))
    assert st[(w == 3) & together].mean() > 3 * st[(w != 3) & together].mean()
    _, bsp = sim(tmp_path, "bsp", workers=4, stragglers=1, straggler_slowdown=4.0, policy="sync",
                 backup_workers=1)
    rows = table(tmp_path / "bsp" / "pushes.parquet")
    late = [wk for wk, o in zip(rows["worker"], rows["outcome"]) if o == "rejected"]
    assert bsp["accounted"] and len(late) > 0
    assert late.count(3) / len(late) > 0.9  # it is the straggler that gets dropped
    assert set(r for r, o in zip(rows["reason"], rows["outcome"]) if o == "rejected") and \
        all(r.startswith("late") for r, o in zip(rows["reason"], rows["outcome"]) if o == "rejected")


def test_sync_without_backups_drops_nothing_and_steps_once_per_round(tmp_path):
    _, s = sim(tmp_path, workers=4, policy="sync")
    assert s["outcomes"] == {"aggregated": s["pushes_sent"]} and s["max_staleness"] == 0
    assert s["versions"] == [s["steps"] // 4] * 2


@pytest.mark.parametrize("settings", [dict(publish_every=4),
                                      dict(publish_interval=0.035, sim_jitter=0.0)])
def test_published_snapshots_make_pulls_stale_as_on_ray(tmp_path, settings):
    """--publish-every 4 (or --publish-interval of 3.5 virtual steps) serves one snapshot until
    the weights moved 4 versions: even one worker then reads weights 0, 1, 2, 3 versions old."""
    _, fresh = sim(tmp_path, "fresh", workers=1, epochs=1)
    assert fresh["mean_staleness"] == 0
    _, a = sim(tmp_path, "a", workers=1, epochs=1, **settings)
    rows = table(tmp_path / "a" / "pushes.parquet")
    st = [s for s, sh in zip(rows["staleness"], rows["shard"]) if sh == 0]
    assert st[:8] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert a["mean_staleness"] == pytest.approx(1.5, abs=0.05)
    sim(tmp_path, "b", workers=1, epochs=1, **settings)
    assert rows == table(tmp_path / "b" / "pushes.parquet")  # deterministic


@pytest.mark.parametrize("flags", [["--channels-last", "on"], ["--amp", "bf16"],
                                   pytest.param(["--amp", "fp16"], marks=pytest.mark.slow),
                                   ["--push-dtype", "bfloat16"]])
def test_channels_last_and_bf16_workers_train_as_the_default_ones(tmp_path, flags):
    """The GPU defaults, forced on the CPU: channels_last weights (still views of the flat
    buffers, converted to the server's order at pull and push), bf16 autocast, and gradients
    pushed as bfloat16 train digits as well as the float32 default (same seed, within a few
    points)."""
    import json

    common = ["--simulate", "--model", "digits_cnn", "--workers", "2", "--epochs", "4",
              "--no-progress", "--sim-evals", "1"]
    assert main([*common, "--run-dir", str(tmp_path / "base")]) == 0
    assert main([*common, *flags, "--run-dir", str(tmp_path / "flag")]) == 0
    base, flag = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("base", "flag"))
    assert flag["accounted"] and flag["polyak"]["top1"] > 0.9
    assert abs(flag["polyak"]["top1"] - base["polyak"]["top1"]) < 0.05
