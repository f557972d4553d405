"""A model replica: pull -> forward/backward -> push, against any PS client (Downpour SGD, Dean et
al. 2012, sec. 4.1).

Invariants:
- Parameters, gradients and BatchNorm buffers are views into flat tensors (`FlatModel`): a pulled
  shard lands with one copy, and a push sends a slice of the flat gradient with no gather.
- The worker never waits for other workers. It waits for its own pushes only when more than
  `max_inflight` steps are still unacknowledged (back-pressure, so nothing piles up unboundedly).
- Downpour's knobs: weights are fetched every `fetch_every` steps and gradients accumulated over
  `push_every` steps (their mean is pushed), which the staleness harness can sweep.
- A push carries the *oldest* shard versions its gradient depended on: those of the weights the
  first step of its accumulation window computed on (`window`), however many pulls came after.
- Every push's result (outcome, staleness, lr) becomes one metrics row, with the seconds the
  step spent computing, in injected delay and waiting for a coordinating policy (SSP/BSP).
- A step is two phases, `begin_step` (maybe pull, compute) and `finish_step` (maybe push), so the
  simulator can put virtual time between them; `step` is both, in real time.
- With `prefetch`, the pull a step will need is requested when the step before it begins, in a
  background thread, and lands (one copy) when it is due: its round trips hide behind that
  step's compute. The weights are then one step older (they miss this worker's own last push
  and whatever the others pushed during the step); the staleness each push reports says so. Off
  under SSP and BSP, whose pulls must wait for the clock they carry.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import warnings

import torch
import torch.nn.functional as F

from ..core.layout import FlatModel, ShardSpec
from ..core.shard import to_bfloat16_bits
from ..data.datasets import Batches
from ..models import training_loss


# Arrays from Ray's object store are read-only; we only ever read them through torch.from_numpy.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


class Worker:
    def __init__(self, worker_id: int, flat: FlatModel, shards: list[ShardSpec], client,
                 batches: Batches, *, image_size: int | None = None, in_channels: int | None = None,
                 fetch_every: int = 1, push_every: int = 1, max_inflight: int = 2,
                 aux_weight: float = 0.3, label_smoothing: float = 0.0, device="cpu",
                 delay=None, clock: int = 0, prefetch: bool = False, amp: str = "off",
                 channels_last: str = "off", push_dtype: str = "float32"):
        self.id = worker_id
        self.flat, self.model, self.shards, self.client = flat, flat.model, shards, client
        self.batches = batches
        self.image_size, self.in_channels = image_size, in_channels
        self.fetch_every, self.push_every, self.max_inflight = fetch_every, push_every, max_inflight
        self.aux_weight, self.label_smoothing = aux_weight, label_smoothing
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        # bf16 autocast (no loss scaling needed, unlike fp16) and channels_last inputs, on a GPU
        # by default; the flat model must have been built with the same channels_last
        self.amp = amp == "bf16" or (amp == "auto" and cuda)
        self.channels_last = bool(flat.permuted)
        self.push_bfloat16 = push_dtype == "bfloat16"  # half the bytes on the wire
        self.delay = delay  # a StepDelay (or None): injected straggling, see delays.py
        self.now = time.time  # the simulator replaces this with its virtual clock
        self.versions = [0] * len(shards)  # shard versions of the weights in the model now
        self.window = [0] * len(shards)  # versions the accumulating gradient's first step read
        self.seen = [0] * len(shards)  # highest version of each shard seen (pulls and pushes)
        self.inflight: deque = deque()  # (step, loss, handles) awaiting acknowledgement
        self.rows: deque = deque()  # one per acknowledged push; deque: drained from another thread
        self.step_count = 0
        self.pushes_sent = 0  # shard pushes
        # Pushes made (each to every shard): what SSP counts. A replacement worker, and every
        # worker of a resumed run, starts at the count the shards recorded for it.
        self.clock = clock
        self.timing = {"compute": 0.0, "delay": 0.0, "wait": 0.0}  # s, since the last push
        self.images = 0
        self.last_loss = float("nan")
        self.last_compute = 0.0  # s of the last forward/backward
        self.prefetch = prefetch
        self.prefetch_thread = True  # the simulator fetches in line, at the virtual moment
        self._pool: ThreadPoolExecutor | None = None
        self._next: Future | None = None  # the prefetched pull, once requested
        self.model.train()

    # ---- the three moves of a step ------------------------------------------------------------
    def pull(self) -> None:
        """Copy every shard's weights (and served BatchNorm statistics) into the flat buffers.
        Under a coordinating policy the shards may hold the pull until this worker may read."""
        self._land(*self._fetch())

    def _fetch(self) -> tuple[list, float]:
        """The client's pull: every shard's (snapshot, version), and the s the shards held it.
        Touches nothing of the model, so it may run in a background thread."""
        snapshots = self.client.pull(worker=self.id, clock=self.clock)
        return snapshots, self.client.last_wait

    def _request(self) -> Future:
        """Start `_fetch` now: in a background thread, or in line (the simulator)."""
        if not self.prefetch_thread:
            done: Future = Future()
            done.set_result(self._fetch())
            return done
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"prefetch-{self.id}")
        return self._pool.submit(self._fetch)

    def _land(self, snapshots: list, waited: float) -> None:
        for spec, (arr, version) in zip(self.shards, snapshots):
            p0, p1 = spec.params
            b0, b1 = spec.buffers
            self.flat.load(p0, p1, torch.from_numpy(arr[:p1 - p0]))  # arr is read-only
            self.flat.buffers[b0:b1].copy_(torch.from_numpy(arr[p1 - p0:]))
            self.versions[spec.index] = version
            self.seen[spec.index] = max(self.seen[spec.index], version)
        self.timing["wait"] += waited  # s the shards held this pull (SSP/BSP)

    def compute(self) -> float:
        """Forward and backward on one mini-batch; gradients accumulate in the flat buffer."""
        x, y = next(self.batches)
        x = torch.as_tensor(x).to(self.device, non_blocking=True)  # (B, C, H, W); numpy or a
        y = torch.as_tensor(y).to(self.device, non_blocking=True)  # (B,)  stream's tensors
        if self.in_channels and x.shape[1] != self.in_channels:
            x = x.expand(-1, self.in_channels, -1, -1)  # grey -> RGB for ImageNet models
        if self.image_size and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = training_loss(self.model(x), y, aux_weight=self.aux_weight,
                                 label_smoothing=self.label_smoothing)
        (loss / self.push_every).backward()  # the pushed gradient is the mean over push_every
        self.images += len(y)
        return float(loss.detach())

    def push(self, loss: float) -> None:
        wire = self.flat.wire_grads()  # (P,), in the server's order
        grads = to_bfloat16_bits(wire) if self.push_bfloat16 else wire.cpu().numpy()
        bn = self.flat.buffers.cpu().numpy()  # (Bf,)
        handles = [self.client.push(s.index, grads[s.params[0]:s.params[1]], self.window[s.index],
                                    self.id, bn[s.buffers[0]:s.buffers[1]]) for s in self.shards]
        self.pushes_sent += len(handles)
        self.clock += 1
        self.inflight.append((self.step_count, loss, self.now(), dict(self.timing), handles))
        self.timing = dict.fromkeys(self.timing, 0.0)
        while len(self.inflight) > self.max_inflight:
            self._acknowledge()

    def _acknowledge(self) -> None:
        step, loss, t, timing, handles = self.inflight.popleft()
        for r in self.client.results(handles):
            self.seen[r.shard] = max(self.seen[r.shard], r.version)
            self.rows.append({"time": t, "worker": self.id, "shard": r.shard, "step": step,
                              "version_read": r.version_read, "staleness": r.staleness,
                              "outcome": r.outcome, "lr": r.lr, "loss": loss,
                              "version": r.version, "reason": r.reason, **timing})

    # ---- a step, in two phases --------------------------------------------------------------------
    def pull_due(self) -> bool:
        return self.step_count % self.fetch_every == 0

    def begin_step(self) -> float:
        """Maybe pull, then compute. Returns the mini-batch loss; `last_compute` its seconds."""
        if self.pull_due():
            if self._next is not None:  # requested when the step before began
                self._land(*self._next.result())
                self._next = None
            else:
                self.pull()
        if self.step_count % self.push_every == 0:  # a new gradient starts on these weights
            self.window = list(self.versions)
        if self.prefetch and (self.step_count + 1) % self.fetch_every == 0:
            self._next = self._request()  # the next step's pull, behind this step's compute
        t0 = time.perf_counter()
        loss = self.compute()
        self.last_compute = time.perf_counter() - t0
        return loss

    def finish_step(self, loss: float) -> None:
        """Count the step, and push the accumulated gradient every `push_every` steps."""
        self.step_count += 1
        self.last_loss = loss
        if self.step_count % self.push_every == 0:
            self.push(loss)
            self.flat.zero_grad()

    def step(self) -> float:
        """One Downpour step in real time: maybe pull, compute, (injected delay), maybe push."""
        loss = self.begin_step()
        self.timing["compute"] += self.last_compute
        if self.delay is not None and self.delay.active:
            pause = self.delay(self.last_compute)  # a straggler stretches its computation
            time.sleep(pause)
            self.timing["delay"] += pause
        self.finish_step(loss)
        return loss

    def flush(self) -> None:
        """Wait for every push in flight, so the metrics account for all of them; drop a
        prefetched pull nobody will use."""
        while self.inflight:
            self._acknowledge()
        if self._next is not None:
            self._next.cancel()
            self._next = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def drain_rows(self) -> list[dict]:
        return [self.rows.popleft() for _ in range(len(self.rows))]


def wants_channels_last(setting: str, device: str) -> bool:
    """--channels-last auto|on|off on `device` ('cuda' or 'cpu'): auto is on a GPU only."""
    return setting == "on" or (setting == "auto" and device == "cuda")

