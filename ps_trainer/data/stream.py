"""Each worker streams its own partition of a prepared data set: DistBelief's model replicas each
own a shard of the data (Dean et al. 2012, sec. 4.1). The driver hands a worker the list of row
groups (`Piece`s: file, row group, rows), never pixels; the worker computes the rest from the run's
seed, so a replacement worker, or a resumed run, reads exactly what its predecessor would have.

- **Partition of epoch e.** The pieces in an order drawn from (seed, e), their rows laid end to
  end (each row group's rows in an order drawn from (seed, e, piece)) and cut into K ranges of
  equal length (within one row): worker w reads range w, as `Slice`s of row groups. Disjoint,
  together the split exactly once, reshuffled every epoch; a row group cut between two workers is
  read by both, each taking its own rows.
- **A worker's stream** is its range of epoch 0, then of epoch 1, and so on; batches are B
  consecutive rows, crossing row groups and epochs (nothing dropped, nothing read twice in one
  epoch). Epochs are counted over all workers together: each worker's range is 1/K of the data.
- **Loader processes.** With L `DataLoader` processes the stream's slices are dealt to them in
  turn; process l makes whole batches of its own rows and the DataLoader returns the processes'
  batches in turn. The batch sequence is a function of (pieces, seed, K, w, B, L) only.
- **Position.** A stream can start at batch n: each process skips its share of the first n
  batches by row counts, reading nothing it skips.
- **Memory** is bounded by the prefetch depth (L x prefetch batches, plus one row group per
  process), not by the partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np
import torch

from .manifest import Piece, open_parquet


class Slice(NamedTuple):
    piece: int  # index into the pieces list
    epoch: int
    start: int  # rows [start, stop) of the piece, in its order for this epoch
    stop: int


def partition(rows: list[int], workers: int, seed: int, epoch: int) -> list[list[Slice]]:
    """The K ranges of epoch `epoch` (see the module docstring), as lists of slices."""
    order = np.random.default_rng([seed, epoch, 0x5EED]).permutation(len(rows))
    ends = np.cumsum([rows[p] for p in order])  # where each piece ends in the laid-out rows
    total = int(ends[-1]) if len(ends) else 0
    cuts = [w * total // workers for w in range(workers + 1)]
    parts: list[list[Slice]] = [[] for _ in range(workers)]
    begin = 0
    for p, end in zip(order, ends):
        for w in range(workers):  # the (at most few) ranges this piece overlaps
            lo, hi = max(begin, cuts[w]), min(int(end), cuts[w + 1])
            if lo < hi:
                parts[w].append(Slice(int(p), epoch, lo - begin, hi - begin))
        begin = int(end)
    return parts


def row_order(rows: int, seed: int, epoch: int, piece: int) -> np.ndarray:
    """The order of a row group's rows in epoch `epoch` (shared by every worker that reads it)."""
    return np.random.default_rng([seed, epoch, piece, 0x0DE5]).permutation(rows)


@dataclass
class PartitionStream(torch.utils.data.IterableDataset):
    """Worker `worker`'s batches of decoded, augmented images, from batch `start` on (endless).
    `root`: the prepared folder (a local path or a pyarrow filesystem URI); `transform`: a
    callable (PIL image, numpy Generator) -> (3, S, S) float32 array (`augment.TrainTransform`)."""

    root: str
    pieces: list  # [Piece] of the split, in the manifest's order
    worker: int
    workers: int
    seed: int
    batch_size: int
    transform: object
    start: int = 0

    def slices(self, process: int = 0, processes: int = 1) -> Iterator[Slice]:
        """This worker's slices, epoch after epoch; those of loader process `process` of `processes`."""
        rows = [p.rows for p in self.pieces]
        k, epoch = 0, 0
        while True:
            for s in partition(rows, self.workers, self.seed, epoch)[self.worker]:
                if k % processes == process:
                    yield s
                k += 1
            epoch += 1

    def rows(self, process: int = 0, processes: int = 1) -> Iterator[tuple[Slice, int, int]]:
        """(slice, first, last) runs of this process's rows after skipping its share of the
        first `start` batches, by row counts alone."""
        skip = self.batch_size * max(0, (self.start - process + processes - 1) // processes)
        for s in self.slices(process, processes):
            n = s.stop - s.start
            if skip >= n:
                skip -= n
                continue
            yield s, s.start + skip, s.stop
            skip = 0

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        process, processes = (info.id, info.num_workers) if info else (0, 1)
        # The DataLoader asks its processes in turn, from the first: started at batch n, its
        # first process must be the one that makes batch n.
        process = (process + self.start) % processes
        from . import augment  # decoding needs Pillow; only the reading processes import it

        files: dict = {}
        xs, ys = [], []
        for s, first, last in self.rows(process, processes):
            piece = self.pieces[s.piece]
            images, labels = read_row_group(piece, files)
            for r in row_order(piece.rows, self.seed, s.epoch, s.piece)[first:last]:
                img = augment.decode(images[int(r)].as_py(), self.transform.decode_side)
                # one generator per image: its augmentation is the same whoever reads it, from
                # whichever position (a resumed stream repeats an uninterrupted one exactly)
                rng = np.random.default_rng([self.seed, s.epoch, s.piece, int(r)])
                xs.append(self.transform(img, rng))
                ys.append(int(labels[r]))
                if len(ys) == self.batch_size:
                    yield torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64)
                    xs, ys = [], []


