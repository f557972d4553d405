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
    (["--model", "resnet5"], "unknown model 'resnet5'; choose one of: "),
    (["--run-dir", "s3://b/run"], "--run-dir s3://b/run: the run directory (metrics, reports) is local; put the checkpoints on shared storage with --checkpoint-dir s3://b/run"),
    (["--policy", "magic"], "--policy 'magic': unknown policy; choose one of: async, staleness_lr"),
    (["--lr", "-0.1"], "--lr -0.1 is out of range: expected a number > 0"),
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
