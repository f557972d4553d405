"""Data sets, as numpy arrays in NCHW float32 with int64 labels.

- `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; from the UCI
  repository, Alpaydin & Kaynak 1998). Real, and needs no download, so it is the embedded default.
- `synthetic`: random ImageNet-shaped tensors (for throughput benchmarks, never for accuracy).
- `cifar10`, `npz`: read from `--data-dir` (see files.py).
- `parquet`: a folder made by `ps-train data prepare` (a local path or a filesystem URI). Only
  its manifest is read here (`Prepared`): each worker streams its own partition (stream.py).

A `Dataset` is split once, with a seed, into train and held-out parts; the train part is then cut
into disjoint worker partitions by `partition` (DistBelief: each model replica owns a data shard).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DATASETS = ("digits", "synthetic", "cifar10", "npz", "parquet")


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # (N, C, H, W) float32, normalized
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray  # (M, C, H, W)
    y_test: np.ndarray  # (M,)
    num_classes: int

    streamed = False  # the arrays are here (each worker's partition is shipped to it)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        return len(self.y_test)


@dataclass
class Prepared:
    """A prepared data set (`ps-train data prepare`): its manifest, never its pixels. Images are
    decoded and cropped to `image_shape` by each worker's stream (stream.py)."""

    name: str
    root: str  # a local path or a pyarrow filesystem URI
    manifest: object  # manifest.Manifest
    image_shape: tuple[int, int, int]  # (3, S, S): the crops the model takes
    streamed = True

    @property
    def num_classes(self) -> int:
        return len(self.manifest.classes)

    @property
    def n_train(self) -> int:
        return self.manifest.images("train")

    @property
    def n_test(self) -> int:
        return self.manifest.images("val") if "val" in self.manifest.splits else 0

    def pieces(self, split: str) -> list:
        return self.manifest.pieces(split)


def load_dataset(name: str, *, seed: int = 0, test_fraction: float = 0.2,
                 synthetic_shape: tuple[int, int, int] = (3, 224, 224),
                 synthetic_size: int = 256, num_classes: int = 1000, data_dir: str = "") -> Dataset:
    if name == "digits":
        return _digits(seed, test_fraction)
    if name == "cifar10":
        from .files import load_cifar10

        return Dataset(name, *load_cifar10(data_dir), 10)
    if name == "npz":
        from .files import load_npz

        x_train, y_train, x_test, y_test = load_npz(data_dir, seed, test_fraction)
        return Dataset(name, x_train, y_train, x_test, y_test,
                       int(max(y_train.max(), y_test.max() if len(y_test) else 0)) + 1)
    if name == "parquet":
        from . import manifest

        if not data_dir:
            raise ValueError("--dataset parquet needs --data-dir DIR, a folder made by "
                             "`ps-train data prepare SRC DIR`")
        m = manifest.load(data_dir)
        if not m.images("train"):
            raise ValueError(f"--data-dir {data_dir}: its train split has no images")
        if "val" not in m.splits or not m.images("val"):
            raise ValueError(f"--data-dir {data_dir}: it has no held-out (val) images to evaluate "
                             f"on; prepare it with a val/ folder or --val-fraction")
        return Prepared(name, data_dir, m, (3, *synthetic_shape[1:]))
    if name == "synthetic":
        rng = np.random.default_rng(seed)
        n_test = max(1, int(synthetic_size * test_fraction))
        x = rng.standard_normal((synthetic_size + n_test, *synthetic_shape), dtype=np.float32)
        y = rng.integers(0, num_classes, synthetic_size + n_test)
        return Dataset(name, x[n_test:], y[n_test:], x[:n_test], y[:n_test], num_classes)
    raise ValueError(f"unknown --dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def _digits(seed: int, test_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, works offline

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8), pixels 0..16 -> 0..1
    x = (x - 0.3) / 0.4  # roughly zero mean, unit variance
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return Dataset("digits", x[train], y[train], x[test], y[test], 10)


def partition(n: int, parts: int, seed: int) -> list[np.ndarray]:
    """Disjoint, near-equal index sets covering range(n), shuffled with `seed`."""
    if parts > n:
        raise ValueError(f"--workers {parts} is more than the {n} training examples")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(p) for p in np.array_split(order, parts)]


class Batches:
    """An endless stream of shuffled mini-batches over one partition, reshuffled every epoch.

    A batch larger than the partition is cut to the partition. `ps-train` refuses such a batch
    before anything starts (preflight.check_plan); for a program calling `train` or `simulate`
    itself, or a sweep cell, the run's plan says so once, in a `note:` line (trainer.plan)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, start: int = 0):
        self.x, self.y, self.batch_size = x, y, min(batch_size, len(y))
        self.rng = np.random.default_rng(seed)
        self.epoch, self._order, self._pos = 0, self.rng.permutation(len(y)), 0
        self.position = 0  # batches handed out
        for _ in range(start):  # a replaced worker continues its predecessor's batches
            self._advance()

    def _advance(self) -> np.ndarray:
        if self._pos + self.batch_size > len(self.y):  # drop the ragged tail, as DataLoader(drop_last)
            self.epoch += 1
            self._order, self._pos = self.rng.permutation(len(self.y)), 0
        idx = self._order[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        self.position += 1
        return idx

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        idx = self._advance()
        return self.x[idx], self.y[idx]

    def __iter__(self):
        return self
