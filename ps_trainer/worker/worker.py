"""A model replica: pull -> forward/backward -> push, against any PS client (Downpour SGD, Dean et
al. 2012, sec. 4.1).

Invariants:
- Parameters, gradients and BatchNorm buffers are views into flat tensors (`FlatModel`): a pulled
  shard lands with one copy, and a push sends a slice of the flat gradient with no gather. On a
  CPU, a snapshot from Ray's object store (sealed: nobody writes it again) lands with no copy at
  all: the parameters become views of it (`FlatModel.alias`), which keeps it alive until the
  next pull lands.
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
- Communication runs in one background thread (`comm`), in the order the steps ask for it, so
  the training thread only computes: a push copies the gradient once into a send buffer (on a GPU,
  one device-to-host copy into pinned memory on a side stream) and hands it over; the Ray round
  trips, and the serialization into the object store, overlap the next step's compute.
- With `prefetch`, the pull a step will need is requested when the step before it begins, and
  lands (one copy) when it is due: its round trips hide behind that step's compute too. The
  weights are then one step older (they miss this worker's own last push and whatever the others
  pushed during the step); the staleness each push reports says so. Off under SSP and BSP, whose
  pulls must wait for the clock they carry.
- With `exchange` (when every step pulls and pushes, and the client can), a push and the pull
  after it are one round trip: each shard answers the push with its result and its weights after
  it (Downpour's push-then-fetch, Dean et al. 2012), which the next step lands (with `prefetch`,
  the step after: one version older, as a prefetched pull). Same weights, half the calls.
- On a GPU, pulled weights are staged in pinned host memory (in the comm thread) and copied to the
  device without blocking the host; gradients are zeroed just before the next backward, after
  the device-to-host copy of the pushed ones (so that copy overlaps the next forward).
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ..core.layout import FlatModel, ShardSpec
from ..core.shard import BFLOAT16_BITS
from ..data.datasets import Batches
from ..models import training_loss


# Arrays from Ray's object store are read-only; we only ever read them through torch.from_numpy.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


class Worker:
    def __init__(self, worker_id: int, flat: FlatModel, shards: list[ShardSpec], client,
                 batches: Batches, *, image_size: int | None = None, in_channels: int | None = None,
                 fetch_every: int = 1, push_every: int = 1, max_inflight: int = 2,
                 aux_weight: float = 0.3, label_smoothing: float = 0.0, device="cpu",
                 delay=None, clock: int = 0, prefetch: bool | str = False, amp: str = "off",
                 channels_last: str = "off", push_dtype: str = "float32",
                 exchange: bool | str = True, land: str = "auto"):
        self.id = worker_id
        self.flat, self.model, self.shards, self.client = flat, flat.model, shards, client
        self.batches = batches
        self.image_size, self.in_channels = image_size, in_channels
        self.fetch_every, self.push_every, self.max_inflight = fetch_every, push_every, max_inflight
        self.aux_weight, self.label_smoothing = aux_weight, label_smoothing
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        # Mixed precision: bf16 autocast on a GPU by default (no loss scaling needed), fp16 with
        # dynamic loss scaling where bf16 is missing; channels_last inputs on a GPU by default
        # (the flat model must have been built with the same channels_last).
        self.amp_dtype = amp_dtype(amp, cuda)
        self.loss_scale = FP16_INITIAL_SCALE if self.amp_dtype == torch.float16 else 1.0
        self.good_pushes = 0  # in a row, at this loss scale
        self.overflows = 0  # fp16 gradients that overflowed: dropped, not pushed
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
        # on, off, or auto: on a GPU, whose steps are short next to the pull of a large model
        self.prefetch = prefetch in (True, "on") or (prefetch == "auto" and cuda)
        # push and the next pull in one round trip, where it is the same thing (see `_exchange`)
        self.exchange = exchange in (True, "on") and fetch_every == push_every == 1 \
            and hasattr(client, "exchange")
        self._exchanged: deque = deque()  # futures of the pulls the pushes' replies carry
        # land auto|copy. On a CPU, a snapshot its client promises nobody writes again (a sealed
        # object in Ray's object store) becomes the model's weights where it lies, with no
        # landing copy (`FlatModel.alias`): auto does that wherever it can.
        self.alias = land != "copy" and not cuda and not flat.permuted \
            and getattr(client, "sealed_snapshots", False)
        # Pulls and pushes go through the comm thread; the simulator does them in line, at the
        # virtual moment they happen.
        self.threaded = True
        self._comm: ThreadPoolExecutor | None = None
        self._acks: ThreadPoolExecutor | None = None  # awaits the shards' replies to pushes
        self._next: Future | None = None  # the prefetched pull, once requested
        self._sent: Future | None = None  # the last push handed to the comm thread
        self._outbox: tuple | None = None  # send buffers (gradient, BatchNorm statistics)
        self._staging: list | None = None  # two sets of pinned pull buffers (GPU)
        self._staged = 0
        self._landed: list = [None, None]
        self._zero_due = False  # the pushed gradient is still in the flat buffer
        self._copied = None  # CUDA event: the pushed gradient has reached host memory
        self._d2h = torch.cuda.Stream(self.device) if cuda else None
        self.model.train()

    # ---- the three moves of a step ------------------------------------------------------------
    def pull(self) -> None:
        """Copy every shard's weights (and served BatchNorm statistics) into the flat buffers.
        Under a coordinating policy the shards may hold the pull until this worker may read."""
        self._land(*self._request().result())

    def _fetch(self, clock: int) -> tuple[list, float]:
        """The client's pull: every shard's (snapshot, version), and the s the shards held it;
        `clock`: this worker's pushes when it asked. Touches nothing of the model, so it runs in
        the comm thread."""
        snapshots = self._arrive(self.client.pull(worker=self.id, clock=clock))
        return snapshots, self.client.last_wait

    def _stage(self, snapshots: list) -> list:
        """Copy the snapshots into pinned host memory (alternating between two sets, so the one
        still being copied to the device is never overwritten), from which the device copy is
        asynchronous and at full bus speed."""
        if self._staging is None:
            self._staging = [[torch.empty(a.size, pin_memory=True) for a, _ in snapshots]
                             for _ in range(2)]
            self._landed = [None, None]  # CUDA events: the set's copy to the device is done
        self._staged ^= 1
        if self._landed[self._staged] is not None:
            self._landed[self._staged].synchronize()  # (long since: each step ends in a sync)
        out = []
        for buf, (arr, version) in zip(self._staging[self._staged], snapshots):
            buf.numpy()[:] = arr  # numpy's copy releases the GIL: the training thread goes on
            out.append((buf, version))
        return out

    def _run(self, fn, *args) -> Future:
        """`fn(*args)` in the comm thread, after everything handed to it before; in line when
        not `threaded` (the simulator)."""
        if not self.threaded:
            done: Future = Future()
            done.set_result(fn(*args))
            return done
        if self._comm is None:
            self._comm = ThreadPoolExecutor(1, thread_name_prefix=f"comm-{self.id}")
        return self._comm.submit(fn, *args)

    def _request(self) -> Future:
        return self._run(self._fetch, self.clock)

    def _arrive(self, snapshots: list) -> list:
        """Pulled snapshots, ready to land: on a GPU, staged in pinned memory (comm thread)."""
        return self._stage(snapshots) if self.device.type == "cuda" else snapshots

    def _land(self, snapshots: list, waited: float) -> None:
        cuda = self.device.type == "cuda"
        for spec, (arr, version) in zip(self.shards, snapshots):
            p0, p1 = spec.params
            b0, b1 = spec.buffers
            src = arr if isinstance(arr, torch.Tensor) else torch.from_numpy(arr)  # read-only
            if self.alias:
                self.flat.alias(p0, p1, src[:p1 - p0])
            else:
                self.flat.load(p0, p1, src[:p1 - p0], non_blocking=cuda)
            self.flat.buffers[b0:b1].copy_(src[p1 - p0:], non_blocking=cuda)
            self.versions[spec.index] = version
            self.seen[spec.index] = max(self.seen[spec.index], version)
        if cuda and self._staging is not None:  # the pinned set may be refilled once copied
            first = snapshots[0][0]
            used = next(i for i in (0, 1) if self._staging[i][0] is first)
            self._landed[used] = torch.cuda.Event()
            self._landed[used].record()
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
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                            enabled=self.amp_dtype is not None):
            loss = training_loss(self.model(x), y, aux_weight=self.aux_weight,
                                 label_smoothing=self.label_smoothing)
        if self._zero_due:  # the last push's gradient has left: start a new one
            if self._copied is not None:
                torch.cuda.current_stream(self.device).wait_event(self._copied)
            self.flat.zero_grad()
            self._zero_due = False
        # the pushed gradient is the mean over push_every (and unscaled before it leaves)
        (loss * (self.loss_scale / self.push_every)).backward()
        self.images += len(y)
        return float(loss.detach())

    def unscale(self) -> bool:
        """fp16 dynamic loss scaling (Micikevicius et al. 2018, as torch.amp.GradScaler): divide
        the accumulated gradient by the loss scale; if it overflowed, drop it (nothing is pushed)
        and halve the scale; after FP16_GROWTH_INTERVAL good pushes in a row, double it.
        True if the gradient may be pushed."""
        if self.loss_scale == 1.0:
            return True
        if not bool(torch.isfinite(self.flat.grads).all()):
            self.overflows += 1
            self.loss_scale /= 2
            self.good_pushes = 0
            self._zero_due = True
            return False
        self.flat.grads.div_(self.loss_scale)
        self.good_pushes += 1
        if self.good_pushes % FP16_GROWTH_INTERVAL == 0:
            self.loss_scale *= 2
        return True

    def push(self, loss: float) -> None:
        """Hand the accumulated gradient (and BatchNorm statistics) of every shard to the comm
        thread; wait for acknowledgements only beyond `max_inflight` pushes in flight."""
        if not self.unscale():
            return  # an fp16 overflow: this window's gradient is dropped (counted in overflows)
        grads, bn = self._send_buffers()
        args = [(s.index, grads[s.params[0]:s.params[1]], self.window[s.index], self.id,
                 bn[s.buffers[0]:s.buffers[1]]) for s in self.shards]
        if self.exchange and self.threaded:
            pulled: Future = Future()
            self._exchanged.append(pulled)
            self._sent = self._run(self._exchange, args, self._copied, pulled, self.clock + 1)
        else:
            self._sent = self._run(self._send, args, self._copied)
        self._zero_due = True
        self.pushes_sent += len(args)
        self.clock += 1
        self.inflight.append((self.step_count, loss, self.now(), dict(self.timing), self._sent))
        self.timing = dict.fromkeys(self.timing, 0.0)
        while len(self.inflight) > self.max_inflight:
            self._acknowledge()

    def _send_buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """The gradient (in the wire's order and dtype) and BatchNorm statistics, where the comm
        thread may read them while the next step runs: one copy into send buffers (pinned host
        memory on a GPU, copied on a side stream: the next forward does not wait for it)."""
        wire = self.flat.wire_grads()  # (P,), in the server's order
        if self.push_bfloat16:
            wire = wire.to(torch.bfloat16).view(torch.int16)
            if self._d2h is not None:
                wire.record_stream(self._d2h)  # a temporary the side stream still reads
        if not self.threaded:  # in line: the client reads them before push returns
            return wire.cpu().numpy().view(BFLOAT16_BITS if self.push_bfloat16 else np.float32), \
                self.flat.buffers.cpu().numpy()
        if self._sent is not None:
            self._sent.result()  # the comm thread has sent what the buffers hold (long since)
        cuda = self.device.type == "cuda"
        if self._outbox is None or self._outbox[0].dtype != wire.dtype:
            self._outbox = (torch.empty(wire.shape, dtype=wire.dtype, pin_memory=cuda),
                            torch.empty(self.flat.buffers.shape, pin_memory=cuda))
        g, b = self._outbox
        if cuda:
            self._d2h.wait_stream(torch.cuda.current_stream(self.device))  # after the backward
            with torch.cuda.stream(self._d2h):
                g.copy_(wire, non_blocking=True)
                b.copy_(self.flat.buffers, non_blocking=True)
                self._copied = torch.cuda.Event()
                self._copied.record()
        else:
            g.copy_(wire)
            b.copy_(self.flat.buffers)
        return g.numpy().view(BFLOAT16_BITS if self.push_bfloat16 else np.float32), b.numpy()

    def _send(self, args: list, copied) -> Future:
        """In the comm thread: each shard's push, once the gradient is in host memory. Returns
        the future of their results, awaited in a second thread (`acks`), so that neither the
        training thread nor the next pull waits for a shard's reply."""
        if copied is not None:
            copied.synchronize()
        handles = [self.client.push(*a) for a in args]
        if not self.threaded:
            done: Future = Future()
            done.set_result(self.client.results(handles))
            return done
        if self._acks is None:
            self._acks = ThreadPoolExecutor(1, thread_name_prefix=f"acks-{self.id}")
        return self._acks.submit(self.client.results, handles)

    def _exchange(self, args: list, copied, pulled: Future, clock: int) -> Future:
        """In the comm thread: each shard's push answered with the weights after it (`pulled`
        gets them, for the next step to land). Returns the future of the push results, as
        `_send` does; a pull that fails (e.g. stopped while a shard recovers) fails `pulled`
        only, the pushes stay acknowledged."""
        if copied is not None:
            copied.synchronize()
        try:
            results, replies = self.client.exchange(args, clock)
        except BaseException as e:
            pulled.set_exception(e)
            raise
        try:
            snapshots = self._arrive(self.client.complete(replies, worker=self.id, clock=clock))
            pulled.set_result((snapshots, self.client.last_wait))
        except BaseException as e:
            pulled.set_exception(e)
        done: Future = Future()
        done.set_result(results)
        return done

    def _acknowledge(self) -> None:
        step, loss, t, timing, sent = self.inflight.popleft()
        for r in sent.result().result():  # pushed, then acknowledged
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
            elif self._exchanged:  # the reply to the last push (or, prefetching, the one before)
                self._land(*self._exchanged.popleft().result())
            else:
                self.pull()
        if self.step_count % self.push_every == 0:  # a new gradient starts on these weights
            self.window = list(self.versions)
        if self.prefetch and (self.step_count + 1) % self.fetch_every == 0 and not self._exchanged:
            # the next step's pull, behind this step's compute (with `exchange`, only the first
            # step asks: after it, the reply to each push arrives while a step computes)
            self._next = self._request()
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
        self._exchanged.clear()
        for pool in (self._comm, self._acks):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._comm = self._acks = None

    def drain_rows(self) -> list[dict]:
        return [self.rows.popleft() for _ in range(len(self.rows))]


FP16_INITIAL_SCALE = 2.0 ** 16  # torch.amp.GradScaler's defaults
FP16_GROWTH_INTERVAL = 2000


def amp_dtype(setting: str, cuda: bool):
    """--amp auto|bf16|fp16|off: the autocast dtype, or None. auto is bf16 on a GPU that has it,
    fp16 (with loss scaling) on one that does not, and off on a CPU."""
    if setting == "auto":
        if not cuda:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setting)


def wants_channels_last(setting: str, device: str) -> bool:
    """--channels-last auto|on|off on `device` ('cuda' or 'cpu'): auto is on a GPU only."""
    return setting == "on" or (setting == "auto" and device == "cuda")

