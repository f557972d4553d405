"""One parameter-server shard's state machine (DistBelief's parameter-server shard, Dean et al. 2012).

The Ray actor, the gRPC servicer and the in-process simulator all wrap this same object, so the
update rule and the staleness accounting are written and tested once, without any cluster.

Invariants:
- `version` counts the updates this shard applied. A pull returns the version it read; a push
  carries it back and staleness = version now - version read.
- Every push ends in exactly one outcome, counted in `counters` (and per worker): a push that is
  malformed (wrong size, dtype, shard, non-finite values, version from the future) is rejected and
  leaves every array and the version unchanged. A large shard finds non-finite values in the
  update's own pass, which writes a second copy of the state (`fuses`, fused_push.py) and keeps
  it only if every gradient was finite.
- The optimizer (Nesterov momentum, weight decay, lr schedule) runs here, in place; workers send
  raw gradients. The Polyak average follows every applied update.
- Pushes are decided in the order they reached the queue, one at a time, under the lock; those
  that queued while the shard was busy are applied together (group commit, `push`), with exactly
  the numbers one after another would give.
- BatchNorm running statistics are state, not gradients: each push may carry the worker's current
  statistics; the shard keeps each worker's latest and serves their mean.
- Coordination facts live here too, so coordinating policies (SSP, BSP) need no extra process:
  pushes received per worker (`clocks`), finished workers (`retired`), the version each worker's
  last push was computed on (`last_read`). `ready(worker, clock)` asks the policy whether a worker
  may read; `wait_ready` blocks on a condition until it may (threads: Ray actor, in-process).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import Counter
from dataclasses import dataclass

import warnings

import numpy as np
import torch

from . import dc_kernel, fused_push, push_kernel
from .optim import BLOCK, NesterovMomentum
from .policy import AGGREGATED, APPLIED, COMPENSATED, REJECTED, Async, Decision
from .polyak import PolyakAverage
from .schedule import LRSchedule


@dataclass(frozen=True)
class PushResult:
    shard: int
    worker: int
    outcome: str  # one of policy.OUTCOMES
    version_read: int  # the version the gradient was computed on (-1 when unreadable)
    staleness: int  # version at arrival - version read (-1 when the push was unreadable)
    version: int  # the shard's version after this push
    lr: float  # learning rate applied (0 when rejected)
    reason: str = ""  # why it was rejected, for the metrics and the error counters


# numpy has no bfloat16: a bfloat16 gradient (--push-dtype bfloat16, half the bytes) travels as
# its 16-bit patterns in a uint16 array, and the shard widens it to float32 before anything else.
BFLOAT16_BITS = np.dtype(np.uint16)


def to_bfloat16_bits(t: torch.Tensor) -> np.ndarray:
    """A float tensor rounded to bfloat16, as a uint16 numpy array of its bit patterns."""
    return t.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """The float32 values of bfloat16 bit patterns (exact: bfloat16 is float32's top half)."""
    return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()


def gradient_finite(grad: np.ndarray, compiled: bool = False) -> bool:
    """Is every element finite? One vectorized read, no temporary: the sum of the elements is
    finite only if every element is (an Inf or NaN anywhere makes it Inf or NaN). A sum that is
    not finite (a NaN or Inf, or a float32 overflow of finite values) is settled exactly by the
    minimum and maximum, both finite iff every element is. The sum reads at twice `aminmax`'s
    speed on the Xeon VM (docs/benchmarks.md), at the same speed on the EPYC. With `compiled` (a
    shard that runs the compiled push), the sum is push_kernel's, which reads the gradient in
    several regions side by side: 0.8x torch.sum's time there."""
    t = torch.from_numpy(grad)
    if math.isfinite(push_kernel.total(t) if compiled else float(t.sum())):
        return True
    return extremes_finite(t)


def extremes_finite(t: torch.Tensor) -> bool:
    """Are the minimum and maximum finite (so every element is)? What settles a sum that is not."""
    lo, hi = torch.aminmax(t)
    return math.isfinite(float(lo)) and math.isfinite(float(hi))


NON_FINITE = "gradient contains NaN or Inf"


@dataclass
class _Queued:
    """A push waiting for its turn under the shard's lock (`ShardState.push`, group commit)."""
    grad: np.ndarray
    version_read: int
    worker: int
    bn_stats: np.ndarray | None
    reason: str  # what `_check` found wrong ("" if nothing)
    result: PushResult | None = None  # set by whichever push drained it
    error: BaseException | None = None  # a bug met while deciding it, raised by its own pusher


# Arrays from Ray's object store are read-only; we only ever read them through torch.from_numpy.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


class ShardState:
    def __init__(self, index: int, params: np.ndarray, buffers: np.ndarray | None = None, *,
                 optimizer: NesterovMomentum | None = None, schedule: LRSchedule | None = None,
                 policy=None, averager: PolyakAverage | None = None, block: int = BLOCK,
                 one_pass: bool = True):
        self.index = index
        self.buffers = np.array(buffers if buffers is not None else [], np.float32, copy=True)  # (B_i,)
        # The weights and their Polyak average each sit at the head of an allocation with room
        # for the served BatchNorm statistics after them: `publication` hands out `[weights |
        # BatchNorm statistics]` without assembling a copy (a 100 MB shard's publication then
        # costs the object store's copy alone).
        # (Aligned to a cache line: the one-pass push writes them with streaming stores.)
        n, b = np.shape(params)[0], self.buffers.shape[0]
        self._stores = {False: fused_push.aligned_empty(n + b)}
        self.params = self._stores[False][:n]  # (P_i,) owned, updated in place
        self.params[:] = params
        self.momentum = fused_push.aligned_empty(n)  # (P_i,) Nesterov buffer
        self.momentum[:] = 0.0
        self.average = None  # (P_i,) Polyak weights
        if averager is not None:
            self._stores[True] = fused_push.aligned_empty(n + b)
            self.average = self._stores[True][:n]
            self.average[:] = self.params
        self.bn_slots: dict[int, np.ndarray] = {}  # worker -> latest BatchNorm statistics
        self.bn_versions: dict[int, int] = {}  # worker -> version when its slot was last written
        self.optimizer = optimizer or NesterovMomentum()
        self.schedule = schedule or LRSchedule(0.01)
        self.policy = policy or Async()
        self.averager = averager
        self.block = block
        self.version = 0
        self.counters: Counter = Counter()  # outcome -> pushes
        self.worker_counters: dict[int, Counter] = {}  # worker -> outcome -> pushes
        self.reject_reasons: Counter = Counter()
        self.staleness_sum = 0  # over pushes whose staleness could be read, for the mean
        self.staleness_count = 0
        # Coordination (see module docstring).
        self.clocks: Counter = Counter()  # worker -> pushes received, whatever their outcome
        self.retired: set[int] = set()  # workers that finished and will push no more
        self.last_read: dict[int, int] = {}  # worker -> version its last valid push was computed on
        self.waits = 0  # pulls that had to wait for the policy
        self.batched = 0  # pushes applied in one pass together with others (group commit)
        # DC-ASGD needs the weights each gradient was computed on: snapshots by version, and the
        # versions each worker read that a push of its may still carry. A gradient accumulated
        # over several pulls carries the first (oldest) of them, and a pull can overtake the push
        # before it, so a read is let go only once the worker pushed on a later one.
        self._reads: dict[int, np.ndarray] = {}
        self._readers: dict[int, list[int]] = {}
        # BSP: the sum of this version's gradients and how many there are.
        self._agg = torch.zeros(self.params.shape[0]) if self.policy.aggregates else None
        self._agg_count = 0
        self.contributors: set[int] = set()  # workers whose gradient is in the sum
        self.lock = threading.Lock()  # held while arrays change; kernels release the GIL
        self.cond = threading.Condition(self.lock)  # notified whenever a worker may have become ready
        self._queue: list[_Queued] = []  # pushes checked and waiting for the lock, in arrival order
        self._queue_lock = threading.Lock()  # guards `_queue` alone (never held while waiting)
        # torch views over the numpy storage: the kernels write the numpy arrays in place.
        self._w, self._buf = torch.from_numpy(self.params), torch.from_numpy(self.momentum)
        self._avg = torch.from_numpy(self.average) if self.average is not None else None
        self._blocks: torch.Tensor | None = None  # (2, block) scratch of `_steps`, made when first needed
        # The one-pass push (fused_push.py): does this shard check and update in one pass (None:
        # not decided yet), and the second copy of its state that the pass writes.
        self._fusing: bool | None = None if one_pass else False
        self._spare: tuple | None = None  # (stores, momentum), as `_stores` and `momentum`

    # ---- pull ------------------------------------------------------------------------------------
    def pull(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Read-only views of the weights and the served BatchNorm statistics, and the version."""
        w = self.params.view()
        w.flags.writeable = False
        return w, self.bn_mean(), self.version

    def snapshot(self, averaged: bool = False, worker: int | None = None) -> tuple[np.ndarray, int]:
        """One contiguous copy `[weights | BatchNorm statistics]` and its version, taken under the
        lock so it is never torn by a concurrent push. This is what crosses a process boundary.
        `worker` says who reads it (None: the evaluator), for policies that remember reads."""
        with self.lock:
            w = self.average if averaged and self.average is not None else self.params
            arr, version = np.concatenate([w, self.bn_mean()]), self.version
            if worker is not None and not averaged:
                self._note_read(worker, version, arr)
            return arr, version

    def publication(self, averaged: bool = False) -> tuple[np.ndarray, int]:
        """`[weights | BatchNorm statistics]` and its version, like `snapshot` but without a copy:
        the weights' own storage, the served statistics written into the slots after them. The
        caller holds `lock` for as long as it reads the array (the next push changes it), e.g.
        while Ray copies it into the object store."""
        store = self._stores[averaged and self.average is not None]
        store[self.params.shape[0]:] = self.bn_mean()
        return store, self.version

    def note_read(self, worker: int, version: int, snapshot: np.ndarray) -> None:
        """Record that `worker` read `snapshot` (of `version`), when it was served from a cache."""
        with self.lock:
            self._note_read(worker, version, snapshot)

    def _note_read(self, worker: int, version: int, snapshot: np.ndarray) -> None:
        if not self.policy.keeps_reads:
            return
        self._reads.setdefault(version, snapshot[:self.params.shape[0]])  # a view: no copy
        reads = self._readers.setdefault(worker, [])
        if not reads or reads[-1] != version:  # a cached snapshot is read many times
            reads.append(version)

    def _forget_reads(self, worker: int, oldest: int | None) -> None:
        """`worker` will push no gradient on a version before `oldest` (None: none at all): let
        its older reads go, and the snapshots nobody may push on any more."""
        reads = self._readers.pop(worker, [])
        if oldest is not None:
            self._readers[worker] = [v for v in reads if v >= oldest]
        live = {v for d in self._readers.values() for v in d}
        for v in [v for v in self._reads if v not in live]:
            del self._reads[v]

    # ---- coordination -----------------------------------------------------------------------------
    def ready(self, worker: int, clock: int) -> bool:
        """May `worker`, having pushed `clock` times, read now? Its own pushes must have arrived
        (a threaded server may run a pull before the push sent just before it) and the policy
        must agree. Call with the lock held, or accept a racy answer."""
        if not self.policy.coordinates:
            return True
        return self.clocks[worker] >= clock and self.policy.ready(self, worker, clock)

    def wait_ready(self, worker: int, clock: int, timeout: float | None = None) -> bool:
        """Block until `ready(worker, clock)`, at most `timeout` s; False if it timed out.

        The worker is the authority on how many pushes it made: a shard that counted more
        (a push of a worker that died reached this shard and not the others, or was retried
        here after a restart) adopts the worker's count, so every shard's clock agrees with it.
        Only ever lowers: a lower count means pushes still on their way."""
        with self.cond:
            if self.clocks[worker] > clock:
                self.clocks[worker] = clock
            if self.ready(worker, clock):
                return True
            self.waits += 1
            return self.cond.wait_for(lambda: self.ready(worker, clock), timeout)

    def retire(self, worker: int) -> None:
        """`worker` will push no more: stop waiting for it (SSP) or counting it in a quorum (BSP)."""
        with self.cond:
            self.retired.add(worker)
            if self.policy.keeps_reads:
                self._forget_reads(worker, None)
            if self.policy.aggregates and self._agg_count >= self.policy.quorum(self):
                self._step_aggregate()
            self.cond.notify_all()

    def bn_mean(self) -> np.ndarray:
        """The mean of the workers' latest BatchNorm statistics, leaving out those of workers
        that stopped pushing long ago (a worker that finished early, or left: its statistics
        describe weights that are gone). "Long ago" is more than 4 rounds of pushes of every
        worker with a slot behind the newest slot, so workers that end together all count."""
        if not self.bn_slots:
            return self.buffers.copy()
        newest = max(self.bn_versions.values(), default=0)
        recent = [a for w, a in self.bn_slots.items()
                  if self.bn_versions.get(w, newest) >= newest - 4 * len(self.bn_slots)]
        return np.mean(np.stack(recent), axis=0, dtype=np.float32)

    # ---- push ------------------------------------------------------------------------------------
    def _check(self, grad, bn_stats, shard) -> str:
        """What is wrong with the push's arrays themselves ("" if nothing). It reads no state that
        changes, so it runs before the shard's lock: two pushes check their gradients at once,
        and pulls are not held while a gradient is read."""
        if shard is not None and shard != self.index:
            return f"push for shard {shard} reached shard {self.index}"
        if not isinstance(grad, np.ndarray):
            return f"gradient must be a numpy array, got {type(grad).__name__}"
        if grad.dtype != np.float32:
            return (f"gradient dtype {grad.dtype}, expected float32 (or bfloat16, sent as its "
                    f"uint16 bits)")
        if grad.ndim != 1 or grad.shape[0] != self.params.shape[0]:
            return f"gradient shape {grad.shape}, expected ({self.params.shape[0]},)"
        if bn_stats is not None:
            if not isinstance(bn_stats, np.ndarray) or bn_stats.dtype != np.float32 \
                    or bn_stats.shape != self.buffers.shape:
                return f"BatchNorm statistics must be float32 of shape {self.buffers.shape}"
            if not np.isfinite(bn_stats).all():
                return "BatchNorm statistics contain NaN or Inf"
        if self.fuses():
            return ""  # the one-pass push sums the gradient as it applies it (`_drain`)
        if not gradient_finite(grad, self.optimizer.compiled_push(grad.shape[0],
                                                                  self._avg is not None)):
            return NON_FINITE
        return ""

    def fuses(self) -> bool:
        """Does this shard check each gradient in the update's own pass (fused_push.py)? Where
        the compiled loop runs (large shards with momentum), the kernel builds, and every
        applied push is a plain step: not with DC-ASGD (it compensates at the push's turn) or
        BSP (it sums first). Decided once, at the first push; never with `one_pass=False` (the
        memory of a second copy of the state saved, or the in-place path measured)."""
        if self._fusing is None:
            self._fusing = (not self.policy.keeps_reads and not self.policy.aggregates
                            and self.optimizer.compiled_push(self.params.shape[0],
                                                             self.average is not None)
                            and fused_push.library() is not None)
        return self._fusing

    def _check_version(self, version_read) -> str:
        """A version this shard has issued (under the lock: the version moves)."""
        if not isinstance(version_read, (int, np.integer)) or not 0 <= version_read <= self.version:
            return f"version_read {version_read!r} outside [0, {self.version}]"
        return ""

    def push(self, grad: np.ndarray, version_read: int, worker: int = 0,
             bn_stats: np.ndarray | None = None, shard: int | None = None) -> PushResult:
        """Apply (or reject) one gradient. Never raises on bad input: the outcome says what happened.

        Group commit: a push that arrives while the shard is busy queues, and whichever push next
        holds the lock decides every queued one in arrival order and applies the applied ones
        together, block by block (`_steps`): each block of the weights, momentum and average is
        read and written once for all of them. Every element's arithmetic is the same, in the
        same order, as one push after another, so the result is bit for bit the same; what a
        saturated shard saves is the memory traffic (see docs/architecture.md)."""
        if isinstance(grad, np.ndarray) and grad.dtype == BFLOAT16_BITS:
            grad = from_bfloat16_bits(grad)  # checked and accumulated in float32, as always
        if isinstance(grad, np.ndarray) and not grad.flags.c_contiguous:
            grad = np.ascontiguousarray(grad)  # (the one-pass push reads it as one run of floats)
        queued = _Queued(grad, version_read, worker, bn_stats, self._check(grad, bn_stats, shard))
        with self._queue_lock:
            self._queue.append(queued)
        with self.cond:
            while queued.result is None and queued.error is None:  # (again if it was put back)
                self._drain()
        if queued.error is not None:
            raise queued.error
        return queued.result

    def _drain(self) -> None:
        """Decide every queued push in arrival order, then apply the plain steps among them in one
        blocked pass (under the lock). A push that needs the arrays as they are at its turn
        (DC-ASGD's compensation, a BSP step) first applies the steps decided before it.

        A shard that checks in the update's pass (`fuses`) takes at most fused_push.GROUP pushes
        and learns whether a gradient was finite only from that pass, which leaves the state as
        it was when one was not: it then puts back the bookkeeping as it was before the group
        (`_ledger`), marks those pushes rejected and decides the group again."""
        fusing = self.fuses()
        with self._queue_lock:
            take = fused_push.GROUP if fusing else len(self._queue)
            batch, self._queue = self._queue[:take], self._queue[take:]
        ledger = self._ledger() if fusing else None
        while True:
            steps: list = []  # (g, lr, Polyak weight) of plain pushes decided, not yet applied
            owners: list = []  # the push each step came from
            try:
                for i, q in enumerate(batch):
                    try:
                        before = len(steps)
                        q.result = self._decide(q, steps)
                        if len(steps) > before:
                            owners.append(q)
                    except BaseException as e:  # a bug, not bad input: its pusher raises it,
                        q.error = e  # and the pushes behind it go back to the queue for their threads
                        with self._queue_lock:
                            self._queue[:0] = batch[i + 1:]
                        batch = batch[:i + 1]
                        break
            finally:
                bad = self._steps(steps)
            if not bad:
                return
            self._restore(ledger)  # the arrays are as they were: so is the bookkeeping now
            for i in bad:
                owners[i].reason = NON_FINITE
            for q in batch:
                q.result = q.error = None

    def _ledger(self) -> tuple:
        """The bookkeeping `_decide` changes, copied (small: a few numbers per worker)."""
        return (self.version, self.counters.copy(),
                {w: c.copy() for w, c in self.worker_counters.items()}, self.reject_reasons.copy(),
                self.staleness_sum, self.staleness_count, self.clocks.copy(), dict(self.last_read),
                dict(self.bn_slots), dict(self.bn_versions))

    def _restore(self, ledger: tuple) -> None:
        (self.version, counters, workers, reasons, self.staleness_sum, self.staleness_count,
         clocks, last_read, bn_slots, bn_versions) = ledger
        self.counters, self.reject_reasons, self.clocks = counters.copy(), reasons.copy(), clocks.copy()
        self.worker_counters = {w: c.copy() for w, c in workers.items()}
        self.last_read, self.bn_slots, self.bn_versions = dict(last_read), dict(bn_slots), dict(bn_versions)

    def _decide(self, q: "_Queued", steps: list) -> PushResult:
        """One push's outcome, under the lock; a plain step is appended to `steps` (the version
        moves now: readers take the lock, so none sees it before the arrays follow)."""
        grad, version_read, worker, bn_stats, reason = (q.grad, q.version_read, q.worker,
                                                        q.bn_stats, q.reason)
        self.clocks[worker] += 1
        self.cond.notify_all()  # a waiting worker may be ready now, whatever happens below
        reason = reason or self._check_version(version_read)
        if reason:
            return self._record(worker, Decision(REJECTED, 0.0, reason), -1, -1, 0.0)
        version_read = int(version_read)
        staleness = self.version - version_read
        decision = self.policy.decide(staleness)
        if decision.outcome == AGGREGATED and worker in self.contributors:
            # BSP: a step is the mean of K - b *workers'* gradients. A second gradient of the
            # same worker on the same version (--fetch-every 2, or push_every > fetch_every)
            # is refused, not held for the next step: it was computed on this step's weights,
            # so in the next step it would be a gradient on old weights, which BSP drops as
            # late anyway; held, it would also let one worker fill a quorum slot it has not
            # earned. Counted, state unchanged.
            decision = Decision(REJECTED, 0.0, f"duplicate: worker {worker} already has a "
                                               f"gradient in the step on version "
                                               f"{self.version} (one per worker)")
        previous = self.last_read.get(worker, version_read)
        self.last_read[worker] = version_read
        if decision.outcome == REJECTED:
            return self._record(worker, decision, version_read, staleness, 0.0)
        if bn_stats is not None and bn_stats.size:
            self.bn_slots[worker] = bn_stats.copy()
            self.bn_versions[worker] = self.version
        g = torch.from_numpy(grad)
        lr = self.schedule(self.version) * decision.lr_scale
        if decision.outcome == AGGREGATED:
            self._agg.add_(g)
            self._agg_count += 1
            self.contributors.add(worker)
            result = self._record(worker, decision, version_read, staleness, lr)
            if self._agg_count >= self.policy.quorum(self):
                self._flush(steps)
                self._step_aggregate()
                result = dataclasses.replace(result, version=self.version)
            return result
        w_read = None
        if self.policy.keeps_reads:
            w_read = self._reads.get(version_read)
            if w_read is None:  # e.g. after a restart: nothing to compensate against
                decision = Decision(APPLIED, decision.lr_scale, "no w_read kept")
            else:
                w_read = torch.from_numpy(w_read)
                decision = Decision(COMPENSATED, decision.lr_scale)
            # A worker's pushes carry non-decreasing versions; keep one push of slack, for a
            # threaded server that runs two of its pushes out of order. (`w_read` holds its
            # snapshot, whatever is let go here.)
            self._forget_reads(worker, min(previous, version_read))
        if w_read is not None:
            self._flush(steps)
            self._apply(g, lr, w_read)
        else:
            self.version += 1
            steps.append((g, lr, self._polyak_weight()))
        return self._record(worker, decision, version_read, staleness, lr)

    def reject(self, worker: int, reason: str) -> PushResult:
        """Record a push refused before it was looked at (e.g. by a recovering server)."""
        with self.cond:
            self.clocks[worker] += 1
            self.cond.notify_all()
            return self._record(worker, Decision(REJECTED, 0.0, reason), -1, -1, 0.0)

    def _step_aggregate(self) -> None:
        """BSP: one optimizer step on the mean of the gradients summed for this version."""
        if self._agg_count:
            self._apply(self._agg / self._agg_count, self.schedule(self.version))
            self._agg.zero_()
            self._agg_count = 0
            self.contributors.clear()

    def _polyak_weight(self) -> float:
        """The Polyak lerp's weight for the update that made the current version."""
        return self.averager.weight(self.version) if self.averager else 0.0

    def _flush(self, steps: list) -> None:
        """Apply the plain steps decided so far (and forget them)."""
        self._steps(steps)
        steps.clear()

    def _apply(self, g: torch.Tensor, lr: float, w_read: torch.Tensor | None = None) -> None:
        """One optimizer step by `g`, now; with `w_read` (DC-ASGD), g is first compensated against
        the weights it was computed on."""
        self.version += 1
        weight = self._polyak_weight()
        n = self._w.shape[0]
        opt = self.optimizer
        if w_read is not None and self.policy.compiled_push(n, opt.momentum):
            # DC-ASGD's whole push in one compiled loop (core/dc_kernel.py): no blocks needed
            p = self.policy
            dc_kernel.push(self._w, self._buf, self._avg, self.policy.running_mean_square(n), g,
                           w_read, lr=lr, weight=weight, lam=p.lam, decay=p.mean_square_decay,
                           eps=p.eps, weight_decay=opt.weight_decay, momentum=opt.momentum,
                           nesterov=opt.nesterov)
            return
        self._steps([(g, lr, weight)], w_read)

    def _steps(self, steps: list, w_read: torch.Tensor | None = None) -> list[int]:
        """Apply `steps` [(g, lr, Polyak weight)] in order. A shard that checks in the update's
        pass (`fuses`) runs fused_push.py's loop into its second copy of the state and keeps it
        only if every gradient was finite; else it returns the indices of the steps that were
        not, the state unchanged. A shard that runs the compiled push hands the whole group to
        push_kernel.py: one loop does the SGD step and the Polyak lerp of every push, over blocks
        of its own. Otherwise block by block: in each block every step runs the compensation
        (DC-ASGD: one step, with `w_read`), the SGD kernel and the Polyak lerp, each finding the
        block's arrays in cache where the one before left them; a compensated push takes the
        policy's blocks (it keeps twice as many arrays in cache). Returns [] once applied."""
        if not steps:
            return []
        if w_read is None and self.fuses():
            return self._fused_steps(steps)
        if len(steps) > 1:
            self.batched += len(steps)
        n, opt = self._w.shape[0], self.optimizer
        if w_read is None and opt.compiled_push(n, self._avg is not None):
            # the whole group in one loop over the arrays (push_kernel.py: its own blocks)
            push_kernel.push(self._w, self._buf, self._avg, [g for g, _, _ in steps],
                             push_kernel.numbers(steps, opt.weight_decay, opt.momentum),
                             nesterov=opt.nesterov)
            return []
        mean_square = self.policy.running_mean_square(n) if w_read is not None else None
        block = min(self.block, self.policy.block) if w_read is not None else self.block
        out, tmp = self._scratch()
        for start in range(0, n, block):
            end = min(start + block, n)
            w, buf = self._w[start:end], self._buf[start:end]
            avg = self._avg[start:end] if self._avg is not None else None
            for g, lr, weight in steps:
                gb = g[start:end]
                if w_read is not None:
                    gb = self.policy.compensate(gb, w, w_read[start:end], out[:end - start],
                                                tmp[:end - start],
                                                None if mean_square is None else mean_square[start:end])
                opt.step(w, buf, gb, lr, scratch=tmp)
                if avg is not None:
                    avg.lerp_(w, weight)
        return []

    def _fused_steps(self, steps: list) -> list[int]:
        """`steps` in one pass of fused_push.py's loop, from the state into the spare copy, which
        becomes the state if every gradient's sum was finite. Else the indices of the steps whose
        gradient was not (an overflowing sum of finite values is told apart, as in
        `gradient_finite`), and the state is untouched."""
        n, opt, averaged = self.params.shape[0], self.optimizer, self.average is not None
        if self._spare is None:  # made at the first push: a shard that never fuses never pays
            self._spare = ({k: fused_push.aligned_empty(a.shape[0]) for k, a in self._stores.items()},
                           fused_push.aligned_empty(n))
        stores, momentum = self._spare
        new = [torch.from_numpy(stores[False][:n]), torch.from_numpy(momentum),
               torch.from_numpy(stores[True][:n] if averaged else momentum)]
        gs = [g for g, _, _ in steps]
        sums = fused_push.push([self._w, self._buf, self._avg if averaged else self._buf], new, gs,
                               push_kernel.numbers(steps, opt.weight_decay, opt.momentum),
                               opt.nesterov, averaged)
        bad = [i for i, s in enumerate(sums) if not math.isfinite(s) and not extremes_finite(gs[i])]
        if bad:
            return bad
        self._spare = (self._stores, self.momentum)
        self._stores, self.momentum = stores, momentum
        self.params = stores[False][:n]
        self.average = stores[True][:n] if averaged else None
        self._w, self._buf, self._avg = new[0], new[1], new[2] if averaged else None
        if len(steps) > 1:
            self.batched += len(steps)
        return []

    def _scratch(self) -> torch.Tensor:  # (2, block)
        """Two blocks of scratch (the compensated gradient; the kernel's temporary), made once."""
        if self._blocks is None:
            self._blocks = torch.empty(2, min(self.block, max(1, self._w.shape[0])))
        return self._blocks

    def _record(self, worker: int, decision: Decision, version_read: int, staleness: int,
                lr: float) -> PushResult:
        self.counters[decision.outcome] += 1
        self.worker_counters.setdefault(worker, Counter())[decision.outcome] += 1
        if decision.outcome == REJECTED:
            self.reject_reasons[decision.reason.split(" ")[0].rstrip(":") if decision.reason else "policy"] += 1
        if staleness >= 0:
            self.staleness_sum += staleness
            self.staleness_count += 1
        return PushResult(self.index, worker, decision.outcome, version_read, staleness, self.version,
                          lr, decision.reason)

    # ---- accounting and checkpoints -------------------------------------------------------------
    def stats(self) -> dict:
        pushes = sum(self.counters.values())
        return {"shard": self.index, "version": self.version, "pushes": pushes,
                "counters": dict(self.counters),
                "worker_counters": {w: dict(c) for w, c in self.worker_counters.items()},
                "reject_reasons": dict(self.reject_reasons), "waits": self.waits,
                "batched": self.batched,
                "mean_staleness": self.staleness_sum / max(1, self.staleness_count)}

    def state_dict(self) -> dict:
        """Everything needed to resume this shard: arrays are copies, safe to write out."""
        with self.lock:
            return {"index": self.index, "version": self.version, "params": self.params.copy(),
                    "momentum": self.momentum.copy(),
                    "average": None if self.average is None else self.average.copy(),
                    "buffers": self.buffers.copy(),
                    "bn_slots": {w: a.copy() for w, a in self.bn_slots.items()},
                    "bn_versions": dict(self.bn_versions),
                    "counters": dict(self.counters),
                    "worker_counters": {w: dict(c) for w, c in self.worker_counters.items()},
                    "staleness_sum": self.staleness_sum, "staleness_count": self.staleness_count,
                    "clocks": dict(self.clocks), "retired": sorted(self.retired),
                    "last_read": dict(self.last_read),
                    "aggregate": None if self._agg is None else self._agg.numpy().copy(),
                    "aggregate_count": self._agg_count, "contributors": sorted(self.contributors),
                    # DC-ASGD: the weights a gradient still in flight was computed on
                    "reads": {v: a.copy() for v, a in self._reads.items()},
                    "readers": {w: list(v) for w, v in self._readers.items()},
                    "policy": self.policy.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        if sd["index"] != self.index or sd["params"].shape != self.params.shape:
            raise ValueError(f"checkpoint of shard {sd['index']} with {sd['params'].shape[0]} "
                             f"parameters does not fit shard {self.index} with {self.params.shape[0]}")
        with self.lock:
            # Copy into the existing arrays: the torch views the kernels use must stay valid.
            self.params[:] = sd["params"]
            self.momentum[:] = sd["momentum"]
            if self.average is not None and sd["average"] is not None:
                self.average[:] = sd["average"]
            self.buffers[:] = sd["buffers"]
            self.bn_slots = {int(w): np.asarray(a, np.float32).copy() for w, a in sd["bn_slots"].items()}
            self.bn_versions = {int(w): int(v) for w, v in sd.get("bn_versions", {}).items()}
            self.version = int(sd["version"])
            self.counters = Counter(sd["counters"])
            self.worker_counters = {int(w): Counter(c) for w, c in sd["worker_counters"].items()}
            self.staleness_sum = int(sd["staleness_sum"])
            self.staleness_count = int(sd["staleness_count"])
            self.clocks = Counter({int(w): int(c) for w, c in sd.get("clocks", {}).items()})
            self.retired = {int(w) for w in sd.get("retired", [])}
            self.last_read = {int(w): int(v) for w, v in sd.get("last_read", {}).items()}
            if self._agg is not None and sd.get("aggregate") is not None:
                self._agg.copy_(torch.from_numpy(np.asarray(sd["aggregate"], np.float32)))
                self._agg_count = int(sd.get("aggregate_count", 0))
                self.contributors = {int(w) for w in sd.get("contributors", [])}
            self._reads = {int(v): np.asarray(a, np.float32).copy()
                           for v, a in (sd.get("reads") or {}).items()}
            self._readers = {int(w): [int(v) for v in vs]
                             for w, vs in (sd.get("readers") or {}).items()}
            self.policy.load_state_dict(sd.get("policy", {}))
            self.cond.notify_all()
