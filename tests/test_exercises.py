"""The checks of docs/exercises.md: five small changes a student makes to ps_trainer, one test group
each. A group is skipped, saying what to add where, until the student's code exists; then it must
pass. Run one with `pytest tests/test_exercises.py -k policy` (or averaging, delay, metric, plot).

Every lookup of the student's code happens inside a test, by name, on the module it belongs in,
so that tests/test_exercise_solutions.py can put examples/solutions/ in place (monkeypatch) and
run these same functions: the checks cannot rot while the exercises stay undone in ps_trainer.
"""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from ps_trainer.config import TrainConfig
from ps_trainer.core import policy, polyak
from ps_trainer.core.optim import NesterovMomentum
from ps_trainer.core.policy import Decision, make_policy
from ps_trainer.core.schedule import LRSchedule
from ps_trainer.core.shard import ShardState
from ps_trainer.harness import report
from ps_trainer.trainer import summary
from ps_trainer.worker import delays


def need(module, name: str, exercise: int, what: str):
    """The student's `name` in `module`, or skip the test saying what to write where."""
    found = getattr(module, name, None)
    if found is None:
        pytest.skip(f"exercise {exercise} not done yet: add {what} `{name}` to "
                    f"{module.__name__.replace('.', '/')}.py (docs/exercises.md)")
    return found


def simulate(tmp_path, **settings) -> tuple[dict, dict]:
    """A short simulator run (digits, 4 workers, half an epoch: under a second once warm):
    (summary, the push rows as lists)."""
    from ps_trainer.harness.simulate import Simulation

    base = dict(simulate=True, model="digits_cnn_small", workers=4, epochs=0.5, sim_evals=2,
                progress=False)
    cfg = TrainConfig.from_dict({**base, **settings}).validate()
    result = Simulation(cfg, run_dir=tmp_path / "run", log=lambda s: None)()
    return result, pq.read_table(tmp_path / "run" / "pushes.parquet").to_pydict()


# ---- exercise 1: a staleness policy, lr * exp(-staleness / tau) --------------------------------
def test_policy_decides_by_the_formula():
    cls = need(policy, "ExponentialStalenessLR", 1, "the policy class")
    assert cls().tau == 4.0
    p = cls(tau=2.0)
    assert p.decide(0) == Decision("applied", 1.0)
    for s in (1, 2, 6):
        d = p.decide(s)
        assert d.outcome == "scaled" and d.lr_scale == pytest.approx(math.exp(-s / 2.0), rel=1e-12)
    assert p.decide(2).lr_scale == pytest.approx(0.36788, abs=1e-5)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="tau"):
            cls(tau=bad)
    assert policy.POLICIES.get("staleness_exp") is cls, \
        "register it: add \"staleness_exp\": ExponentialStalenessLR to POLICIES in policy.py"
    assert make_policy("staleness_exp", tau=2.0) == p


def test_policy_scales_the_lr_on_a_real_shard():
    """Worker 0 reads version 0, then pushes five gradients computed on that read while the
    weights move on: staleness 0, 1, 2, 3, 4, and lr = 0.1 * exp(-staleness / 4)."""
    cls = need(policy, "ExponentialStalenessLR", 1, "the policy class")
    w0 = np.linspace(-1, 1, 8, dtype=np.float32)
    shard = ShardState(0, w0, None, optimizer=NesterovMomentum(0.0, 0.0), schedule=LRSchedule(0.1),
                       policy=cls(tau=4.0))
    g = np.full(8, 0.5, np.float32)
    results = [shard.push(g, 0, worker=0) for _ in range(5)]
    assert [r.staleness for r in results] == [0, 1, 2, 3, 4]
    assert [r.outcome for r in results] == ["applied"] + ["scaled"] * 4
    np.testing.assert_allclose([r.lr for r in results],
                               [0.1, 0.0778801, 0.0606531, 0.0472367, 0.0367879], rtol=1e-5)
    np.testing.assert_allclose(shard.params, w0 - 0.5 * sum(r.lr for r in results), rtol=1e-6)
    assert shard.stats()["counters"] == {"applied": 1, "scaled": 4}


def test_policy_by_name_in_the_simulator(tmp_path):
    """`--policy staleness_exp` in a lock-step run of 4 workers: after the first round every push
    is 3 versions stale, so its lr is 0.05 * exp(-3 / 4) = 0.023618."""
    need(policy, "ExponentialStalenessLR", 1, "the policy class")
    result, rows = simulate(tmp_path, policy="staleness_exp", lr=0.05, sim_jitter=0.0)
    assert result["accounted"] and result["policy"] == "staleness_exp"
    stale, lr = np.array(rows["staleness"]), np.array(rows["lr"])
    np.testing.assert_allclose(lr, 0.05 * np.exp(-stale / 4.0), rtol=1e-12)
    outcome = np.array(rows["outcome"])
    assert set(outcome[stale == 0]) == {"applied"} and set(outcome[stale > 0]) == {"scaled"}
    np.testing.assert_allclose(lr[stale == 3], 0.023618, atol=1e-6)
    assert (stale == 3).mean() > 0.8


