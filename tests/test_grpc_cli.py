"""`ps-train serve`, `ps-train worker` and `ps-train --serve-grpc` as a user runs them: real
processes, a real server on 127.0.0.1 on a port chosen at run time, real files."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

CLI = [sys.executable, "-m", "ps_trainer.cli"]
WORKER_LINE = re.compile(r"worker (\d+): (\d+) steps, (\d+) images .* (\d+) pushes sent, "
                         r"(\d+) acknowledged")


def _env(**extra):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **extra}
    env.pop("PS_TRAIN_TOKEN", None)
    env.update(extra)
    return env


def _start(args, log: Path, **env):
    return subprocess.Popen(CLI + args, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=_env(**env))


def _port(run_dir: Path, proc, timeout=90) -> int:
    """The port the server chose (--port 0), from RUN/server.json."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "server.json").is_file():
            return json.loads((run_dir / "server.json").read_text())["port"]
        assert proc.poll() is None, "the server exited before it listened"
        time.sleep(0.2)
    raise AssertionError("the server did not start listening")


def _worker(port: int, *args, **env):
    out = subprocess.run(CLI + ["worker", "--ps", f"grpc://127.0.0.1:{port}", "--progress",
                                "false", *args], capture_output=True, text=True, timeout=300,
                         env=_env(**env))
    return out


def _worker_counts(stdout: str) -> dict:
    m = WORKER_LINE.search(stdout)
    assert m, stdout
    wid, steps, images, sent, acked = map(int, m.groups())
    return {"worker": wid, "steps": steps, "images": images, "sent": sent, "acked": acked}


def _rows(run_dir: Path) -> dict:
    return pq.ParquetDataset(run_dir / "pushes.parquet").read().to_pydict()


