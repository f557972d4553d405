"""Data sets read from paths the user gives (nothing is downloaded, ever).

- `cifar10`: the CIFAR-10 *binary version* (Krizhevsky 2009), a directory holding
  `data_batch_1.bin` ... `data_batch_5.bin` and `test_batch.bin`; each record is 1 label byte and
  3,072 pixel bytes (R, G, B planes of 32x32). The binary version, not the Python one, because the
  Python one is a pickle and loading a pickle runs code.
- `npz`: one `.npz` file with `x` (N, C, H, W) or (N, H, W) images and `y` (N,) integer labels, or
  with `x_train`, `y_train`, `x_test`, `y_test`. Read with `allow_pickle=False`.

Errors name the flag, the path and what was expected, before anything starts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)[:, None, None]
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)[:, None, None]
CIFAR_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
CIFAR_TEST = "test_batch.bin"


def _exists(path: str, what: str) -> Path:
    if not path:
        raise ValueError(f"--data-dir is required for --dataset {what}")
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"--data-dir {path}: no such file or directory")
    return p


def load_cifar10(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    root = _exists(path, "cifar10")
    expected = CIFAR_TRAIN + [CIFAR_TEST]
    if root.is_dir() and not any(root.iterdir()):
        raise ValueError(f"--data-dir {path} is empty: expected the CIFAR-10 binary version "
                         f"({', '.join(expected)})")
    missing = [f for f in expected if not (root / f).is_file()]
    if missing:
        raise ValueError(f"--data-dir {path}: missing {', '.join(missing)} (CIFAR-10 binary "
                         f"version: cifar-10-binary.tar.gz, extracted)")

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        raw = np.fromfile(root / name, np.uint8)
        if raw.size == 0 or raw.size % 3073:
            raise ValueError(f"--data-dir {path}: {name} has {raw.size} bytes, not a multiple of "
                             f"3,073 (1 label + 32x32x3 pixels): truncated or not CIFAR-10")
        rec = raw.reshape(-1, 3073)
        x = rec[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
        return (x - CIFAR_MEAN) / CIFAR_STD, rec[:, 0].astype(np.int64)

    parts = [read(f) for f in CIFAR_TRAIN]
    x_test, y_test = read(CIFAR_TEST)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            x_test, y_test)


def load_npz(path: str, seed: int, test_fraction: float):
    p = _exists(path, "npz")
    if p.is_dir():
        raise ValueError(f"--data-dir {path} is a directory; --dataset npz reads one .npz file")
    if p.stat().st_size == 0:
        raise ValueError(f"--data-dir {path} is empty (0 bytes)")
    try:
        z = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"--data-dir {path}: not a readable .npz ({e})") from None
    if {"x_train", "y_train", "x_test", "y_test"} <= set(z.files):
        parts = [z[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    elif {"x", "y"} <= set(z.files):
        x, y = z["x"], z["y"]
        order = np.random.default_rng(seed).permutation(len(y))
        n_test = max(1, int(round(len(y) * test_fraction)))
        parts = [x[order[n_test:]], y[order[n_test:]], x[order[:n_test]], y[order[:n_test]]]
    else:
        raise ValueError(f"--data-dir {path}: has arrays {', '.join(z.files) or 'none'}; expected "
                         f"x and y, or x_train, y_train, x_test, y_test")
    x_train, y_train, x_test, y_test = parts
    if len(y_train) == 0:
        raise ValueError(f"--data-dir {path}: no training examples")
    fix = lambda x: (x[:, None] if x.ndim == 3 else x).astype(np.float32)  # noqa: E731
    return fix(x_train), y_train.astype(np.int64), fix(x_test), y_test.astype(np.int64)