# ---- exercise 2: an averaging rule, polynomial-decay averaging ----------------------------------
def test_averaging_weight_follows_the_formula():
    cls = need(polyak, "PolynomialAverage", 2, "the averager class")
    assert (cls().eta, cls().start) == (3.0, 0)
    avg = cls(eta=3.0)
    assert [avg.weight(v) for v in (1, 2, 3, 4)] == pytest.approx([1.0, 0.8, 4 / 6, 4 / 7])
    late = cls(eta=3.0, start=10)
    assert [late.weight(v) for v in (5, 10, 11, 12)] == pytest.approx([1.0, 1.0, 1.0, 0.8])
    mean = polyak.PolyakAverage(decay=None, start=5)  # eta = 0 is the running mean
    running = cls(eta=0.0, start=5)
    assert [running.weight(v) for v in range(20)] == [mean.weight(v) for v in range(20)]
    for bad in (dict(eta=-1.0), dict(start=-1)):
        with pytest.raises(ValueError):
            cls(**bad)


def test_averaging_on_a_real_shard():
    """Plain SGD with lr 1 moves the weights to 4, 8, 2, 6; with eta = 1 the average after t
    updates weights iterate i by i: (1*4 + 2*8 + 3*2 + 4*6) / 10 = 5 after four."""
    cls = need(polyak, "PolynomialAverage", 2, "the averager class")
    shard = ShardState(0, np.zeros(3, np.float32), None, optimizer=NesterovMomentum(0.0, 0.0),
                       schedule=LRSchedule(1.0), averager=cls(eta=1.0))
    seen, w = [], 0.0
    for target in (4.0, 8.0, 2.0, 6.0):
        shard.push(np.full(3, w - target, np.float32), shard.version, worker=0)
        w = target
        seen.append(float(shard.average[0]))
        np.testing.assert_array_equal(shard.params, np.full(3, target, np.float32))
    assert seen == pytest.approx([4.0, 20 / 3, 13 / 3, 5.0], rel=1e-6)
    served, version = shard.snapshot(averaged=True)
    assert version == 4 and served[:3] == pytest.approx([5.0] * 3, rel=1e-6)


# ---- exercise 3: a delay model, log-normal (heavy-tailed) stalls --------------------------------
def test_delay_draws_by_the_formula():
    fn = need(delays, "lognormal", 3, "the delay function")
    mu = math.log(0.01) - 0.5  # sigma = 1: the mean is exp(mu + sigma**2 / 2) = 0.01
    assert fn(np.random.default_rng(0), 0.01) == pytest.approx(0.00687791, rel=1e-5)
    assert delays.DELAYS.get("lognormal") is fn, \
        "register it: add \"lognormal\": lognormal to DELAYS in worker/delays.py"
    assert "lognormal" in TrainConfig.CHOICES["delay"], \
        "let --delay take it: add \"lognormal\" to TrainConfig.CHOICES[\"delay\"] in config.py"
    step = delays.StepDelay("lognormal", mean=0.01, seed=0)  # one draw of rng.lognormal per step
    np.testing.assert_allclose([step.extra() for _ in range(5)],
                               np.random.default_rng(0).lognormal(mu, 1.0, size=5), rtol=1e-12)
    rng = np.random.default_rng(1)
    x = np.array([fn(rng, 0.01) for _ in range(20000)])
    assert x.min() > 0 and x.mean() == pytest.approx(0.01, rel=0.05)
    assert np.median(x) == pytest.approx(0.01 * math.exp(-0.5), rel=0.05)  # 6.07 ms
    assert (x > 0.05).mean() == pytest.approx(0.0175, abs=0.003)  # exponential: 0.0067
    assert fn(np.random.default_rng(0), 0.01, sigma=0.5) == pytest.approx(
        np.random.default_rng(0).lognormal(math.log(0.01) - 0.125, 0.5), rel=1e-12)


def test_delay_by_name_in_the_simulator(tmp_path):
    """`--delay lognormal --delay-mean 0.005`: worker i's delays are exactly the draws of its
    own generator (seeded i with --seed 0), one per step."""
    need(delays, "lognormal", 3, "the delay function")
    result, rows = simulate(tmp_path, workers=2, delay="lognormal", delay_mean=0.005)
    assert result["accounted"]
    for w in (0, 1):
        mine = [d for d, wk, sh in zip(rows["delay"], rows["worker"], rows["shard"])
                if wk == w and sh == 0]
        expected = np.random.default_rng(w).lognormal(math.log(0.005) - 0.5, 1.0, size=len(mine))
        np.testing.assert_allclose(mine, expected, rtol=1e-12)
        assert len(mine) == result["steps"] // 2


