"""Staleness policies: what a shard does with a push computed on old weights, and when a worker
may read.

A policy is data, not a branch in the shard. It answers two questions and the shard acts on the
answers, so each policy is written once and runs unchanged on Ray, in-process and in the simulator:

- `decide(staleness) -> Decision`: the outcome to record for a push and the factor on the learning
  rate. Every push ends in exactly one recorded outcome.
- `ready(shard, worker, clock) -> bool`: may `worker`, which has pushed `clock` times, read the
  weights now? Asynchronous policies always say yes; the coordinating ones (SSP, BSP) make a fast
  worker wait at its next pull. The shard keeps the facts they need: pushes received per worker
  (`shard.clocks`), workers that finished (`shard.retired`), the version each worker's last push
  was computed on (`shard.last_read`).

The policies, with their papers:

- `Async`: Downpour SGD applies every push as it arrives (Dean et al. 2012).
- `StalenessAwareLR`: divide the learning rate by the staleness, lr / max(1, tau)
  (Zhang, Gupta, Lian & Liu 2016, "Staleness-aware async-SGD").
- `BoundedStaleness`: stale synchronous parallel (Ho et al. 2013). A worker more than `bound`
  clocks (pushes) ahead of the slowest unfinished worker waits; bound = 0 is lock-step.
- `Synchronous`: BSP with backup workers (Chen, Pan, Monga, Bengio & Jozefowicz 2016). The shard
  sums one gradient per worker for the current version and steps on their mean once K - b have
  arrived; the b late ones are rejected as "late", and a worker's second gradient for the same
  step as "duplicate" (counted, never silently lost). A version is K - b gradients, so epochs
  count K - b times fewer versions than under the asynchronous policies.
- `DropStale`: reject pushes older than a bound (counted as 'rejected').
- `DelayCompensated`: DC-ASGD (Zheng et al. 2017). The gradient computed on w_read is corrected
  towards w_now with the diagonal Hessian approximation lambda * g * g:
  g + lambda * g * g * (w_now - w_read). The adaptive variant (DC-ASGD-a) divides lambda by the
  root of a running mean square of g. The shard keeps the weights each worker read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import dc_kernel

APPLIED, SCALED, COMPENSATED, AGGREGATED, REJECTED = (
    "applied", "scaled", "compensated", "aggregated", "rejected")
OUTCOMES = (APPLIED, SCALED, COMPENSATED, AGGREGATED, REJECTED)


@dataclass(frozen=True)
class Decision:
    outcome: str
    lr_scale: float = 1.0
    reason: str = ""


class Policy:
    """Defaults shared by the policies: apply everything, never make anyone wait."""

    name = "policy"
    keeps_reads = False  # does the shard need to remember the weights each worker read?
    aggregates = False  # does the shard sum gradients into one step (BSP)?
    coordinates = False  # does `ready` ever say no (so readers must get the freshest weights)?

    def decide(self, staleness: int) -> Decision:
        return Decision(APPLIED)

    def ready(self, shard, worker: int, clock: int) -> bool:
        return True

    def gradients_per_update(self) -> int:
        """Pushed gradients that make one update (one version): what converts epochs of data
        into versions for the lr schedule, warm-up and Polyak start."""
        return 1

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass


class Async(Policy):
    name = "async"


@dataclass
class StalenessAwareLR(Policy):
    name = "staleness_lr"

    def decide(self, staleness: int) -> Decision:
        if staleness <= 1:
            return Decision(APPLIED)
        return Decision(SCALED, 1.0 / staleness)


@dataclass
class DropStale(Policy):
    max_staleness: int = 4
    name = "drop_stale"

    def decide(self, staleness: int) -> Decision:
        if staleness > self.max_staleness:
            return Decision(REJECTED, 0.0, f"stale: staleness {staleness} > bound {self.max_staleness}")
        return Decision(APPLIED)


def _active(shard, workers: int) -> list[int]:
    return [w for w in range(workers) if w not in shard.retired]


@dataclass
class BoundedStaleness(Policy):
    """SSP: at its pull after `clock` pushes, a worker waits until every unfinished worker has
    pushed at least clock - bound times (Ho et al. 2013, "More effective distributed ML via a
    stale synchronous parallel parameter server")."""

    workers: int = 1
    bound: int = 2
    name = "bounded"
    coordinates = True

    def ready(self, shard, worker: int, clock: int) -> bool:
        slowest = min((shard.clocks[w] for w in _active(shard, self.workers)), default=clock)
        return slowest >= clock - self.bound


@dataclass
class Synchronous(Policy):
    """BSP with b backup workers: step on the mean of the first K - b gradients computed on the
    current version; drop the rest as late (Chen et al. 2016, "Revisiting distributed synchronous
    SGD"). A worker may read again once the version its last gradient was computed on is past."""

    workers: int = 1
    backup: int = 0
    name = "sync"
    aggregates = True
    coordinates = True

    def decide(self, staleness: int) -> Decision:
        if staleness > 0:
            return Decision(REJECTED, 0.0, f"late: computed {staleness} step(s) ago; the step was "
                                           f"taken without it (backup worker)")
        return Decision(AGGREGATED)

    def gradients_per_update(self) -> int:
        return self.workers - self.backup  # the step's mean; the b late ones train nothing

    def quorum(self, shard) -> int:
        """Gradients needed for a step: K - b, or fewer once workers have finished (a finished
        worker whose last gradient is already in this step's sum still counts)."""
        able = [w for w in range(self.workers) if w not in shard.retired or w in shard.contributors]
        return max(1, min(self.workers - self.backup, len(able)))

    def ready(self, shard, worker: int, clock: int) -> bool:
        return worker not in shard.last_read or shard.version > shard.last_read[worker]


@dataclass
class DelayCompensated(Policy):
    """DC-ASGD: g + lambda * g * g * (w_now - w_read) (Zheng et al. 2017, "Asynchronous stochastic
    gradient descent with delay compensation"). With `adaptive`, lambda_t = lambda / sqrt(ms_t),
    ms_t = m * ms_{t-1} + (1 - m) * g * g elementwise (their DC-ASGD-a; they used lambda = 2,
    m = 0.95 on CIFAR-10, and lambda = 0.04 for the constant variant)."""

    lam: float = 2.0
    adaptive: bool = True
    mean_square_decay: float = 0.95
    eps: float = 1e-7
    name = "dc_asgd"
    keeps_reads = True
    # "compiled": the whole push as one torch.compile'd loop (dc_kernel.py); "eager": the torch
    # operations below, block by block; "auto": compiled for shards of dc_kernel.MIN_SIZE
    # parameters or more where it builds here, else eager.
    kernel: str = "auto"
    # Elements per block of a compensated push (the shard's own `block`, 1M, if that is smaller).
    # The block's six arrays and two scratch blocks (1 MiB each here) stay in L3 between the
    # eight passes of `compensate` and the SGD kernel's and Polyak lerp's; 1M blocks fill the
    # 32 MiB L3, and the push took 3-17% longer (benchmarks/bench_shard_update.py).
    block = 1 << 18
    mean_square: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.kernel not in dc_kernel.KERNELS:
            raise ValueError(f"--dc-kernel {self.kernel}: choose one of {', '.join(dc_kernel.KERNELS)}")
        if self.kernel == "compiled" and dc_kernel.compiled() is None:
            raise ValueError("--dc-kernel compiled: torch.compile cannot build the kernel here "
                             "(it needs a C++ compiler); use auto or eager")

    def compiled_push(self, n: int, momentum: float) -> bool:
        """Does a compensated push of a shard of `n` parameters take the compiled kernel?
        (Not without momentum: the eager SGD kernel leaves its buffer alone then.)"""
        if self.kernel == "eager" or not momentum or (self.kernel == "auto" and n < dc_kernel.MIN_SIZE):
            return False
        return dc_kernel.compiled() is not None

    def running_mean_square(self, n: int) -> torch.Tensor | None:
        """The running mean square of g, (n,), made at the first push (adaptive), else None."""
        if self.adaptive and self.mean_square is None:
            self.mean_square = torch.zeros(n)
        return self.mean_square

    def compensate(self, g: torch.Tensor, w_now: torch.Tensor, w_read: torch.Tensor,
                   out: torch.Tensor, tmp: torch.Tensor,
                   mean_square: torch.Tensor | None = None) -> torch.Tensor:
        """`out` = g + lambda * g * g * (w_now - w_read) for one block of the shard (lambda /
        (sqrt(ms) + eps) with `adaptive`), and the block's `mean_square` (its view of
        `running_mean_square`) moved on first, in place: ms = m * ms + (1 - m) * g * g.

        The shard calls this block by block (`block` elements), just before the block's update,
        so g and w are read from cache by the SGD kernel after it, and nothing the size of the
        shard is allocated (the formula written as tensor expressions allocates five such
        temporaries). `out` and `tmp` are scratch of g's size.

        Each operation is a pass over the block, so the formula is written in as few of them as
        torch's elementwise operators allow: eight in all with `adaptive` (eleven before;
        benchmarks/bench_shard_update.py), the division and the final sum in one `addcdiv`. The
        numbers are bit for bit those of the formula in this order as whole-tensor expressions,
        g + lambda * ((w_now - w_read) * g * g / (sqrt(ms) + eps)), and within float32 rounding
        of the order written above (tests/test_bench_update_scaling.py checks both)."""
        torch.sub(w_now, w_read, out=tmp).mul_(g).mul_(g)  # g * g * (w_now - w_read)
        if not self.adaptive:
            return torch.add(g, tmp, alpha=self.lam, out=out)
        m = self.mean_square_decay
        mean_square.mul_(m).addcmul_(g, g, value=1 - m)
        torch.sqrt(mean_square, out=out).add_(self.eps)
        return torch.addcdiv(g, tmp, out, value=self.lam, out=out)

    def state_dict(self) -> dict:
        return {"mean_square": None if self.mean_square is None else self.mean_square.numpy().copy()}

    def load_state_dict(self, sd: dict) -> None:
        ms = sd.get("mean_square")
        self.mean_square = None if ms is None else torch.from_numpy(ms.copy())


POLICIES = {"async": Async, "staleness_lr": StalenessAwareLR, "bounded": BoundedStaleness,
            "sync": Synchronous, "drop_stale": DropStale, "dc_asgd": DelayCompensated}


def make_policy(name: str, **options) -> Policy:
    """A fresh policy object (one per shard: DC-ASGD keeps per-shard state)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}")
    return POLICIES[name](**options)