def read_row_group(piece: Piece, files: dict):
    """(encoded images, labels) of one row group. `files` keeps the last file open (a held-out
    split reads its row groups in file order; a training stream's come shuffled, so keeping
    every file it met open would only grow)."""
    if piece.path not in files:
        files.clear()
        files[piece.path] = open_parquet(piece.path)
    table = files[piece.path].read_row_group(piece.row_group, columns=["image", "label"],
                                             use_threads=False)  # no pyarrow threads per process
    return table.column("image").combine_chunks(), table.column("label").to_numpy()


class StreamBatches:
    """`next()` -> (x (B, 3, S, S) float32, y (B,) int64) tensors of one worker's stream, decoded
    in `processes` DataLoader processes (0: in this process) with `prefetch` batches each in
    flight, in pinned memory for a GPU. `position`: batches handed out, the start included."""

    def __init__(self, stream: PartitionStream, processes: int = 0, prefetch: int = 2,
                 pin_memory: bool = False):
        self.stream, self.position = stream, stream.start
        self.loader = torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=processes, pin_memory=pin_memory,
            prefetch_factor=prefetch if processes else None, persistent_workers=False,
            worker_init_fn=_one_thread,
            # spawn, not fork: a Ray worker process has threads (gRPC, the object store client)
            # that a forked child would inherit in whatever state they were
            multiprocessing_context="spawn" if processes else None)
        self._it = iter(self.loader)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = next(self._it)
        self.position += 1
        return batch

    def __iter__(self):
        return self

    def close(self) -> None:
        """Stop the loader processes now (else they stop when this object is collected). One
        stopped while it was handing over a batch may die of it: nothing is lost by that."""
        shutdown = getattr(self._it, "_shutdown_workers", None)
        if shutdown:
            try:
                shutdown()
            except RuntimeError:
                pass


def _one_thread(_: int) -> None:
    """A loader process decodes on one core: L of them must not each start a thread per core."""
    torch.set_num_threads(1)


def held_out(pieces: list, transform, batch_size: int, limit: int | None = None):
    """(x (b * views, 3, S, S), y (b,)) batches of a held-out split, its first `limit` images in
    file order (the same ones every evaluation), decoded here; `transform` gives each image's
    views (`augment.EvalTransform`)."""
    from . import augment

    xs, ys, n = [], [], 0
    files: dict = {}
    for piece in pieces:
        images, labels = read_row_group(piece, files)
        for r in range(piece.rows):
            if limit is not None and n >= limit:
                break
            xs.append(transform(augment.decode(images[r].as_py(), transform.decode_side)))
            ys.append(int(labels[r]))
            n += 1
            if len(ys) == batch_size:
                yield torch.from_numpy(np.concatenate(xs)), torch.tensor(ys, dtype=torch.int64)
                xs, ys = [], []
        if limit is not None and n >= limit:
            break
    if ys:
        yield torch.from_numpy(np.concatenate(xs)), torch.tensor(ys, dtype=torch.int64)


def open_batches(data: dict, batch_size: int, seed: int, processes: int = 0,
                 pin_memory: bool = False):
    """A worker's batches from what `trainer.plan.worker_data` gave it: its stream, or its
    partition's arrays (`datasets.Batches`), from the batch it starts at."""
    if "stream" in data:  # pinned batches copy to a GPU without a staging copy
        return StreamBatches(data["stream"], processes, pin_memory=pin_memory)
    from .datasets import Batches

    return Batches(data["x"], data["y"], batch_size, seed=seed, start=data["start"])


__all__ = ["Piece", "Slice", "partition", "row_order", "PartitionStream", "StreamBatches", "held_out", "open_batches"]