# ---- exercise 4: a metric, per-worker staleness percentiles in the summary ----------------------
def test_metric_percentiles_by_the_formula():
    fn = need(summary, "staleness_percentiles", 4, "the metric function")
    pushes = {"worker": np.array([0, 0, 0, 0, 0, 1, 1, 1, 2]),
              "staleness": np.array([0, 1, 2, 3, 10, -1, 4, 4, -1]),
              "shard": np.zeros(9, int), "version": np.arange(9)}
    got = fn(pushes)
    assert got == {"0": {"p50": 2.0, "p95": pytest.approx(8.6)}, "1": {"p50": 4.0, "p95": 4.0}}
    assert list(got) == ["0", "1"]  # workers in ascending order, as JSON keys (strings)
    empty = {k: np.zeros(0, np.int64) for k in ("worker", "staleness", "shard", "version")}
    assert fn(empty) == {}
    assert summary.SUMMARY_METRICS.get("staleness_percentiles") is fn, \
        "register it: add \"staleness_percentiles\": staleness_percentiles to SUMMARY_METRICS"


def test_metric_in_a_simulated_runs_summary(tmp_path):
    """In lock-step every push after the first round is K - 1 = 3 versions stale: p50 = p95 = 3
    for each of the 4 workers. With a 4x straggler the means hardly differ (its pushes after the
    others finished are fresh), but its p95 is four times theirs: 12 against 3."""
    need(summary, "staleness_percentiles", 4, "the metric function")
    result, _ = simulate(tmp_path, sim_jitter=0.0)
    expected = {str(w): {"p50": 3.0, "p95": 3.0} for w in range(4)}
    assert result["staleness_percentiles"] == expected
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["staleness_percentiles"] == expected
    result, _ = simulate(tmp_path / "straggler", stragglers=1, straggler_slowdown=4.0)
    p = result["staleness_percentiles"]
    assert p["3"]["p95"] >= 3 * max(p[w]["p95"] for w in "012")


# ---- exercise 5: a plot, staleness over time per worker -----------------------------------------
def test_plot_draws_one_line_per_worker():
    import matplotlib.pyplot as plt

    fn = need(report, "staleness_over_time", 5, "the plot function")
    pushes = {"time": np.array([2.0, 1.0, 3.0, 1.5, 2.5, 4.0]),
              "worker": np.array([0, 0, 0, 1, 1, 1]),
              "staleness": np.array([2, 0, -1, 1, 3, 5]),
              "step": np.array([2, 1, 3, 1, 2, 3]), "loss": np.ones(6)}
    fig, ax = plt.subplots()
    series = fn(pushes, ax)
    assert sorted(series) == [0, 1]
    np.testing.assert_allclose(series[0][0], [0.0, 1.0])  # seconds since the first push
    np.testing.assert_array_equal(series[0][1], [0, 2])
    np.testing.assert_allclose(series[1][0], [0.5, 1.5, 3.0])
    np.testing.assert_array_equal(series[1][1], [1, 3, 5])
    assert [line.get_label() for line in ax.lines] == ["worker 0", "worker 1"]
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), [1, 3, 5])
    assert "staleness" in ax.get_ylabel() and "since the first push" in ax.get_xlabel()
    plt.close(fig)
    fig, ax = plt.subplots()
    assert fn({}, ax) == {} and not ax.lines  # an unreadable table: an empty plot, no error
    plt.close(fig)
    assert report.RUN_PLOTS.get("staleness_over_time") is fn, \
        "register it: add \"staleness_over_time\": staleness_over_time to RUN_PLOTS in report.py"


def test_plot_in_a_run_report(tmp_path):
    """`ps-train report RUN` draws it: while all four run, a 4x straggler's line sits far above
    the others' (then it finishes alone, and its last pushes are fresh)."""
    import matplotlib.pyplot as plt

    fn = need(report, "staleness_over_time", 5, "the plot function")
    simulate(tmp_path, stragglers=1, straggler_slowdown=4.0)
    run = tmp_path / "run"
    md, written = report.build_report(run)
    png = run / "staleness_over_time.png"
    assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![staleness_over_time](staleness_over_time.png)" in md.read_text()
    pushes = {k: np.asarray(v)
              for k, v in pq.read_table(run / "pushes.parquet").to_pydict().items()}
    fig, ax = plt.subplots()
    series = fn(pushes, ax)
    plt.close(fig)
    assert sorted(series) == [0, 1, 2, 3]
    assert all(np.all(np.diff(x) >= 0) for x, _ in series.values())  # in time order
    t, worker = pushes["time"], pushes["worker"]
    together = min(t[worker == w].max() for w in range(4)) - t.min()  # until the first finishes
    mean = {w: y[x <= together].mean() for w, (x, y) in series.items()}
    assert mean[3] > 3 * max(mean[0], mean[1], mean[2])
