"""Each worker's partition of a prepared data set: disjoint and complete over every epoch,
reshuffled the next, streamed through real DataLoader processes from real Parquet files, and
resumable at any batch (a replaced worker continues its predecessor's stream exactly)."""

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from ps_trainer.data import manifest
from ps_trainer.data.prepare import Settings, prepare
from ps_trainer.data.stream import PartitionStream, StreamBatches, partition, row_order


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_each_epoch_is_cut_into_disjoint_ranges_that_cover_it_once(workers):
    rows = [256, 256, 100, 256, 3, 256, 77]  # row groups of unequal size (the last of each file)
    seen = []
    for epoch in range(3):
        parts = partition(rows, workers, seed=5, epoch=epoch)
        counts = Counter()
        for slices in parts:
            for s in slices:
                order = row_order(rows[s.piece], 5, epoch, s.piece)
                counts.update((s.piece, int(r)) for r in order[s.start:s.stop])
        assert sorted(counts) == [(p, r) for p, n in enumerate(rows) for r in range(n)]
        assert set(counts.values()) == {1}  # every row of the split exactly once
        sizes = [sum(s.stop - s.start for s in slices) for slices in parts]
        assert max(sizes) - min(sizes) <= 1  # equal shares, within one row
        seen.append([[(s.piece, s.start, s.stop) for s in slices] for slices in parts])
    if workers > 1:
        assert seen[0] != seen[1] != seen[2]  # reshuffled every epoch
    assert partition(rows, workers, 5, 1) == partition(rows, workers, 5, 1)  # from the seed


class Pixels:
    """A transform that keeps the decoded colour: (3, 2, 2) of the image's mean RGB / 255."""

    decode_side = None

    def __call__(self, img, rng):
        mean = np.asarray(img, np.float32).reshape(-1, 3).mean(axis=0) / 255
        return np.broadcast_to(mean[:, None, None], (3, 2, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """60 PNG images of 3 classes whose colour encodes their index, in row groups of 8."""
    root = tmp_path_factory.mktemp("src")
    for i in range(60):
        folder = root / "train" / f"c{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 4, 255 - i * 4, 7)).save(folder / f"{i:03d}.png")
    dst = tmp_path_factory.mktemp("prepared")
    prepare(str(root), str(dst), Settings(row_group_size=8, val_fraction=0.0), jobs=1,
            log=lambda m: None, progress=False)
    return manifest.load(dst)


def ids(x: torch.Tensor) -> list[int]:
    """The index i of each image in a batch, from its red channel (i * 4 / 255)."""
    return [int(round(float(v) * 255 / 4)) for v in x[:, 0, 0, 0]]


def stream(m, worker, workers, start=0, batch=5):
    return PartitionStream(str(m.root), m.pieces("train"), worker, workers, seed=3,
                           batch_size=batch, transform=Pixels(), start=start)


@pytest.mark.parametrize("processes", [0, 2])
def test_two_workers_stream_disjoint_partitions_that_cover_each_epoch(prepared, processes):
    """Two workers, 30 images each per epoch (6 batches of 5): the first 6 batches of both are
    the 60 images once, labels right; the next 6 the 60 again, in another partition. With 2
    loader processes, each decodes every other row group of the stream, and the batches of the
    two alternate: an epoch's boundary blurs by up to a row group (8 images here), no more."""
    got = {w: [] for w in range(2)}
    for w in range(2):
        b = StreamBatches(stream(prepared, w, 2), processes=processes)
        for _ in range(12):
            x, y = next(b)
            assert x.shape == (5, 3, 2, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
            assert [i % 3 for i in ids(x)] == y.tolist()  # the label of each image
            got[w].append(ids(x))
        assert b.position == 12
    epochs = []
    for epoch in range(2):
        images = Counter(i for w in range(2) for batch in got[w][6 * epoch:6 * epoch + 6]
                         for i in batch)
        if processes == 0:  # exactly the data set, once
            assert sorted(images) == list(range(60)) and set(images.values()) == {1}, epoch
        else:
            assert sum(n - 1 for n in images.values()) <= 2 * 8, epoch  # the blur: row groups
        epochs.append({w: sorted(i for batch in got[w][6 * epoch:6 * epoch + 6] for i in batch)
                       for w in range(2)})
    both = Counter(i for w in range(2) for batch in got[w] for i in batch)
    assert sum(both.values()) == 120 and max(both.values()) <= 3 and len(both) == 60
    assert epochs[0] != epochs[1]  # reshuffled between epochs


@pytest.mark.parametrize("processes", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_stream_started_at_batch_n_continues_the_whole_one_exactly(prepared, processes):
    """What a replaced worker does: start at its predecessor's position and read the same."""
    whole = StreamBatches(stream(prepared, 1, 3, batch=4), processes=processes)
    batches = [ids(next(whole)[0]) for _ in range(14)]  # 20 per epoch: crosses two epochs
    for start in (1, 5, 9):
        cont = StreamBatches(stream(prepared, 1, 3, start=start, batch=4), processes=processes)
        assert [ids(next(cont)[0]) for _ in range(14 - start)] == batches[start:], start
