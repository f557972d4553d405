"""The numbered examples a student runs first keep working and keep learning: each runs here in a
fast mode (the slow set holds those that start Ray or a server), and its printed numbers are
checked."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(*argv: str, timeout: float = 300) -> str:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                         env=ENV)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_the_examples_are_numbered_in_reading_order():
    numbered = sorted(p.name for p in EXAMPLES.glob("0*"))
    assert numbered == ["01_async_sgd_in_one_process.py", "02_ray_async_digits.py",
                        "03_staleness_sweep.yaml", "04_grpc_worker.py", "05_inception_v3_cluster.sh",
                        "05_inception_v3_cluster.yaml", "06_figures.py"]
    assert len((EXAMPLES / "01_async_sgd_in_one_process.py").read_text().splitlines()) < 150


def test_01_async_sgd_in_one_process_prints_every_push_learns_and_accounts_for_pushes():
    out = run(sys.executable, str(EXAMPLES / "01_async_sgd_in_one_process.py"), "--show", "2")
    accs = {k: float(v) for k, v in re.findall(r"(raw|Polyak) weights: ([\d.]+)%", out)}
    assert accs["raw"] >= 93 and accs["Polyak"] >= 95, out
    pushes, staleness = re.search(r"(\d+) pushes, mean staleness ([\d.]+)", out).groups()
    assert int(pushes) == 4 * 150 * 2  # every push of every worker to every shard
    assert 0.5 < float(staleness) < 6  # four concurrent workers: about K - 1 = 3
    # the first 2 steps of each of the 4 workers: a pull line each, a push line per shard
    assert len(re.findall(r"^worker \d step [01]: pulled versions \[\d+, \d+\]$", out, re.M)) == 8
    shown = re.findall(r"^worker \d step [01]: pushed to shard \d: read version (\d+), arrived at "
                       r"(\d+) -> staleness (\d+), applied, now version (\d+)", out, re.M)
    assert len(shown) == 16
    for read, arrived, stale, now in shown:  # staleness = version at arrival - version read
        assert int(arrived) - int(read) == int(stale) and int(now) == int(arrived) + 1


@pytest.mark.slow
def test_02_ray_async_digits_trains_on_ray_and_reads_its_push_table(tmp_path):
    out = run(sys.executable, str(EXAMPLES / "02_ray_async_digits.py"), "--workers", "2",
              "--epochs", "3", "--run-dir", str(tmp_path / "run"))
    per_worker = re.findall(r"^worker (\d): (\d+) pushes, mean staleness ([\d.]+)$", out, re.M)
    assert [w for w, _, _ in per_worker] == ["0", "1"]
    m = re.search(r"raw ([\d.]+)%, Polyak ([\d.]+)% held-out accuracy; (\d+) pushes sent, "
                  r"accounted: True", out)
    # The Polyak average, which smooths the trajectory: at least 97% (99.2-99.7% in six runs
    # of these settings, CI's included). The raw weights are one iterate of constant-learning-
    # rate SGD with momentum, which wanders: 97.8-100% in five runs here, 88.6% once in CI
    # (session 19); at least 80% says they trained (chance is 10%) without failing on that wander.
    assert m and float(m[1]) >= 80 and float(m[2]) >= 97, out
    assert int(m[3]) == sum(int(n) for _, n, _ in per_worker)  # one row per push, none lost


@pytest.mark.slow
def test_03_staleness_sweep_runs_a_reduced_grid_to_its_report(tmp_path):
    spec = yaml.safe_load((EXAMPLES / "03_staleness_sweep.yaml").read_text())
    spec["base"]["epochs"] = 2  # the reference sweep's settings, two of its cells
    spec["grids"] = [{"policy": ["async", "dc_asgd"], "workers": [2], "seed": [0]}]
    spec["out"] = str(tmp_path / "sweep")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    run(str(Path(sys.executable).parent / "ps-train"), "sweep", str(tmp_path / "sweep.yaml"))
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "sweep" / "sweep.parquet").to_pydict()
    assert sorted(table["policy"]) == ["async", "dc_asgd"]
    assert (tmp_path / "sweep" / "report.md").exists()


@pytest.mark.slow
def test_04_grpc_worker_trains_two_workers_through_a_served_parameter_server():
    out = run(sys.executable, str(EXAMPLES / "04_grpc_worker.py"), "--steps", "40")
    assert re.search(r"^parameter server at grpc://127\.0\.0\.1:\d+$", out, re.M)
    shards = re.findall(r"^shard (\d): version (\d+), (\d+) pushes \{'applied': (\d+)\}", out, re.M)
    assert [(s, int(v), int(p), int(a)) for s, v, p, a in shards] == [("0", 80, 80, 80),
                                                                     ("1", 80, 80, 80)]
    acc = float(re.search(r"Polyak weights .*: ([\d.]+)% held-out", out)[1])
    assert acc >= 80, out


@pytest.mark.slow
def test_05_inception_v3_cluster_plan_passes_every_check_here():
    out = run("bash", str(EXAMPLES / "05_inception_v3_cluster.sh"), "--plan")
    assert "inception_v3, 27,161,264 parameters in 4 shard(s)" in out
    assert "dry run: every check passed; nothing was started" in out


def test_example_configs_load_and_validate():
    import yaml

    from ps_trainer.config import TrainConfig
    from ps_trainer.harness.sweep import expand, load_spec

    for path in (ROOT / "examples").glob("*.yaml"):
        if "grids" in yaml.safe_load(path.read_text()):  # a sweep: every cell must validate
            cells = expand(load_spec(path))
            if path.name == "03_staleness_sweep.yaml":
                assert len(cells) == 162
        else:
            TrainConfig.from_yaml(path).validate()


def test_inception_v3_cluster_example_plans_the_run_its_comment_promises():
    """The headline example: 16 workers x 100 steps x batch 16 on synthetic 299x299 data, as its
    comment says, and nothing ps-train's checks would refuse (`--dry-run` minus the cluster at
    --address, which is not here). It used to ask batch 32 of 16-image shares: refused."""
    from ps_trainer.config import TrainConfig
    from ps_trainer.trainer.preflight import check_plan, describe
    from ps_trainer.trainer.plan import prepare

    path = ROOT / "examples" / "05_inception_v3_cluster.yaml"
    comment = path.read_text()
    plan = prepare(TrainConfig.from_yaml(path).validate())
    check_plan(plan)  # batch <= a worker's share, fetch/push/publish intervals reached
    cfg = plan.cfg
    workers, steps, batch = (int(n.replace(",", "")) for n in re.search(
        r"(\d+) workers x ([\d,]+) steps x batch (\d+)", comment).groups())
    assert (cfg.workers, plan.steps_per_worker, cfg.batch_size) == (16, 100, 16)
    assert (workers, steps, batch) == (16, 100, 16)
    assert len(plan.data.y_train) // cfg.workers >= cfg.batch_size  # no batch is cut short
    images = re.search(r"= ([\d,]+) images of (\d+)x", comment)
    assert int(images[1].replace(",", "")) == steps * workers * batch
    assert plan.image_size == int(images[2]) == 299 and plan.data.image_shape == (3, 299, 299)
    assert f"{steps * workers:,} pushes" in comment  # each push is one version of every shard
    assert f"{len(plan.data.y_train)} random training images" in comment
    assert f"{len(plan.data.y_test)} held out" in comment
    assert plan.notes == []  # nothing about the example needed adjusting
    text = describe(plan, "(the cluster at --address, not checked here)")
    assert "100 per worker x 16 worker(s) at batch 16" in text, text


def test_a_batch_cut_to_a_worker_share_is_said_in_a_note(capfd, tmp_path):
    """ps-train refuses a batch larger than a worker's share; a program (or a sweep cell) that
    runs `simulate` itself skipped that check, and its batches are cut: it must say so, once."""
    from ps_trainer.config import TrainConfig
    from ps_trainer.harness.simulate import simulate

    cfg = TrainConfig(simulate=True, model="digits_cnn_small", workers=4, batch_size=400, epochs=2,
                      run_dir=str(tmp_path / "run"), progress=False).validate()
    lines = []
    summary = simulate(cfg, log=lines.append)
    notes = [line for line in lines if line.startswith("note: --batch-size 400")]
    assert len(notes) == 1, lines  # once per run, not once per worker
    assert "359 examples of a worker's share of the training set (359-360)" in notes[0]
    assert "batch-size" not in capfd.readouterr().err  # and nowhere else
    assert 359 * summary["steps"] <= summary["images"] <= 360 * summary["steps"]  # cut, as said
