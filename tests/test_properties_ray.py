"""The invariants of tests/test_properties.py, on the metrics rows of short real Ray runs.

Four worker actors (one a 3x straggler) and two threaded shard actors, for each policy, with
Downpour's knobs set where they meet the policy (BSP with --fetch-every 2, accumulated gradients
read from published snapshots, max_inflight 2 so pushes overlap). Here nothing is simulated: pushes
arrive when the threads get to them. What the rows, the summary and the final checkpoint must say:

- every push has exactly one outcome: one row each, as many as each shard counted per worker;
- staleness = the version when the push arrived - the version read (a push that moved the
  version reports the version after it);
- every version of an asynchronous shard was made by exactly one push (versions 1..V, once each),
  and a BSP step is distinct workers' gradients, exactly K - b of them while no worker had retired;
- under SSP, when a worker's n-th push arrives, every other worker has pushed n - 1 - bound times
  or has finished (exact: under SSP every push is applied, so versions order arrivals);
- the versions each worker read never go back; the final weights and Polyak weights are finite;
- each policy's rule: staleness_lr scales by 1/staleness above 1, drop_stale rejects exactly
  the pushes staler than its bound, DC-ASGD compensates every gradient.

There is no replay oracle here (the rows hold no gradients): the simulator's test has it.
"""

from collections import defaultdict

import numpy as np
import pytest
import yaml

from ps_trainer.cli import main
from ps_trainer.core import checkpoint
from ps_trainer.trainer.metrics import read_table

pytestmark = pytest.mark.slow  # six real runs, about a minute: `make test-slow`

K, SHARDS = 4, 2
POLICIES = {
    "async": ["--push-every", "2", "--publish-every", "2"],
    "staleness_lr": ["--fetch-every", "2"],
    "drop_stale": ["--max-staleness", "2"],
    "dc_asgd": ["--fetch-every", "2", "--push-every", "2"],
    "bounded": ["--ssp-bound", "1", "--push-every", "2"],
    "sync": ["--backup-workers", "1", "--fetch-every", "2"],
}
MOVED = ("applied", "scaled", "compensated")


@pytest.mark.parametrize("policy", list(POLICIES))
def test_invariants_on_the_rows_of_a_real_run(ray_local, tmp_path, policy):
    run = tmp_path / "run"
    assert main(["--model", "digits_cnn_small", "--workers", str(K), "--ps-shards", str(SHARDS),
                 "--epochs", "2", "--batch-size", "32", "--eval-every", "30", "--no-progress",
                 "--stragglers", "1", "--straggler-slowdown", "3", "--max-inflight", "2",
                 "--policy", policy, *POLICIES[policy], "--run-dir", str(run)]) == 0
    s = yaml.safe_load((run / "summary.json").read_text())
    rows = read_table(run / "pushes.parquet").to_pylist()
    states, _ = checkpoint.load(str(run))
    lr = 0.05  # the default --lr, constant schedule

    # One outcome per push: a row each, as many as each shard counted for each worker.
    assert s["accounted"] and len(rows) == s["pushes_sent"] == sum(s["outcomes"].values())
    for sd in states:
        for w, counts in sd["worker_counters"].items():
            assert sum(counts.values()) == sum(
                1 for r in rows if r["worker"] == int(w) and r["shard"] == sd["index"])
        assert np.isfinite(sd["params"]).all() and np.isfinite(sd["average"]).all()

    for r in rows:
        moved = r["outcome"] in MOVED
        if r["outcome"] == "aggregated":  # BSP: on the current version; it may close the step
            assert r["staleness"] == 0 and r["version"] - r["version_read"] in (0, 1), r
        else:
            assert r["staleness"] == r["version"] - moved - r["version_read"], r
        if policy == "staleness_lr":
            assert (r["outcome"] == "scaled") == (r["staleness"] > 1), r
            assert r["lr"] == pytest.approx(lr / max(1, r["staleness"])), r
        if policy == "drop_stale":
            assert (r["outcome"] == "rejected") == (r["staleness"] > 2), r
        if policy == "dc_asgd":
            assert r["outcome"] == "compensated", r  # every read it needed was kept

    for w in range(K):  # the versions a worker read never go back
        for shard in range(SHARDS):
            reads = [r["version_read"] for r in sorted(rows, key=lambda r: r["step"])
                     if r["worker"] == w and r["shard"] == shard]
            assert reads == sorted(reads), (w, shard)

    for sd in states:
        mine = [r for r in rows if r["shard"] == sd["index"]]
        if policy != "sync":  # each version made by exactly one push
            assert sorted(r["version"] for r in mine if r["outcome"] in MOVED) == \
                list(range(1, sd["version"] + 1))
        else:
            check_bsp_steps(mine, sd["version"], K - 1)
        if policy == "bounded":
            check_ssp_bound(mine, bound=1)
    assert policy != "bounded" or max(r["wait"] for r in rows) > 0  # the straggler held them


def check_bsp_steps(rows: list[dict], versions: int, quorum: int) -> None:
    """Each BSP step on one shard: distinct workers' gradients computed on its version, K - b of
    them while every worker was still to push on a later version (none had retired)."""
    steps = defaultdict(list)
    for r in rows:
        if r["outcome"] == "aggregated":
            steps[r["version_read"]].append(r["worker"])
    assert sorted(steps) == list(range(versions)) or sorted(steps) == list(range(versions + 1))
    last_read = {w: max(r["version_read"] for r in rows if r["worker"] == w)
                 for w in {r["worker"] for r in rows}}
    for v, workers in steps.items():
        assert len(set(workers)) == len(workers) <= quorum, (v, workers)
        if all(last > v for last in last_read.values()):
            assert len(workers) == quorum, (v, workers)
    rejected = [r["reason"].split(":")[0] for r in rows if r["outcome"] == "rejected"]
    assert set(rejected) <= {"late", "duplicate"}, set(rejected)


def check_ssp_bound(rows: list[dict], bound: int) -> None:
    """SSP (every push applied, so the version after a push orders arrivals): when worker w's
    n-th push arrives, every other worker o has arrived n - 1 - bound times, or all its pushes
    (it finished, and a finished worker holds nobody back)."""
    order = sorted(rows, key=lambda r: r["version"])
    total = defaultdict(int)
    for r in order:
        total[r["worker"]] += 1
    arrived = defaultdict(int)
    for r in order:
        w = r["worker"]
        n = arrived[w] + 1
        for o in total:
            if o != w:
                assert arrived[o] >= min(total[o], n - 1 - bound), (w, n, o, dict(arrived))
        arrived[w] = n
