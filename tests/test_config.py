"""Flags, YAML and validation: a bad setting fails before any actor starts, naming the flag."""

import subprocess
import sys

import pytest

from ps_trainer.cli import config_from_args, main, train_parser
from ps_trainer.config import TrainConfig


def test_help_documents_every_setting_with_its_default():
    text = train_parser().format_help()
    for f in TrainConfig.fields():
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
    assert "(default: 'digits_cnn')" in text and "(default: 4)" in text and "(default: 0.05)" in text


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("workers: 3\nlr: 0.2\nps-shards: 5\nnesterov: false\n")
    cfg = config_from_args(["--config", str(path), "--lr", "0.01", "--momentum", "0.5"])
    assert (cfg.workers, cfg.lr, cfg.ps_shards, cfg.momentum, cfg.nesterov) == (3, 0.01, 5, 0.5, False)
    # a run directory's config.yaml reproduces the run
    again = tmp_path / "again.yaml"
    again.write_text(cfg.to_yaml())
    assert TrainConfig.from_yaml(again) == cfg


@pytest.mark.parametrize("argv,message", [
    (["--model", "resnet5"], "--model 'resnet5': unknown model; choose one of: alexnet, "),
    (["--run-dir", "s3://b/run"], "--run-dir s3://b/run: the run directory (metrics, reports) is local; put the checkpoints on shared storage with --checkpoint-dir s3://b/run"),
    (["--policy", "magic"], "--policy 'magic': unknown policy; choose one of: async, staleness_lr"),
    (["--lr", "-0.1"], "--lr -0.1 is out of range: expected a number in (0, 1,000]"),
    (["--workers", "0"], "--workers 0 is out of range: expected an integer >= 1"),
    (["--momentum", "1.0"], "--momentum 1.0 is out of range: expected a number in [0, 1)"),
    (["--polyak-decay", "1.5"], "--polyak-decay '1.5' is out of range"),
    (["--polyak-decay", "sometimes"], "--polyak-decay 'sometimes' is out of range"),
    (["--batch-size", "ten"], "--batch-size 'ten': expected int"),
    (["--device", "tpu"], "--device 'tpu' is not one of: auto, cpu, cuda"),
    (["--dataset", "imagenet"], "--dataset 'imagenet' is not one of: digits, synthetic"),
])
def test_bad_flags_name_the_flag_and_what_is_allowed(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_bad_config_file_names_the_file_and_the_setting(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("wrokers: 3\n")
    assert main(["--config", str(bad)]) == 2
    assert "unknown setting 'wrokers'" in capsys.readouterr().err


def test_layout_errors_come_before_ray(capsys):
    """More shards than parameters, more workers than examples: refused before Ray starts."""
    import ray

    assert main(["--ps-shards", "100000000"]) == 2
    assert "more than the model's" in capsys.readouterr().err
    assert main(["--workers", "5000"]) == 2
    assert "--workers 5000 is more than the 1438 training examples" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_ps_train_is_installed_as_a_command():
    out = subprocess.run([sys.executable, "-m", "ps_trainer.cli", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--ps-shards" in out.stdout


def test_ps_train_models_prints_every_registered_model(capsys):
    from ps_trainer.models import list_models

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "params" in out and "GMACs" in out
    for name in list_models():
        assert f"\n{name} " in out, name
    assert "resnet50 " in out and "25,557,032" in out


# ---- bad input: one line naming the flag, exit 2, never a traceback ----------------------------
import dataclasses  # noqa: E402
import math  # noqa: E402

FLOATS = [f.name for f in dataclasses.fields(TrainConfig) if type(f.default) is float]
NUMBERS = [f.name for f in dataclasses.fields(TrainConfig) if type(f.default) in (int, float)]


def _one_line(capsys) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and len(err.splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize("text,where", [
    ("workers: [1, 2\nlr: 0.1\n", "line 2, column 3"),  # an unclosed flow sequence
    ("workers: 4\n\tlr: 0.1\n", "line 2, column 1"),  # a tab where YAML wants spaces
    ("lr: 0.1: 0.2\n", "line 1, column 8"),  # a mapping inside a plain value
    ("workers: 4\nlr: \"0.1\n", "line 3, column 1"),  # an unterminated string
])
def test_malformed_yaml_is_one_line_with_where_it_went_wrong(tmp_path, capsys, text, where):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert main(["--config", str(path)]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"ps-train: error: --config {path}: not valid YAML (") and where in line


@pytest.mark.parametrize("text,message", [
    ("workers: [1, 2]\n", "--workers [1, 2]: expected int (a whole number); set in --config"),
    ("lr: {a: 1}\n", "--lr {'a': 1}: expected a number; set in --config"),
    ("lr:\n", "--lr null: empty; expected a number; set in --config"),
    ("epochs: null\n", "--epochs null: empty"),
    ("workers: 2.5\n", "--workers 2.5: expected int"),
    ("workers: true\n", "--workers True: expected int"),
    ("nesterov: 3\n", "--nesterov 3: expected true or false"),
    ("model: [resnet18]\n", "--model ['resnet18']: expected a string"),
    ("lr: .inf\n", "--lr inf is out of range: expected a number in (0, 1,000]"),
    ("1: 2\n", "unknown setting 1"),
    ("- workers\n", "expected a mapping of settings, got list"),
])
def test_yaml_values_of_the_wrong_type_name_the_setting(tmp_path, capsys, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert main(["--config", str(path)]) == 2
    assert message in _one_line(capsys)


def test_a_config_that_is_a_folder_or_not_text(tmp_path, capsys):
    assert main(["--config", str(tmp_path)]) == 2
    assert f"--config {tmp_path}: not a file" in _one_line(capsys)
    binary = tmp_path / "x.yaml"
    binary.write_bytes(b"\xff\xfe\x00lr")
    assert main(["--config", str(binary)]) == 2
    assert "cannot be read" in _one_line(capsys)


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_no_float_setting_takes_nan_or_infinity(name, value):
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ValueError, match=f"^{flag} {value!r} is out of range: expected "):
        TrainConfig(**{name: value}).validate()
    with pytest.raises(ValueError, match=f"^{flag} "):  # as written on the command line
        TrainConfig.from_dict({name: str(value)}).validate()


def test_every_number_has_a_range_with_an_upper_bound_or_a_reason():
    cfg = TrainConfig()
    ranges = cfg._ranges()
    assert set(NUMBERS) <= set(ranges), set(NUMBERS) - set(ranges)
    for name in NUMBERS:
        ok, allowed = ranges[name]
        assert ok(getattr(cfg, name)), (name, allowed)  # the defaults are allowed
        assert not ok(float("nan")), name


@pytest.mark.parametrize("argv,message", [
    (["--lr", "inf"], "--lr inf is out of range: expected a number in (0, 1,000]"),
    (["--epochs", "inf"], "--epochs inf is out of range: expected a number in (0, 1,000,000]"),
    (["--epochs", "1e300"], "--epochs 1e+300 is out of range"),
    (["--seed", "-1"], "--seed -1 is out of range: expected an integer in [0, 4,294,967,295] "
                       "(2**32 - 1, numpy's limit)"),
    (["--seed", str(2**32)], f"--seed {2**32} is out of range"),
    (["--workers", str(10**30)], f"--workers {10**30} is out of range: expected an integer "
                                 f"below 2**63"),
    (["--image-size", "100000"], "--image-size 100000 is out of range: expected pixels in "
                                 "[0, 1,024]"),
    (["--threads-per-worker", "100000"], "--threads-per-worker 100000 is out of range"),
    (["--max-shard-failures", str(10**30)], "--max-shard-failures"),
    (["--delay-mean", "1e300"], "--delay-mean 1e+300 is out of range: expected seconds"),
    (["--data-dir", "/data"], "--data-dir /data: --dataset digits reads no files"),
])
def test_numbers_beyond_any_use_are_refused_before_anything_starts(argv, message, capsys):
    assert main(argv) == 2
    assert message in _one_line(capsys)


def test_the_largest_seed_is_a_seed():
    assert TrainConfig(seed=2**32 - 1).validate().seed == 2**32 - 1
