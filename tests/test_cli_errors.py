"""What the command does when things are wrong: places it cannot write, a Ray cluster that does
not answer, a bug, Ctrl-C. Always one line on stderr and an exit status, never a traceback, and
bad input is refused before Ray or any actor starts."""

import socket
import tempfile
import time

import pytest

from ps_trainer.cli import main

SMALL = ["--model", "digits_cnn_small", "--no-progress", "--device", "cpu"]  # GPUs or not


def one_line(capsys, status_line: str) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(status_line), err
    return lines[0]


@pytest.fixture(autouse=True)
def no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


# ---- places the run writes -------------------------------------------------------------------
@pytest.fixture
def a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("a file, not a folder")
    return f


@pytest.mark.parametrize("flag,where", [
    ("--run-dir", "{file}/run"),
    ("--run-dir", "{file}"),
    ("--run-dir", "/proc/ps-train-test/run"),
    ("--checkpoint-dir", "{file}/ckpt"),
    ("--checkpoint-dir", "file://{file}/ckpt"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_place_that_cannot_be_written_is_refused_before_anything_starts(
        tmp_path, a_file, capsys, flag, where, dry_run):
    import ray

    where = where.format(file=a_file)
    argv = [*SMALL, "--run-dir", str(tmp_path / "run"), flag, where]
    t0 = time.monotonic()
    assert main(argv + (["--dry-run"] if dry_run else [])) == 2
    assert time.monotonic() - t0 < 15  # not after 36 s of training, as it was
    line = one_line(capsys, f"ps-train: error: {flag} {where}: cannot write there (")
    assert "choose a folder this user can create and write" in line
    assert not ray.is_initialized()


def test_the_default_run_folder_is_checked_too(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("a file where the runs folder would be")
    assert main([*SMALL, "--dry-run"]) == 2
    line = one_line(capsys, "ps-train: error: --run-dir '' (a new folder under runs/): "
                            "cannot write")
    assert "or set --run-dir" in line


def test_a_dry_run_checks_the_places_and_leaves_nothing_behind(tmp_path, capsys):
    import ray

    run, ckpt = tmp_path / "a" / "b" / "run", tmp_path / "c" / "ckpt"
    assert main([*SMALL, "--dry-run", "--run-dir", str(run), "--checkpoint-dir",
                 f"file://{ckpt}"]) == 0
    out, err = capsys.readouterr()
    assert not err
    for text in ("model:       digits_cnn_small, 3,778 parameters in 2 shard(s)",
                 "data:        digits, 1,438 training and 359 test images",
                 "steps:       281 per worker x 4 worker(s) at batch 32 (25 epochs)",
                 "runs on:     this machine, cpu", "the memory estimate fits",
                 f"run dir:     {run} (writable)", f"checkpoints: file://{ckpt} (writable)",
                 "dry run: every check passed; nothing was started"):
        assert text in out, (text, out)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    assert not ray.is_initialized()


def test_a_dry_run_of_the_simulator(tmp_path, capsys):
    assert main([*SMALL, "--dry-run", "--simulate", "--workers", "16", "--run-dir",
                 str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "runs on:     this process (the simulator" in out and "x 16 worker(s)" in out


# ---- upper bounds that depend on the data ------------------------------------------------------
# (--simulate where the largest allowed value would not fit in memory as that many processes: the
# simulator runs them all in one)
@pytest.mark.parametrize("argv,message,fits", [
    (["--batch-size", "360"], "--batch-size 360 is more than one worker's share of the training "
                              "set (1438 examples / --workers 4 = 359); use --batch-size 359 or "
                              "less, or fewer --workers", ["--batch-size", "359"]),
    (["--workers", "1439"], "--workers 1439 is more than the 1438 training examples",
     ["--workers", "1438", "--batch-size", "1", "--simulate"]),
    (["--push-every", "282"], "--push-every 282 is more than the 281 steps each worker takes",
     ["--push-every", "281"]),
    (["--fetch-every", "282"], "--fetch-every 282 is more than the 281 steps each worker takes",
     ["--fetch-every", "281"]),
    (["--publish-every", "1125"], "--publish-every 1125 is more than the 1124 versions a shard "
                                  "reaches in this run", ["--publish-every", "1124"]),
    (["--ps-shards", "3779"], "--ps-shards 3779 is more than the model's 3778 parameters",
     ["--ps-shards", "3778", "--simulate"]),
])
def test_bounds_that_depend_on_the_data_name_the_flag(tmp_path, capsys, argv, message, fits):
    base = [*SMALL, "--dry-run", "--run-dir", str(tmp_path / "run")]
    assert main([*base, *argv]) == 2
    assert message in one_line(capsys, f"ps-train: error: {argv[0]} ")
    assert main([*base, *fits]) == 0, capsys.readouterr().err  # the largest allowed is allowed


def test_a_run_that_does_not_fit_in_memory_names_the_flags_it_depends_on(tmp_path, capsys):
    # 3778 shard processes of ~400 MB each: more than any machine has
    assert main([*SMALL, "--dry-run", "--run-dir", str(tmp_path / "run"), "--ps-shards", "3778"]) == 2
    line = one_line(capsys, "ps-train: error: --workers 4 --ps-shards 3778 --batch-size 32 "
                            "--image-size 8: more memory than this machine has: ")
    assert "GiB available" in line


# ---- a Ray cluster that does not answer ----------------------------------------------------------
def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there now


@pytest.mark.parametrize("address", ["127.0.0.1:1", f"127.0.0.1:{_unused_port()}"])
@pytest.mark.parametrize("dry_run", [True, False])
def test_an_address_where_nothing_listens_fails_at_once(tmp_path, capsys, address, dry_run):
    import ray

    t0 = time.monotonic()
    argv = [*SMALL, "--run-dir", str(tmp_path / "run"), "--address", address]
    assert main(argv + (["--dry-run"] if dry_run else [])) == 2
    assert time.monotonic() - t0 < 15
    line = one_line(capsys, f"ps-train: error: --address {address}")
    assert "no Ray cluster answered there (" in line
    assert "start one with `ray start --head`, or leave --address empty to run locally" in line
    assert not ray.is_initialized()


def test_a_port_that_accepts_connections_but_is_not_ray_fails_within_15_s(tmp_path, capsys):
    with socket.socket() as silent:  # accepts TCP connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        assert main([*SMALL, "--run-dir", str(tmp_path / "run"), "--address", address]) == 2
        assert time.monotonic() - t0 < 15
    line = one_line(capsys, f"ps-train: error: --address {address}: no Ray cluster answered")
    assert "gives no answer within 5 s" in line


def test_ray_address_from_the_environment_is_the_same_setting(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert main([*SMALL, "--run-dir", str(tmp_path / "run")]) == 2
    one_line(capsys, "ps-train: error: --address (from RAY_ADDRESS) 127.0.0.1:1: no Ray cluster")


def test_auto_without_a_cluster_on_this_machine(tmp_path, capsys, monkeypatch):
    import ray._private.services as services

    def no_cluster(address, temp_dir=None):  # what Ray says when none runs here
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(services, "canonicalize_bootstrap_address", no_cluster)
    assert main([*SMALL, "--dry-run", "--run-dir", str(tmp_path / "run"), "--address", "auto"]) == 2
    one_line(capsys, "ps-train: error: --address auto: no Ray cluster runs on this machine; "
                     "start one with `ray start --head`")


def test_the_address_check_lets_a_real_ray_cluster_through(ray_local):
    from ps_trainer.trainer.cluster import check_address

    check_address(ray_local.get_runtime_context().gcs_address)  # no error


# ---- bugs and Ctrl-C ----------------------------------------------------------------------------
def test_an_internal_error_is_one_line_and_its_traceback_goes_to_a_file(
        tmp_path, capsys, monkeypatch):
    import ps_trainer.trainer.plan as plan

    def bug(cfg):
        return {}["missing"]

    monkeypatch.setattr(plan, "prepare", bug)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main([*SMALL, "--run-dir", str(tmp_path / "run")]) == 1
    line = one_line(capsys, "ps-train: internal error: KeyError: 'missing' (the traceback is in ")
    log = tmp_path / line.split("the traceback is in ")[1].rstrip(")")
    assert log.parent == tmp_path and log.name.startswith("ps-train-") and log.suffix == ".log"
    text = log.read_text()
    assert "Traceback" in text and "in bug" in text and "KeyError: 'missing'" in text
    assert text.splitlines()[0].endswith(f"ps-train {' '.join(SMALL)} --run-dir {tmp_path}/run")


def test_an_internal_error_after_the_run_directory_exists_is_logged_there(
        tmp_path, capsys, monkeypatch):
    import ps_trainer.harness.simulate as simulate

    def crash(cfg, log=print):
        (tmp_path / "run").mkdir()
        raise TypeError("unsupported operand")

    monkeypatch.setattr(simulate, "simulate", crash)
    assert main([*SMALL, "--simulate", "--run-dir", str(tmp_path / "run")]) == 1
    one_line(capsys, f"ps-train: internal error: TypeError: unsupported operand (the traceback "
                     f"is in {tmp_path / 'run' / 'error.log'})")
    assert "Traceback" in (tmp_path / "run" / "error.log").read_text()


def test_a_failed_run_is_one_line_with_status_1(tmp_path, capsys, monkeypatch):
    import ps_trainer.harness.simulate as simulate

    def fail(cfg, log=print):
        raise RuntimeError("worker 0 failed: out of memory\n(metrics so far are in run)")

    monkeypatch.setattr(simulate, "simulate", fail)
    assert main([*SMALL, "--simulate", "--run-dir", str(tmp_path / "run")]) == 1
    one_line(capsys, "ps-train: error: worker 0 failed: out of memory (metrics so far are in run)")


def test_ctrl_c_before_training_is_one_line_and_130(tmp_path, capsys, monkeypatch):
    import ps_trainer.trainer.plan as plan

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(plan, "prepare", interrupted)
    assert main([*SMALL, "--run-dir", str(tmp_path / "run")]) == 130
    one_line(capsys, "ps-train: interrupted (Ctrl-C)")


@pytest.mark.parametrize("argv,module", [
    (["report", "somewhere"], "ps_trainer.harness.report"),
    (["export", "run", "--out", "m.pt"], "ps_trainer.trainer.export"),
])
def test_sub_commands_report_internal_errors_the_same_way(tmp_path, capsys, monkeypatch, argv,
                                                          module):
    import importlib

    def bug(argv):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(importlib.import_module(module), "main", bug)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(argv) == 1
    one_line(capsys, f"ps-train {argv[0]}: internal error: ZeroDivisionError: division by zero "
                     f"(the traceback is in {tmp_path}/ps-train-")


def test_models_reports_internal_errors_the_same_way(tmp_path, capsys, monkeypatch):
    import ps_trainer.models as models

    def bug():
        raise AttributeError("no table")

    monkeypatch.setattr(models, "model_table", bug, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["models"]) == 1
    one_line(capsys, "ps-train models: internal error: AttributeError: no table")
    assert main(["models", "--wide"]) == 2
    one_line(capsys, "ps-train models: error: --wide: unknown flag")


# ---- the command line itself ---------------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["--wrokers", "3"], "--wrokers: unknown flag; did you mean --workers? (`ps-train --help` "
                         "lists them)"),
    (["--lr"], "--lr: expected a value after it: --lr VALUE"),
    (["--lr", "-inf"], "--lr -inf is out of range: expected a number in (0, 1,000]"),
    (["--epochs", "-1e300"], "--epochs -1e+300 is out of range"),
    (["--no-nesterov", "yes"], "yes: unexpected argument; settings are given as --flag VALUE"),
    (["--nesterov", "maybe"], "--nesterov 'maybe': expected true or false"),
    (["stray"], "stray: unexpected argument; settings are given as --flag VALUE"),
])
def test_a_bad_command_line_is_one_line_naming_the_flag(capsys, argv, message):
    assert main([*SMALL, *argv]) == 2
    assert message in one_line(capsys, "ps-train: error: ")


def test_switches_take_yaml_words_too():
    from ps_trainer.cli import config_from_args

    for argv, value in ((["--nesterov"], True), (["--no-nesterov"], False),
                        (["--nesterov", "off"], False), (["--nesterov=yes"], True),
                        (["--nesterov", "0", "--lr", "0.1"], False)):
        assert config_from_args(argv).nesterov is value, argv



@pytest.mark.parametrize("argv,line", [
    (["sweep", "--bogus", "x.yaml"], "ps-train sweep: error: --bogus: unknown flag; did you mean --out?"),
    (["sweep"], "ps-train sweep: error: the following arguments are required: spec"),
    (["report", "a", "b"], "ps-train report: error: b: unexpected argument"),
    (["export", "/tmp", "--weights", "nope", "--out", "x.pt"], "ps-train export: error: --weights 'nope': choose raw or polyak"),
    (["models", "--x"], "ps-train models: error: --x: unknown flag"),
])
def test_a_bad_command_line_of_a_sub_command_is_one_line_and_2(capsys, argv, line):
    assert main(argv) == 2
    assert one_line(capsys, line)
