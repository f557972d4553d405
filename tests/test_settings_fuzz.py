"""Every setting, given garbage, a negative, zero, NaN, +-inf or a huge number on the command line,
is either accepted on purpose or refused with one line naming its flag (exit 2), within seconds,
and never with a traceback. Everything here runs `ps-train --dry-run`: nothing starts Ray."""

import dataclasses
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ps_trainer.cli import main
from ps_trainer.config import TrainConfig

BASE = ["--model", "digits_cnn_small", "--dry-run", "--no-progress", "--device", "cpu"]
# (--device cpu: with the default, auto, a machine with fewer GPUs than workers refuses the run)
VALUES = ["abc", "[1, 2]", "-1", "-1.5", "0", "nan", "inf", "-inf", "1e300", str(10**30)]
# Not fuzzed: `dry_run` is the mode every case runs in (`--dry-run 0` would train for real), and
# `address` is dialled: a host name like 'abc' is looked up in DNS and then probed, up to 10 s a
# value (tests/test_cli_errors.py checks --address on 127.0.0.1, where nothing waits).
SKIPPED = {"dry_run", "address"}
FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in SKIPPED]

# The (setting, value) pairs a dry run accepts, each on purpose:
ACCEPTED = {
    # 0 means "none", "off", "automatic" or "the default": a documented value of each of these
    *(("image_size", "0"), ("max_time", "0"), ("momentum", "0"), ("weight_decay", "0"),
      ("warmup_epochs", "0"), ("polyak_start_epochs", "0"), ("label_smoothing", "0"),
      ("aux_weight", "0"), ("max_staleness", "0"), ("ssp_bound", "0"), ("backup_workers", "0"),
      ("dc_lambda", "0"), ("dc_mean_square_decay", "0"), ("delay_mean", "0"), ("stragglers", "0"),
      ("sim_jitter", "0"), ("max_inflight", "0"), ("publish_interval", "0"),
      ("checkpoint_every", "0"), ("checkpoint_steps", "0"), ("max_worker_failures", "0"),
      ("max_shard_failures", "0"), ("seed", "0"), ("loader_workers", "0"), ("lighting", "0"),
      ("crop_fraction", "0")),
    # -1: "the model's default" (loss, lighting noise) or "automatic" (loader processes)
    ("label_smoothing", "-1"), ("aux_weight", "-1"), ("lighting", "-1"), ("loader_workers", "-1"),
    # 0 is "false" for a switch, as in YAML, and "off" for an auto|on|off setting
    ("nesterov", "0"), ("dc_adaptive", "0"), ("simulate", "0"), ("progress", "0"), ("flip", "0"),
    ("prefetch", "0"), ("exchange", "0"), ("channels_last", "0"), ("insecure", "0"),
    # --serve-grpc 0: serve on any free port (printed and written to RUN/server.json)
    ("serve_grpc", "0"),
    # any name is a folder name (written relative to the working directory): they are writable
    *(("run_dir", v) for v in VALUES), *(("checkpoint_dir", v) for v in VALUES),
}


def _run(argv, capsys):
    t0 = time.monotonic()
    status = main(argv)
    took = time.monotonic() - t0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert took < 20, f"{argv} took {took:.0f} s"
    return status, out, err


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative run and checkpoint folders land here
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def test_every_setting_accepts_only_what_it_should_and_names_itself_otherwise(in_tmp, capsys):
    accepted = set()
    for name in FIELDS:
        flag = "--" + name.replace("_", "-")
        for value in VALUES:
            status, out, err = _run([*BASE, "--run-dir", str(in_tmp / "run"), flag, value], capsys)
            if status == 0:
                accepted.add((name, value))
                assert "dry run: every check passed" in out and not err
            else:
                assert status == 2, (flag, value, err)
                lines = err.splitlines()
                assert len(lines) == 1 and lines[0].startswith("ps-train: error: "), err
                assert flag in lines[0], (flag, value, err)
    assert accepted == ACCEPTED, (sorted(accepted - ACCEPTED), sorted(ACCEPTED - accepted))
    assert not (in_tmp / "run").exists()  # a dry run leaves nothing behind


@settings(max_examples=120, deadline=20_000, database=None,  # ms; most take a few
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(FIELDS),
       value=st.one_of(st.text(max_size=12), st.floats().map(repr), st.integers().map(str)))
def test_any_value_of_any_setting_is_accepted_or_refused_in_one_line(in_tmp, capsys, name, value):
    flag = "--" + name.replace("_", "-")
    status, out, err = _run([*BASE, "--run-dir", str(in_tmp / "run"), f"{flag}={value}"], capsys)
    assert status in (0, 2), err
    if status == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("ps-train: error: "), err
        # It names the flag; it may be another's message that names it too: --workers 45 makes
        # the default --batch-size 32 more than a worker's share, and says so.
        assert flag in lines[0], err


@pytest.mark.parametrize("argv,flag", [
    (["--lr", "inf"], "--lr"),
    (["--epochs", "inf"], "--epochs"),
    (["--seed", "-1"], "--seed"),
    (["--momentum", "-inf"], "--momentum"),
    (["--workers", "abc"], "--workers"),
    (["--image-size", "100000"], "--image-size"),
    (["--run-dir", "{tmp}/file.txt/run"], "--run-dir"),
    (["--config", "{tmp}/bad.yaml"], "--config"),
    (["--address", "127.0.0.1:1"], "--address"),
])
def test_the_command_refuses_bad_input_in_one_line(tmp_path, argv, flag):
    """As a real process: exit 2, one line on stderr naming the flag, no traceback."""
    (tmp_path / "file.txt").write_text("a file, not a folder")
    (tmp_path / "bad.yaml").write_text("workers: [1, 2\nlr: 0.1\n")
    cmd = [sys.executable, "-m", "ps_trainer.cli", "--model", "digits_cnn_small", "--no-progress",
           "--run-dir", str(tmp_path / "run"), *(a.format(tmp=tmp_path) for a in argv)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={**_env(), "RAY_USAGE_STATS_ENABLED": "0"})
    lines = out.stderr.splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith(f"ps-train: error: {flag}"), out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
