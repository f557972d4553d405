"""The worker as a Ray actor: builds its model replica and runs `Worker.step` in a loop.

The actor is threaded (max_concurrency=2) so the driver can drain metrics or ask it to stop while
`run` is looping. Its data partition arrives as numpy arrays (zero-copy from the object store),
or, for a prepared data set, as the description of its stream, which it reads itself, decoding
in `loader` DataLoader processes (data/stream.py).
"""

from __future__ import annotations

import os
import threading
import time

import torch

from ..core.layout import FlatModel, ShardSpec
from ..core.malloc import tune_malloc
from ..data.stream import open_batches
from ..models import build
from ..transport.ray_shard import RayClient, Stopped
from .worker import Worker, wants_channels_last


class WorkerActor:
    def __init__(self, worker_id: int, model_name: str, num_classes: int, in_channels: int,
                 shards: list, specs: list[ShardSpec], data: dict, *, batch_size: int, seed: int,
                 device: str, threads: int, options: dict, crash_at: int = 0, loader: int = 0):
        torch.set_num_threads(threads)
        tune_malloc()  # a step frees and allocates the same tensors: keep their pages (malloc.py)
        torch.manual_seed(seed * 1000 + worker_id)
        model = build(model_name, num_classes=num_classes, in_channels=in_channels)
        dev = "cuda" if device == "cuda" else "cpu"
        if dev == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        flat = FlatModel(model, device=dev,
                         channels_last=wants_channels_last(options.get("channels_last", "off"), dev))
        batches = open_batches(data, batch_size, seed * 1000 + worker_id, loader, dev == "cuda")
        self._stop = threading.Event()
        self.worker = Worker(worker_id, flat, specs, RayClient(shards, stop=self._stop), batches,
                             in_channels=in_channels, device=dev, **options)
        self.crash_at = crash_at  # fault injection (--crash-worker-at): exit the process here
        self.started = self.finished = 0.0

    def run(self, steps: int) -> dict:
        """Run up to `steps` steps (or until `stop`), then wait for every push in flight."""
        self.started = time.time()
        for _ in range(steps):
            if self._stop.is_set():
                break
            if self.crash_at and self.worker.step_count == self.crash_at:
                os._exit(1)  # a real process death, as an OOM kill or a lost machine would be
            try:
                self.worker.step()
            except Stopped:  # told to stop while a shard held its pull: the step never began
                break
        self.worker.flush()
        self.worker.client.retire(self.worker.id)  # SSP/BSP: nobody waits for a finished worker
        self.finished = time.time()
        return {**self.progress(), "seconds": self.finished - self.started}

    def stop(self) -> None:
        self._stop.set()

    def progress(self) -> dict:
        w = self.worker
        return {"worker": w.id, "steps": w.step_count, "images": w.images, "loss": w.last_loss,
                "pushes_sent": w.pushes_sent, "inflight": len(w.inflight)}

    def versions_seen(self) -> tuple[list[int], int]:
        """The highest version of each shard this worker has seen (a restarted shard continues
        above the highest over all workers, so no version number is issued twice), and how
        many pushes it has made."""
        return list(self.worker.seen), self.worker.clock

    def drain(self) -> tuple[list[dict], dict]:
        """Metrics rows acknowledged since the last drain, and progress counters."""
        return self.worker.drain_rows(), self.progress()
