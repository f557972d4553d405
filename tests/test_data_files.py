"""Data read from user paths: CIFAR-10 (binary version) and .npz. A missing, empty, truncated or
wrong path is refused before anything starts, naming the flag and what was expected."""

import numpy as np
import pytest

from ps_trainer.cli import main
from ps_trainer.data import load_dataset
from ps_trainer.data.files import CIFAR_TEST, CIFAR_TRAIN


def fake_cifar(root, records=20, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(exist_ok=True)
    for name in CIFAR_TRAIN + [CIFAR_TEST]:
        rec = rng.integers(0, 256, (records, 3073), dtype=np.uint8)
        rec[:, 0] %= 10
        rec.tofile(root / name)
    return root


def test_cifar10_binary_loads_normalized_nchw(tmp_path):
    d = load_dataset("cifar10", data_dir=str(fake_cifar(tmp_path / "c")))
    assert d.x_train.shape == (100, 3, 32, 32) and d.x_test.shape == (20, 3, 32, 32)
    assert d.y_train.dtype == np.int64 and d.num_classes == 10
    assert abs(float(d.x_train.mean())) < 0.5  # normalized with the CIFAR-10 mean and std


@pytest.mark.parametrize("case,message", [
    ("missing", "no such file or directory"),
    ("empty", "is empty: expected the CIFAR-10 binary version"),
    ("partial", "missing data_batch_5.bin, test_batch.bin"),
    ("truncated", "not a multiple of 3,073"),
    ("none", "--data-dir is required"),
])
def test_bad_cifar_paths_are_refused_naming_the_problem(tmp_path, capsys, case, message):
    root = tmp_path / "c"
    if case == "empty":
        root.mkdir()
    elif case == "partial":
        fake_cifar(root)
        (root / "data_batch_5.bin").unlink()
        (root / "test_batch.bin").unlink()
    elif case == "truncated":
        fake_cifar(root)
        (root / "data_batch_2.bin").write_bytes(b"\x00" * 5000)
    argv = ["--dataset", "cifar10", "--model", "resnet20", "--run-dir", str(tmp_path / "run")]
    if case != "none":
        argv += ["--data-dir", str(root)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and not (tmp_path / "run").exists()  # refused before anything started


def test_npz_trains_and_bad_npz_is_refused(tmp_path, capsys):
    digits = load_dataset("digits")
    f = tmp_path / "digits.npz"
    np.savez(f, x=np.concatenate([digits.x_train, digits.x_test])[:, 0],
             y=np.concatenate([digits.y_train, digits.y_test]))
    assert main(["--simulate", "--dataset", "npz", "--data-dir", str(f), "--model", "digits_cnn_small",
                 "--epochs", "6", "--sim-evals", "2", "--no-progress",
                 "--run-dir", str(tmp_path / "run")]) == 0
    import json
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["polyak"]["top1"] > 0.9
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 8, 8)))
    (tmp_path / "zero.npz").write_bytes(b"")
    for path, message in ((tmp_path / "bad.npz", "has arrays images; expected x and y"),
                          (tmp_path / "zero.npz", "is empty (0 bytes)"),
                          (tmp_path / "nope.npz", "no such file or directory")):
        assert main(["--dataset", "npz", "--data-dir", str(path)]) == 2
        assert message in capsys.readouterr().err
    # 3-channel data for a 1-channel model is named, not a shape error deep in torch
    assert main(["--dataset", "cifar10", "--data-dir", str(fake_cifar(tmp_path / "c")),
                 "--model", "digits_cnn"]) == 2
    assert "3-channel images, but --model digits_cnn takes 1" in capsys.readouterr().err