@pytest.mark.slow  # 9-13 s: moved to the slow set to keep the default run under 10 min
def test_two_workers_train_digits_through_ps_train_serve_with_every_push_accounted(tmp_path):
    run = tmp_path / "served"
    server = _start(["serve", "--model", "digits_cnn", "--ps-shards", "2", "--workers", "2",
                     "--port", "0", "--run-dir", str(run), "--progress", "false",
                     "--eval-every", "1000"], tmp_path / "serve.log")
    try:
        port = _port(run, server)
        workers = [subprocess.Popen(
            CLI + ["worker", "--ps", f"grpc://127.0.0.1:{port}", "--workers", "2", "--steps",
                   "150", "--batch-size", "32", "--progress", "false"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
            for _ in range(2)]
        outs = [w.communicate(timeout=300)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0], outs
        assert server.wait(timeout=120) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if server.poll() is None:
            server.kill()
    counts = [_worker_counts(o) for o in outs]
    assert sorted(c["worker"] for c in counts) == [0, 1]  # ids given by the server
    assert all(c["steps"] == 150 and c["sent"] == 300 == c["acked"] for c in counts)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["pushes_sent"] == 600 == sum(summary["outcomes"].values())
    assert summary["accounted"] and summary["versions"] == [300, 300]
    assert summary["raw"]["top1"] >= 0.9 and summary["polyak"]["top1"] >= 0.9, summary
    rows = _rows(run)
    assert len(rows["worker"]) == 600
    assert {w: rows["worker"].count(w) for w in (0, 1)} == {0: 300, 1: 300}
    assert max(rows["staleness"]) >= 1  # they really ran at the same time
    assert (run / "checkpoints" / "LATEST.json").is_file()
    assert "listening on 127.0.0.1:" in (tmp_path / "serve.log").read_text()


def test_serve_refuses_bad_settings_in_one_line_before_listening(tmp_path):
    def serve(*args):
        return subprocess.run(CLI + ["serve", "--run-dir", str(tmp_path / "r"), *args],
                              capture_output=True, text=True, timeout=120, env=_env())

    for args, needle in ((["--host", "0.0.0.0", "--port", "0"], "without TLS"),
                         (["--port", "70000"], "--port"),
                         (["--token-file", str(tmp_path / "nope")], "--token-file"),
                         (["--tls-cert", __file__], "--tls-key"),
                         (["--serve-grpc", "x:y"], "--serve-grpc")):
        out = serve(*args)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ps-train serve: error: ") and \
            needle in lines[0], (args, out.stderr)
        assert "Traceback" not in out.stdout + out.stderr
        assert not (tmp_path / "r" / "server.json").exists()


@pytest.mark.slow
def test_a_worker_with_nothing_to_reach_or_the_wrong_token_says_so_in_one_line(tmp_path):
    out = _worker(1, "--steps", "1")  # nothing listens on port 1
    assert out.returncode == 2 and out.stderr.startswith("ps-train worker: error: --ps grpc://")
    assert len(out.stderr.strip().splitlines()) == 1
    secret = "s3cret-token-4-test"
    (tmp_path / "token").write_text(secret + "\n")
    run = tmp_path / "run"
    server = _start(["serve", "--run-dir", str(run), "--port", "0", "--progress", "false",
                     "--token-file", str(tmp_path / "token")], tmp_path / "serve.log")
    try:
        port = _port(run, server)
        wrong = _worker(port, "--steps", "1", PS_TRAIN_TOKEN="wrong")
        assert wrong.returncode != 0 and "UNAUTHENTICATED" in wrong.stderr, wrong.stderr
        assert len(wrong.stderr.strip().splitlines()) == 1
        right = _worker(port, "--steps", "3", "--workers", "1", PS_TRAIN_TOKEN=secret)
        assert right.returncode == 0, right.stderr
        assert _worker_counts(right.stdout)["sent"] == 2 * 3  # 2 shards (the default)
    finally:
        server.send_signal(signal.SIGINT)  # the end of a served run: checkpoint, summary
        server.wait(timeout=60)
    log = (tmp_path / "serve.log").read_text()
    assert secret not in log + wrong.stderr + wrong.stdout + right.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] and summary["pushes_sent"] == 6
    assert summary["served"]["rejections"].get("unauthenticated", 0) >= 1


@pytest.mark.slow
def test_an_outside_worker_joins_a_ray_run_through_serve_grpc(tmp_path):
    run = tmp_path / "ray-run"
    driver = _start(["--workers", "2", "--ps-shards", "2", "--epochs", "30", "--serve-grpc",
                     "0", "--run-dir", str(run), "--progress", "false"], tmp_path / "run.log")
    try:
        port = _port(run, driver)
        out = _worker(port, "--workers", "2", "--steps", "60", "--batch-size", "32")
        assert out.returncode == 0, out.stdout + out.stderr
        assert driver.wait(timeout=300) == 0, (tmp_path / "run.log").read_text()
    finally:
        if driver.poll() is None:
            driver.kill()
    outside = _worker_counts(out.stdout)
    assert outside["worker"] == 2  # above the run's own workers 0 and 1
    assert outside["sent"] == 120 == outside["acked"]
    rows = _rows(run)
    assert rows["worker"].count(2) == 120  # the outside worker's pushes, in the run's table
    summary = json.loads((run / "summary.json").read_text())
    assert summary["accounted"]
    assert summary["pushes_sent"] == sum(summary["outcomes"].values()) == len(rows["worker"])
    assert summary["raw"]["top1"] >= 0.9 and summary["polyak"]["top1"] >= 0.9


@pytest.mark.slow
def test_ps_train_serve_resumes_from_its_checkpoint_and_keeps_counting(tmp_path):
    run = tmp_path / "served"

    def session(*extra):
        server = _start(["serve", "--workers", "1", "--port", "0", "--progress", "false", *extra],
                        tmp_path / "serve.log")
        try:
            port = _port(run, server)
            out = _worker(port, "--workers", "1", "--steps", "20")
            assert out.returncode == 0, out.stdout + out.stderr
            assert server.wait(timeout=120) == 0, (tmp_path / "serve.log").read_text()
        finally:
            if server.poll() is None:
                server.kill()
        (run / "server.json").unlink()
        return _worker_counts(out.stdout)

    first = session("--run-dir", str(run))
    assert first["worker"] == 0 and first["sent"] == 40  # 20 steps x 2 shards
    second = session("--resume", str(run))
    assert second["worker"] == 1  # 0 finished: a new id, not one the checkpoint holds
    summary = json.loads((run / "summary.json").read_text())
    assert summary["versions"] == [40, 40]  # continued from the first session's 20 + 20 more
    assert summary["pushes_sent"] == 80 == sum(summary["outcomes"].values())
    assert summary["accounted"]
    rows = _rows(run)
    assert {w: rows["worker"].count(w) for w in (0, 1)} == {0: 40, 1: 40}
