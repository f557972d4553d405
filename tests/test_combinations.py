"""Invariants that only break in combination: a setting that is right on its own and wrong next to
another (BSP with Downpour's fetch/push knobs, staleness with accumulated gradients, SSP across a
restart, epoch-based settings under BSP with backup workers, published snapshots in the simulator).
Each is checked over the combinations of settings that can break it, not one at a time."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from ps_trainer.cli import main
from ps_trainer.config import TrainConfig
from ps_trainer.core import checkpoint
from ps_trainer.harness.simulate import Simulation
from ps_trainer.trainer.plan import prepare, shard_options

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


# ---- every policy x Downpour's knobs x published snapshots, in the simulator -----------------------
POLICIES = {"async": {}, "staleness_lr": {}, "drop_stale": {"max_staleness": 2}, "dc_asgd": {},
            "bounded": {"ssp_bound": 1},
            # two slow workers: the fast one pushes twice on a version before they push once
            "sync": {"backup_workers": 1, "stragglers": 2, "straggler_slowdown": 3.0}}
KNOBS = [(1, 1), (2, 1), (1, 3), (3, 2)]  # (fetch_every, push_every)
K = 3


def simulation(path, kind=Simulation, **settings) -> Simulation:
    cfg = TrainConfig.from_dict({**BASE, "simulate": True, "workers": K, "epochs": 1,
                                 "sim_evals": 1, "stragglers": 1, "straggler_slowdown": 2.0,
                                 **settings}).validate()
    return kind(cfg, run_dir=path, log=lambda m: None)


def record_pulls(sim: Simulation) -> dict:
    """worker -> [(its step, versions it read, shard versions then, its clock, every worker's
    (clock, finished))] at each of its pulls."""
    log = {w.id: [] for w in sim.workers}
    steps_each = sim.plan.steps_per_worker
    for w in sim.workers:
        def pull(w=w, pull=w.pull):
            pull()
            log[w.id].append((w.step_count, list(w.versions), [s.version for s in sim.shards],
                              w.clock, [(o.clock, o.step_count >= steps_each) for o in sim.workers]))
        w.pull = pull
    return log


@pytest.mark.parametrize("fetch_every,push_every", KNOBS)
@pytest.mark.parametrize("policy", list(POLICIES))
def test_invariants_hold_over_every_combination(tmp_path, policy, fetch_every, push_every):
    for publish_every in (1, 3):
        sim = simulation(tmp_path / f"publish{publish_every}", policy=policy,
                         fetch_every=fetch_every, push_every=push_every,
                         publish_every=publish_every, **POLICIES[policy])
        pulls = record_pulls(sim)
        summary = sim()
        rows = pq.read_table(sim.run.path / "pushes.parquet").to_pylist()
        where = f"{policy} fetch {fetch_every} push {push_every} publish {publish_every}"
        assert summary["accounted"] and rows, where  # every push: exactly one recorded outcome
        coordinates = policy in ("bounded", "sync")
        lags = [n - r for log in pulls.values() for _, read, now, *_ in log
                for n, r in zip(now, read)]
        assert max(lags) == (0 if coordinates or publish_every == 1 else publish_every - 1), where
        for i, log in pulls.items():
            for step, read, now, clock, others in log:
                # A snapshot is at most publish_every - 1 versions old; current under SSP/BSP.
                lag = [n - r for n, r in zip(now, read)]
                assert all(0 <= x < (1 if coordinates else publish_every) for x in lag), where
                if policy == "bounded":  # SSP: at a pull, at most `bound` clocks ahead
                    active = [c for c, done in others if not done]
                    assert clock - min(active) <= POLICIES[policy]["ssp_bound"], where
        for r in rows:
            # The version a push carries: that of the weights its window's first step computed on.
            first = r["step"] - push_every
            read = [v for step, v, *_ in pulls[r["worker"]] if step <= first][-1][r["shard"]]
            assert r["version_read"] == read, (where, r)
            moved = r["outcome"] in ("applied", "scaled", "compensated")
            if r["outcome"] != "aggregated":
                assert r["staleness"] == r["version"] - moved - read, (where, r)
        outcomes = {r["outcome"] for r in rows}
        if policy == "dc_asgd":  # every gradient is compensated against the weights it read
            assert outcomes == {"compensated"}, where
        if policy == "drop_stale":
            assert all(r["staleness"] > 2 for r in rows if r["outcome"] == "rejected"), where
        if policy == "sync":  # each step: the mean of at most K - b distinct workers' gradients
            steps = {}
            for r in rows:
                if r["outcome"] == "aggregated":
                    steps.setdefault((r["shard"], r["version_read"]), []).append(r["worker"])
            assert all(len(set(ws)) == len(ws) <= K - 1 for ws in steps.values()), where
            assert summary["versions"] == [len([k for k in steps if k[0] == i]) for i in range(2)]
            assert {r["reason"].split(":")[0] for r in rows if r["outcome"] == "rejected"} <= \
                {"late", "duplicate"}, where


@pytest.mark.parametrize("settings", [
    dict(policy="async", fetch_every=1, push_every=3, publish_every=3),
    dict(policy="sync", backup_workers=1, fetch_every=2, push_every=1),
    dict(policy="bounded", ssp_bound=1, fetch_every=1, push_every=2, publish_every=2,
         publish_interval=0.015),
    # DC-ASGD compensates against the weights each gradient in flight was read on: the shards'
    # checkpoint keeps them, else a resumed run applies those gradients uncompensated
    dict(policy="dc_asgd", fetch_every=2, push_every=1, stragglers=1, straggler_slowdown=3.0),
    # a pull requested a step early and not landed yet is part of the checkpoint
    dict(policy="async", prefetch=True, fetch_every=1, push_every=2, publish_every=2),
])
def test_an_interrupted_and_resumed_simulation_is_bit_identical_in_combination(tmp_path, settings):
    """The accumulation window, the published snapshots and the SSP/BSP state all survive a
    checkpoint: cut after the first periodic checkpoint and resumed, the run ends as the whole."""
    import signal

    class Cut(Simulation):
        def checkpoint(self):
            path = super().checkpoint()
            if self.sequence == 1:
                signal.raise_signal(signal.SIGINT)  # a Ctrl-C right after it
            return path

    settings = {**settings, "epochs": 2, "checkpoint_steps": 23}
    simulation(tmp_path / "whole", **settings)()
    cut = simulation(tmp_path / "cut", kind=Cut, **settings)
    assert cut()["interrupted"]
    resumed = TrainConfig.from_dict({**cut.cfg.to_dict(), "resume": str(tmp_path / "cut"),
                                     "run_dir": str(tmp_path / "cut")}).validate()
    Simulation(resumed, log=lambda m: None)()
    for f in ("pushes.parquet", "evals.parquet"):
        assert pq.read_table(tmp_path / "whole" / f).equals(pq.read_table(tmp_path / "cut" / f)), f
    for a, b in zip(checkpoint.load(str(tmp_path / "whole"))[0],
                    checkpoint.load(str(tmp_path / "cut"))[0]):
        assert a["version"] == b["version"] and a["clocks"] == b["clocks"]
        np.testing.assert_array_equal(a["params"], b["params"])


# ---- SSP across a worker restart and a resume, on real Ray ----------------------------------------
def straggler_pushes_before(rows: dict, t: float, straggler: int) -> int:
    return sum(1 for w, sh, tt in zip(rows["worker"], rows["shard"], rows["time"])
               if w == straggler and sh == 0 and tt <= t)


@pytest.mark.slow  # a worker restart and a resume (20 s): the default run passed 10 min on a slower VM
def test_ssp_holds_across_a_worker_restart_and_a_resume_on_ray(ray_local, tmp_path):
    """SSP (bound 1) with a 4x straggler (worker 2): the others may never be more than one clock
    ahead of it, so when one makes its last push the straggler has made nearly all of its own.
    That must hold for the replacement of a worker that died at step 10 (its clock continues from
    the shards' count, not from 0), and for every worker of a resumed run (whose checkpoint was
    taken with every worker retired, and whose clocks continue)."""
    run, bound = tmp_path / "run", 1
    common = ["--model", "digits_cnn_small", "--workers", "3", "--ps-shards", "2", "--eval-every",
              "30", "--no-progress", "--policy", "bounded", "--ssp-bound", str(bound),
              "--stragglers", "1", "--straggler-slowdown", "4"]
    assert main([*common, "--epochs", "2", "--crash-worker-at", "1@10", "--run-dir", str(run)]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert len(s["worker_restarts"]) == 1 and s["accounted"]
    rows = pq.read_table(run / "pushes.parquet").to_pydict()
    steps = 30  # 2 epochs x 1437 / (32 x 3), rounded up
    last = max(t for w, t in zip(rows["worker"], rows["time"]) if w == 1)  # the replacement's
    # At its last pull (clock steps - 1) the straggler had pushed steps - 1 - bound times; a
    # push's row is timed just after it is sent, hence one of slack.
    assert straggler_pushes_before(rows, last, 2) >= steps - bound - 2
    assert main(["--resume", str(run), "--epochs", "4", "--no-progress"]) == 0
    rows = pq.read_table(run / "pushes.parquet").to_pydict()
    for fast in (0, 1):
        last = max(t for w, t in zip(rows["worker"], rows["time"]) if w == fast)
        assert straggler_pushes_before(rows, last, 2) >= 2 * steps - bound - 2, fast
