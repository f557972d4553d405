"""Server capacity (issue 15, item 1): updates per second the sharded parameter server sustains for
K zero-compute workers, against the object store's own rate for the same bytes (a) and against the
Ray documentation's parameter server (b). Targets: at least 5x (b) at K=4, at least 75% of (a)
at K=4 and 16; at K=1, where one worker waits for the answer to each push and nothing overlaps
the update, the ceiling it prints from the run's own numbers (`ceiling`; docs/benchmarks.md,
session 19, says why 75% is not the target there).

ps-trainer: S `ParameterServerShard` actors (the model cut by `ParamLayout.shards`; Nesterov
momentum 0.9, weight decay 5e-4, Polyak average 0.99: a run's defaults) and K `ZeroWorker`
actors, each looping as a `Worker` does minus the compute: land each shard's snapshot in its flat
model as a CPU `Worker._land` does (in place, `FlatModel.alias`: the parameters become views of
the snapshot; the tensors a shard boundary cuts and the BatchNorm statistics are copied), push one gradient (a fixed array of small values) with its
BatchNorm statistics to every shard, each push answered with the shard's weights after it
(`RayClient.exchange`, the Worker's default; the first weights come from one `RayClient.pull`),
and fetch those. An *update* is one worker's push to every shard; it moves one gradient in and
one weight copy out.
Every actor asks for num_cpus=0, so nothing waits for a CPU slot; they share the cores. A shard
(and a (c) sink) runs on `shard_threads(S)` torch threads: 2 (`SHARD_THREADS`, what `ps-train`
gives a GPU run's shards on CPU nodes; these workers stand in for GPU workers) as long as the S
shards' threads together fit in the machine's cores, else 1 (as `ps-train` plans them: never more
threads than cores). The store's own puts, on every path, copy on several threads too (Ray's
parallel memcpy: a 102 MB `ray.put` took 12.3 ms here, a one-thread copy 18.7).

(a) Raw object store, the same bytes with no update math: the same K workers and loop, against S
`Sink` actors that do nothing. Per shard and update: the worker passes its gradient slice as an
argument (Ray puts it into the store: one copy; the sink ignores it), and the sink answers with
its weight slice `ray.put` (one copy, as a shard puts its snapshot) by reference; the worker
`ray.get`s it (zero-copy) and lands it in the same way. Same calls,
same puts and gets, same landing; what ps-trainer adds is the shard's work (validation, Nesterov,
Polyak, the snapshot's concatenation under the lock). Every pull puts a fresh copy here, where a
shard puts one per new version: with several workers (a) puts at least as often.

(c) The store plus the update, done the plainest way: (a)'s sinks, each of which also applies every
push it gets to arrays of its own, as a server must, and answers with the weights after it: under
one lock, torch's fused SGD (Nesterov momentum 0.9, weight decay 5e-4) and the Polyak lerp over
the whole shard, then the `ray.put`; no check, no versions, no group commit, on the shards'
threads. (c) / (a) is what the arithmetic of this update leaves of the store's rate at each K, for
any server that applies it; ps-trainer / (c) is what ps-trainer's server adds or saves beyond it.

(b) The Ray docs' parameter server, asynchronous (`ray_docs_ps.py`, a faithful copy of
https://docs.ray.io/en/latest/ray-core/examples/plot_parameter_server.html): one ParameterServer
actor holding ResNet-50 with torch SGD, K DataWorkers with zero compute (fixed gradients, no
forward/backward), the docs' `ray.wait` driver loop. Run in the ResNet-50, S=1 group, at K = 1
and 4 by default (each DataWorker holds a whole ResNet-50 and its gradients).

Models: the layouts of ps_trainer.models' resnet50 (25,557,032 parameters + 53,120 BatchNorm
statistics) and inception_v3 (27,161,264 + 36,224), built on the meta device (no memory, no init).

Measurement: all workers start together and loop for --seconds (and at least --min-updates each).
The rate is taken over the span in which every worker is past its first update and not yet at its
last, each worker's progress interpolated between its completions (so it does not round to whole
updates); the first update (page faults, connections) is never counted. Every (model, S) group
keeps its actors and runs its cells in an order that rotates from round to round; medians over
rounds, and for ps-trainer / (a) the median of the per-round ratios. Before its rounds, every
process of a group maps the object store once (`touch_store`: a long run's steady state; on the
first pass over the store every 4 KB page written faults, and a 100 MB put takes 5x longer), and
the group runs one uncounted update per worker on each path (the shards fault their state in). Every cell
checks that each shard counted exactly as many pushes as the workers made updates, and reads the
CPU time (user + system) the workers, the servers, the raylet and the driver spent per update.
The object store is sized for 3K + 4 model copies at once (each worker's gradient, the snapshot
its model reads and the one arriving, and the servers'), 1.5 times that, at most 40% of the memory available.

With --pipelined, every worker (on the ps-trainer, (a) and (c) paths alike) sends each push before it
fetches the reply to the one before, so its gradient's put overlaps the server's work; the
weights it lands are then one version older at K=1, as with a GPU worker's prefetch. (The table
of one worker's update in wall time then reads differently: its push is the sending alone, its
pull the wait for the reply to the push before.)

    python benchmarks/bench_server_capacity.py [--seconds 3] [--rounds 3] [--workers 1 4 16]
        [--shards 1 2 4] [--docs-workers 1 4] [--in-place] [--pipelined] [--smoke] [--no-write]

The shards check and update in one pass (core/fused_push.py) where they can, as a run's do;
`--in-place` makes them check each gradient first and update in place, the path before.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

from ps_trainer.core import LRSchedule, NesterovMomentum, PolyakAverage  # noqa: E402
from ps_trainer.core.layout import ParamLayout  # noqa: E402
from ps_trainer.core.policy import Async  # noqa: E402
from ps_trainer.trainer.cluster import SHARD_THREADS  # noqa: E402

SECTION = "Server capacity (issue 15)"
OURS, STORE, DOCS, BARE = "ps-trainer", "(a) object store", "(b) Ray docs PS", "(c) store + update"
GRAD = 1e-4  # every gradient element: small, so the weights stay finite however long it runs


def layout_of(model: str, smoke: bool) -> ParamLayout:
    """The model's flat layout (meta device: shapes only); in --smoke a hundredth of its size."""
    from ps_trainer.models import build

    with torch.device("meta"):
        layout = ParamLayout.from_model(build(model))
    if smoke:
        return ParamLayout((), (), layout.num_params // 100, layout.num_buffers // 100)
    return layout


def touch_store(store: int, chunk: int = 64 << 20) -> float:
    """Map the object store into this process, as a long run has: put and drop 64 MiB chunks, one
    at a time, for the store's size in all (holding none: nothing is spilled). Returns seconds.

    Why: the store's allocator moves on through its memory with every object (the object freed
    last is not reused at once), so a process's first pass over the store page-faults every
    4 KB page it writes: a 100 MB `ray.put` takes ~45 ms then, ~9 ms once those pages are
    mapped. A run gets there within its first minute; a 3 s cell would not. (After this, about
    one put in ten still faults: the allocator reaches memory the walk did not.)"""
    import ray

    t0 = time.perf_counter()
    block = np.ones(chunk // 4, np.float32)
    for _ in range(store // chunk):
        ref = ray.put(block)
        del ref
    return time.perf_counter() - t0


class ZeroWorker:
    """A worker without compute, as a Ray actor: the pull, land and push of `Worker`, in a loop."""

    def __init__(self, index: int):
        torch.set_num_threads(1)  # as a CPU worker
        self.index = index

    def prepare(self, grad: np.ndarray, model: str, layout: ParamLayout) -> None:
        """`grad`: the fixed gradient, one read-only array in the object store that every worker
        shares (private ones would cost 1.6 GB at K=16 and change nothing: a push copies it).
        The flat model: `model`'s tensors, uninitialized (never computed on); in --smoke, whose
        layout names no tensors, only the flat buffers."""
        from ps_trainer.core.layout import FlatModel
        from ps_trainer.models import build

        self.grad = grad
        self.bn = np.ones(layout.num_buffers, np.float32)  # the BatchNorm statistics pushed along
        self.flat = None
        if layout.params:
            with torch.device("meta"):
                m = build(model)
            self.flat = FlatModel(m.to_empty(device="cpu"), layout)
        self.buffers = self.flat.buffers if self.flat else torch.zeros(layout.num_buffers)
        self.held = None  # --smoke: the snapshots the model would read

    def land(self, specs: list, snapshots: list) -> None:
        """`Worker._land` on a CPU: the parameters become views of the snapshots (the pieces of
        tensors a shard boundary cuts are copied), the BatchNorm statistics are copied."""
        for spec, (arr, _) in zip(specs, snapshots):
            (p0, p1), (b0, b1) = spec.params, spec.buffers
            src = torch.from_numpy(arr)  # read-only, zero-copy from the object store
            if self.flat is not None:
                self.flat.alias(p0, p1, src[:p1 - p0])
            self.buffers[b0:b1].copy_(src[p1 - p0:])
        self.held = snapshots

    def run_ps(self, shards: list, specs: list, stop_at: float, min_updates: int) -> dict:
        """Against ps-trainer's shards: pull, land, push to every shard, wait for the results."""
        from ps_trainer.transport.ray_shard import RayClient

        client = RayClient(shards)
        times, phases, outcomes = [], [], set()
        snapshots = client.pull(worker=self.index)
        while time.time() < stop_at or len(times) < min_updates:
            t1 = time.perf_counter()
            self.land(specs, snapshots)
            t2 = time.perf_counter()
            results, replies = client.exchange(
                [(s.index, self.grad[s.params[0]:s.params[1]], version, self.index,
                  self.bn[s.buffers[0]:s.buffers[1]]) for s, (_, version) in zip(specs, snapshots)],
                len(times) + 1)
            outcomes.update(r.outcome for r in results)
            t3 = time.perf_counter()
            del snapshots  # the snapshots go back to the store before the next pull
            snapshots = client.complete(replies, worker=self.index, clock=len(times) + 1)
            times.append(time.time())
            # pull: fetching the weights the push was answered with; push: the push's round trip
            phases.append((time.perf_counter() - t3, t2 - t1, t3 - t2))
        return {"times": times, "phases": phases, "outcomes": sorted(outcomes)}

    def run_ps_pipelined(self, shards: list, specs: list, stop_at: float, min_updates: int) -> dict:
        """run_ps with one more exchange in flight: push t is sent before push t-1's reply is
        fetched and landed, so the gradient's put overlaps the shard's work (staleness 1 at K=1)."""
        import ray
        from ps_trainer.transport.ray_shard import Push, RayClient

        client = RayClient(shards)
        times, phases, outcomes = [], [], set()
        snapshots = client.pull(worker=self.index)
        pending, clock = None, 0  # clock: the pushes sent, as a Worker counts them
        while time.time() < stop_at or len(times) < min_updates:
            t1 = time.perf_counter()
            self.land(specs, snapshots)
            t2 = time.perf_counter()
            clock += 1
            refs = [shards[s.index].exchange.remote(Push(self.grad[s.params[0]:s.params[1]], version,
                                                         self.index, self.bn[s.buffers[0]:s.buffers[1]],
                                                         s.index, clock))
                    for s, (_, version) in zip(specs, snapshots)]
            t3 = time.perf_counter()
            if pending is not None:
                replies = ray.get(pending)
                outcomes.update(r.outcome for r, _ in replies)
                del snapshots
                snapshots = client.complete([m for _, m in replies], worker=self.index, clock=clock - 1)
                times.append(time.time())
                phases.append((time.perf_counter() - t3, t2 - t1, t3 - t2))
            pending = refs
        replies = ray.get(pending)
        outcomes.update(r.outcome for r, _ in replies)
        times.append(time.time())
        return {"times": times, "phases": phases, "outcomes": sorted(outcomes)}

    def run_store_pipelined(self, sinks: list, specs: list, stop_at: float, min_updates: int) -> dict:
        """run_store with one more exchange in flight, as run_ps_pipelined."""
        import ray

        times, phases = [], []
        snapshots = [(a, 0) for a in ray.get([r[0] for r in ray.get([s.pull.remote() for s in sinks])])]
        pending = None
        while time.time() < stop_at or len(times) < min_updates:
            t1 = time.perf_counter()
            self.land(specs, snapshots)
            t2 = time.perf_counter()
            refs = [k.exchange.remote(self.grad[s.params[0]:s.params[1]], self.bn[s.buffers[0]:s.buffers[1]])
                    for k, s in zip(sinks, specs)]
            t3 = time.perf_counter()
            if pending is not None:
                got = ray.get(pending)
                del snapshots
                snapshots = [(a, 0) for a in ray.get([r[0] for r in got])]
                times.append(time.time())
                phases.append((time.perf_counter() - t3, t2 - t1, t3 - t2))
            pending = refs
        ray.get(pending)
        times.append(time.time())
        return {"times": times, "phases": phases, "outcomes": ["none"]}

    def run_store(self, sinks: list, specs: list, stop_at: float, min_updates: int) -> dict:
        """(a): the same calls and bytes against do-nothing sinks."""
        import ray

        times, phases = [], []
        refs = ray.get([s.pull.remote() for s in sinks])
        while time.time() < stop_at or len(times) < min_updates:
            t0 = time.perf_counter()
            snapshots = [(a, 0) for a in ray.get([r[0] for r in refs])]  # zero-copy
            t1 = time.perf_counter()
            self.land(specs, snapshots)
            t2 = time.perf_counter()
            del snapshots, refs
            refs = ray.get([k.exchange.remote(self.grad[s.params[0]:s.params[1]],
                                              self.bn[s.buffers[0]:s.buffers[1]])
                            for k, s in zip(sinks, specs)])
            times.append(time.time())
            phases.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
        return {"times": times, "phases": phases, "outcomes": ["none"]}


class Sink:
    """(a)'s do-nothing shard: holds `[weights | BatchNorm statistics]` of one shard's size."""

    def __init__(self, size: int):
        self.weights = np.ones(size, np.float32)

    def pull(self) -> list:
        import ray

        return [ray.put(self.weights)]  # one copy into the store, as a shard's snapshot

    def exchange(self, grad: np.ndarray, bn: np.ndarray) -> list:
        """A push (ignored), answered with the weights, as a shard's `exchange`."""
        return self.pull()


class UpdateSink(Sink):
    """(c)'s shard: a `Sink` that applies each push before it answers, the plainest way (two
    passes of torch's kernels over the whole shard, one push at a time), as any server must."""

    def __init__(self, size: int, params: int, threads: int):
        import threading

        torch.set_num_threads(threads)
        super().__init__(size)
        self.params = params
        self.w = torch.from_numpy(self.weights)[:params]  # the weights `pull` puts, updated here
        self.buf, self.avg = torch.zeros(params), self.w.clone()
        self.rule = NesterovMomentum(0.9, 5e-4, kernel="fused")
        self.lock = threading.Lock()

    def exchange(self, grad: np.ndarray, bn: np.ndarray) -> list:
        with self.lock:
            self.rule.step(self.w, self.buf, torch.from_numpy(grad), 0.05)
            self.avg.lerp_(self.w, 0.01)
            self.weights[self.params:] = bn
            return self.pull()


def one_pass_ms(n: int, threads: int, repeats: int = 7) -> float:
    """Wall ms of the one-pass push (core/fused_push.py) of one gradient over `n` parameters on
    `threads` torch threads, alone on the machine: the least of `repeats` (host load only adds).
    NaN where the kernel cannot run (no C compiler with AVX2)."""
    from ps_trainer.core import fused_push, push_kernel as pk

    if fused_push.library() is None:
        return float("nan")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the kernel runs on torch's count

    def array(value: float) -> torch.Tensor:
        return torch.from_numpy(fused_push.aligned_empty(n)).fill_(value)

    g, src, dst = array(GRAD), [array(0.01), array(0.0), array(0.01)], [array(0.0) for _ in range(3)]
    hs = pk.numbers([(None, 0.05, 0.01)], 5e-4, 0.9)
    times = []
    for _ in range(repeats + 1):  # the first call faults the pages in: not counted
        t = time.perf_counter()
        fused_push.push(src, dst, [g], hs, True, True)
        times.append(time.perf_counter() - t)
    torch.set_num_threads(before)
    return 1e3 * min(times[1:])


def span_rate(times: list[list[float]]) -> float:
    """Updates/s of all workers together over the span where each one is past its first update
    and not yet at its last: each worker's progress interpolated between its completions."""
    t0, t1 = max(t[0] for t in times), min(t[-1] for t in times)
    if t1 <= t0:
        return float("nan")
    progress = [np.interp([t0, t1], t, np.arange(len(t))) for t in times]
    return float(sum(b - a for a, b in progress) / (t1 - t0))


def pid_of(actor) -> int:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def raylet_pid() -> int | None:
    """This Ray's raylet (it holds the object store), not another Ray's on the same machine."""
    import ray

    procs = ray._private.worker._global_node.all_processes.get("raylet") or []
    return procs[0].process.pid if procs else None


def cpu_seconds(pids: list) -> float:
    """CPU seconds (user + system, all threads) the processes have used so far."""
    import psutil

    total = 0.0
    for pid in pids:
        if pid is not None:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def shard_threads(a, S: int) -> int:
    """Torch threads in each of S shards: --shard-threads, else SHARD_THREADS where the S shards'
    threads fit in the cores together, else one (ps-train never plans more threads than cores)."""
    if a.shard_threads:
        return a.shard_threads
    return SHARD_THREADS if S * SHARD_THREADS <= (os.cpu_count() or 1) else 1


def shard_options(threads: int = 1, one_pass: bool = True) -> dict:
    return dict(optimizer=NesterovMomentum(0.9, 5e-4), schedule=LRSchedule(0.05), policy=Async(),
                averager=PolyakAverage(0.99), threads=threads, one_pass=one_pass)


def store_size(max_workers: int, model_bytes: int) -> tuple[int, int, int]:
    """(object-store bytes to ask for, bytes the run may hold at once, bytes available). At
    once: each worker's gradient in flight, the snapshot its model reads (landed in place) and
    the one arriving, the snapshots the shards hold, the docs' weights and gradients; asked: 1.5 times that, at most 40% of the
    memory available now (the rest is the actors' own: flat buffers, shard state)."""
    from ps_trainer.trainer.cluster import available_memory

    need = (3 * max_workers + 4) * model_bytes
    avail = available_memory() or 8 << 30
    return int(min(max(1.5 * need, 1 << 30), 0.4 * avail)), need, avail


def run_cell(path: str, servers: list, specs: list, workers: list, a, rates: list,
             phases: list, batched: list) -> tuple[int, list[int]]:
    """One cell of ps-trainer (servers: shards) or (a) (servers: sinks): every worker loops until
    the same moment. Returns (updates, pushes each shard counted: ps-trainer only); appends to
    `batched` the pushes the shards applied together with others (group commit)."""
    import ray

    shards = servers if path == OURS else []
    before = ray.get([s.stats.remote() for s in shards])
    stop_at = time.time() + a.seconds
    run = ("run_ps" if path == OURS else "run_store") + ("_pipelined" if getattr(a, "pipelined", False) else "")
    outs = ray.get([getattr(w, run).remote(servers, specs, stop_at, a.min_updates) for w in workers])
    after = ray.get([s.stats.remote() for s in shards])
    counted = [y["pushes"] - x["pushes"] for x, y in zip(before, after)]
    batched.append(sum(y["batched"] - x["batched"] for x, y in zip(before, after)))
    updates = sum(len(o["times"]) for o in outs)
    outcomes = sorted({x for o in outs for x in o["outcomes"]})
    if shards and (counted != [updates] * len(shards) or outcomes != ["applied"]):
        raise RuntimeError(f"{path}, S={len(shards)}, K={len(workers)}: the workers made {updates} "
                           f"updates, the shards counted {counted} pushes, outcomes {outcomes}")
    rates.append(span_rate([o["times"] for o in outs]))
    phases += [p for o in outs for p in o["phases"][1:]]  # the first update is a warm-up
    return updates, counted


def run_docs(docs: list, K: int, a, rates: list) -> tuple[int, list]:
    """(b): the docs' driver loop over its server and K of its workers."""
    import ray_docs_ps

    issued = ray_docs_ps.run_async(docs[0], docs[1:K + 1], a.seconds, a.min_updates * K)
    span = issued[-1] - issued[K - 1]  # from the moment every worker has delivered once
    rates.append((len(issued) - K) / span if span > 0 else float("nan"))
    return len(issued), []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="s each cell runs (default 3)")
    ap.add_argument("--min-updates", type=int, default=3, help="updates each worker makes, at least (default 3)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over each group's cells (default 3)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16], help="K (default 1 4 16)")
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4], help="S (default 1 2 4)")
    ap.add_argument("--docs-workers", type=int, nargs="+", default=[1, 4],
                    help="K for (b) (default 1 4: each DataWorker holds a whole ResNet-50; 0: no (b))")
    ap.add_argument("--models", nargs="+", default=["resnet50", "inception_v3"])
    ap.add_argument("--shard-threads", type=int, default=None,
                    help=f"torch threads in each shard and (c) sink (default: {SHARD_THREADS}, what ps-train "
                         f"gives a GPU run's shards, where S x {SHARD_THREADS} fit in the cores; else 1)")
    ap.add_argument("--in-place", action="store_true",
                    help="shards check each gradient first and update in place (one_pass=False): "
                         "the path before the one-pass push (core/fused_push.py), for an A/B")
    ap.add_argument("--pipelined", action="store_true",
                    help="workers send each push before fetching the reply to the one before (both paths)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds; implies --no-write")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    a = ap.parse_args()
    a.docs_workers = [k for k in a.docs_workers if k > 0]
    if a.smoke:
        a.seconds, a.min_updates, a.rounds, a.no_write = 0.4, 2, 1, True
        a.workers, a.shards, a.docs_workers, a.models = [1, 2], [1, 2], [2], ["resnet50"]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    import ray_docs_ps
    from ps_trainer.transport.ray_shard import INLINE_BYTES, ParameterServerShard

    ray.cloudpickle.register_pickle_by_value(ray_docs_ps)  # benchmarks/ is not on the actors' path
    torch.set_num_threads(1)
    load = os.getloadavg()
    layouts = {m: layout_of(m, a.smoke) for m in a.models}
    # the one-pass push of a whole model on one shard's threads, before any actor runs
    a.pass_ms = {m: one_pass_ms(L.num_params, shard_threads(a, 1)) for m, L in layouts.items()}
    model_bytes = {m: 4 * (L.num_params + L.num_buffers) for m, L in layouts.items()}
    max_k = max(a.workers + a.docs_workers)
    store, need, avail = store_size(max_k, max(model_bytes.values()))
    # As start_ray (loopback, arguments up to 1 MiB inline), with an object store sized for K.
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False,
             object_store_memory=store, _system_config={"max_direct_call_object_size": INLINE_BYTES})
    print(f"object store {store / 2**30:.1f} GiB (the run may hold {need / 2**30:.1f} GiB at once; "
          f"{avail / 2**30:.1f} GiB available)", flush=True)
    workers = [ray.remote(ZeroWorker).options(num_cpus=0).remote(i) for i in range(max(a.workers))]
    procs = {"raylet": [raylet_pid()], "driver": [os.getpid()]}
    rates: dict = defaultdict(list)  # (path, model, S, K) -> updates/s, one per round
    phases: dict = defaultdict(list)  # (path, model, S, K) -> (pull, land, push) s per update
    cpu: dict = defaultdict(list)  # (path, model, S, K) -> {process group: CPU s per update}
    batched: dict = defaultdict(list)  # (path, model, S, K) -> pushes applied together, per round
    checks = []  # (cell, updates, [pushes each shard counted])
    touched = False  # have the workers and the driver mapped the object store yet?
    for model in a.models:
        layout = layouts[model]
        grad = ray.put(np.full(layout.num_params, GRAD, np.float32))
        prepared = [w.prepare.remote(grad, model, layout) for w in workers]
        init = np.full(layout.num_params, 0.01, np.float32)  # (P,) the initial weights
        for S in a.shards:
            specs = layout.shards(S)
            conc = max_k + 4  # a thread per worker, as make_shards gives a run's shards
            shards = [ray.remote(ParameterServerShard).options(num_cpus=0, max_concurrency=conc).remote(
                s.index, init[s.params[0]:s.params[1]], np.ones(s.num_buffers, np.float32),
                **shard_options(shard_threads(a, S), not a.in_place)) for s in specs]
            sinks = [ray.remote(Sink).options(num_cpus=0, max_concurrency=conc).remote(
                s.num_params + s.num_buffers) for s in specs]
            bare = [ray.remote(UpdateSink).options(num_cpus=0, max_concurrency=conc).remote(
                s.num_params + s.num_buffers, s.num_params, shard_threads(a, S)) for s in specs]
            on = {OURS: shards, STORE: sinks, BARE: bare}
            cells = [(p, k) for p in (OURS, STORE, BARE) for k in a.workers]
            docs = []
            if S == min(a.shards) and model == a.models[0] and a.docs_workers:
                # (b): one server, the first model (--docs-workers 0: none)
                spec = "resnet50" if not a.smoke else layout.num_params
                docs = [ray_docs_ps.ParameterServer.remote(1e-2, spec)] + \
                    [ray_docs_ps.DataWorker.remote(spec) for _ in range(max(a.docs_workers))]
                cells += [(DOCS, k) for k in a.docs_workers]
            ray.get(prepared)  # (the actors above started meanwhile)
            procs.setdefault("workers", [pid_of(w) for w in workers])
            servers = {p: [pid_of(h) for h in hs] for p, hs in on.items()}
            servers[DOCS] = [pid_of(h) for h in docs[:1]]
            docs_pids = [pid_of(h) for h in docs[1:]]
            # Warm-up, not counted: every new process maps the object store (`touch_store`; the
            # workers and the driver once), then the shards' first updates fault in their state.
            fresh = shards + sinks + bare + docs + ([] if touched else workers)
            ray.get([h.__ray_call__.remote(lambda self, n: touch_store(n), store) for h in fresh])
            if not touched:
                touch_store(store)
                touched = True
            # A large shard compiles its push loop in a thread as it starts (push_kernel.warm):
            # let it finish, as the workers' model building lets it in a run.
            ray.get([h.__ray_call__.remote(lambda self: self.warming and self.warming.join())
                     for h in shards])
            for path, servers_ in on.items():
                run_cell(path, servers_, specs, workers[:max(a.workers)],
                         argparse.Namespace(seconds=0.0, min_updates=1), [], [], [])
            if docs:
                ray_docs_ps.run_async(docs[0], docs[1:], 0.0, len(docs) - 1)
            for r in range(a.rounds):
                for path, K in cells[r % len(cells):] + cells[:r % len(cells)]:  # rotating order
                    key = (path, model, S, K)
                    groups = {"workers": docs_pids[:K] if path == DOCS else procs["workers"][:K],
                              "server": servers[path], "raylet": procs["raylet"],
                              "driver": procs["driver"]}
                    before = {g: cpu_seconds(p) for g, p in groups.items()}
                    if path == DOCS:
                        updates, counted = run_docs(docs, K, a, rates[key])
                    else:
                        updates, counted = run_cell(path, on[path], specs, workers[:K], a,
                                                    rates[key], phases[key], batched[key])
                    cpu[key].append({g: (cpu_seconds(p) - before[g]) / updates
                                     for g, p in groups.items()})
                    if path == OURS:
                        checks.append((key, updates, counted))
                    where = f"{model} S={S} K={K}" if path != DOCS else f"{model} K={K}"
                    print(f"round {r + 1}  {path:16} {where}: {rates[key][-1]:.2f} updates/s "
                          f"({updates} updates; shard pushes "
                          f"{', '.join(map(str, counted)) if counted else '-'}"
                          f"{f'; {batched[key][-1]} applied together' if path == OURS else ''})",
                          flush=True)
            for h in shards + sinks + bare + docs:
                ray.kill(h)
    ray.shutdown()
    text = report(a, layouts, model_bytes, rates, phases, cpu, checks, batched, store, need, avail,
                  (load, os.getloadavg()))
    print(text)
    if not a.no_write:
        write_section(SECTION, text)


def median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]  # NaN: a cell whose span was empty
    return statistics.median(xs) if xs else float("nan")


def report(a, layouts, model_bytes, rates, phases, cpu, checks, batched, store, need, avail,
           loads) -> str:
    K4 = 4 if 4 in a.docs_workers + a.workers else max(a.docs_workers or a.workers)
    lines = [f"Machine: {machine()}, ray {__import__('ray').__version__}, {time.strftime('%Y-%m-%d')}; "
             f"load average (1 min) {loads[0][0]:.2f} before, {loads[1][0]:.2f} after. "
             f"{a.seconds:g} s per cell (at least {a.min_updates} updates per worker), "
             f"{a.rounds} rounds in rotating order, medians over rounds; torch threads in each "
             f"shard and (c) sink: {', '.join(f'{shard_threads(a, S)} at S={S}' for S in a.shards)}; "
             f"{'the shards checked each gradient first and updated in place (--in-place); ' if a.in_place else ''}"
             f"every process mapped "
             f"the object store before its first cell (`touch_store`), as a run past its first "
             f"minute has. Object store "
             f"{store / 2**30:.1f} GiB for at most {need / 2**30:.1f} GiB in use at once"
             f"{' (bounded to 40% of the memory available: Ray spills the rest to disk)' if store < need else ''}; "
             f"{avail / 2**30:.1f} GiB were available.", "",
             "    python benchmarks/bench_server_capacity.py" + ("" if a.seconds == 3 and a.rounds == 3
                                                              else f" --seconds {a.seconds:g} --rounds {a.rounds}")
             + (" --in-place" if a.in_place else "") + (" --pipelined" if a.pipelined else ""), "",
             "An update = one worker's gradient pushed to every shard (and applied) plus one pull of every "
             "shard's weights; MB/s counts both directions (2 x the model's float32 bytes per update). "
             "Pushes applied together: the share of the pushes a shard applied in one pass with others "
             "that had queued while it was busy (group commit, `ShardState.push`). Ratios: medians "
             "of the per-round ratios.", "",
             "| model | S | K | ps-trainer, updates/s | MB/s | (a) object store, updates/s | (c) store + update, updates/s | ps-trainer / (a) | (c) / (a) | ps-trainer / (c) | pushes applied together |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    pushes = defaultdict(int)  # (path, model, S, K) -> pushes the shards received over the rounds
    for key, updates, counted in checks:
        pushes[key] += sum(counted)
    ratios = {}
    vs_best = {}  # ps-trainer's median against (a)'s best round: the store's ceiling, cautiously
    bare_ratios, vs_bare = {}, {}  # (c) / (a) and ps-trainer / (c), per-round medians
    for model in a.models:
        mb = 2 * model_bytes[model] / 1e6
        for S in a.shards:
            for K in a.workers:
                ours, store_ = rates[(OURS, model, S, K)], rates[(STORE, model, S, K)]
                bare = rates[(BARE, model, S, K)]
                per_round = [x / y for x, y in zip(ours, store_)]
                ratios[(model, S, K)] = median(per_round)
                vs_best[(model, S, K)] = median(ours) / max((x for x in store_ if x == x),
                                                            default=float("nan"))
                bare_ratios[(model, S, K)] = median([x / y for x, y in zip(bare, store_)])
                vs_bare[(model, S, K)] = median([x / y for x, y in zip(ours, bare)])
                together = sum(batched[(OURS, model, S, K)]) / max(1, pushes[(OURS, model, S, K)])
                lines.append(f"| {model} | {S} | {K} | {median(ours):.2f} | {mb * median(ours):.0f} | "
                             f"{median(store_):.2f} | {median(bare):.2f} | "
                             f"{100 * ratios[(model, S, K)]:.0f}% | {100 * bare_ratios[(model, S, K)]:.0f}% | "
                             f"{100 * vs_bare[(model, S, K)]:.0f}% | {100 * together:.0f}% |")
    docs_model = a.models[0]
    S1 = min(a.shards)
    mb = 2 * model_bytes[docs_model] / 1e6
    lines += ["", f"(b) the Ray docs' parameter server ({docs_model}, one server), against ps-trainer "
                  f"in the same run:", "",
              "| K | (b) Ray docs, updates/s | MB/s | ps-trainer S=1 | x (b) | ps-trainer, best S | x (b) |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    vs_docs = {}
    for K in a.docs_workers:
        d = median(rates[(DOCS, docs_model, S1, K)])
        ours1 = median(rates[(OURS, docs_model, S1, K)]) if K in a.workers else float("nan")
        best_s = max(a.shards, key=lambda s: median(rates[(OURS, docs_model, s, K)]) if K in a.workers else 0)
        best = median(rates[(OURS, docs_model, best_s, K)]) if K in a.workers else float("nan")
        vs_docs[K] = (ours1 / d, best / d)
        lines.append(f"| {K} | {d:.2f} | {mb * d:.0f} | {ours1:.2f} | {ours1 / d:.1f}x | "
                     f"{best:.2f} (S={best_s}) | {best / d:.1f}x |")
    low = min(ratios.values())
    met75 = sum(r >= 0.75 for r in ratios.values())
    lines += [""] + ([f"- **ps-trainer against (b) at K={K4}: {vs_docs[K4][0]:.1f}x with one shard, "
                      f"{vs_docs[K4][1]:.1f}x with the best S** (target: at least 5x): "
                      f"{'met' if max(vs_docs[K4]) >= 5 else 'missed'}."] if K4 in vs_docs else []) + [
              f"- **ps-trainer against (a): {100 * median(list(ratios.values())):.0f}% at the median cell, "
              f"{100 * low:.0f}% at the lowest** (target: at least 75%): met in {met75} of "
              f"{len(ratios)} cells.",
              f"- The same against (a)'s *best* round in each cell (the store's ceiling: in some cells "
              f"(a) ran at two speeds from round to round, and a slow round of the baseline flatters the "
              f"ratio): {100 * median(list(vs_best.values())):.0f}% at the median cell; by K: "
              + by_k(vs_best, a.workers) + f"; at least 75% in {sum(r >= 0.75 for r in vs_best.values())} of {len(vs_best)} cells.",
              f"- **(c), the store plus the plainest update, against (a)** (what the update's "
              f"arithmetic leaves of the store's rate, for any server that applies it): "
              + by_k(bare_ratios, a.workers) + f". At least 75% in {sum(r >= 0.75 for r in bare_ratios.values())} of "
              f"{len(bare_ratios)} cells.",
              f"- **ps-trainer against (c)**: {100 * median(list(vs_bare.values())):.0f}% at the median "
              f"cell; by K: "
              + by_k(vs_bare, a.workers) + ".",
              f"- Accounting: in every cell each shard counted exactly the pushes the workers made "
              f"({sum(u for _, u, _ in checks)} updates in all), every one applied."]
    lines += ceiling(a, rates, ratios)
    lines += reading(a, rates, cpu, docs_model, S1, K4)
    lines += ["", copies_table(), "", where_time_goes(a, phases, cpu)]
    return "\n".join(lines)


def by_k(ratios: dict, workers: list[int]) -> str:
    """`ratios` ((model, S, K) -> ratio) as percentages grouped by K: "K=1 56%, 60%; K=4 ..."."""
    return "; ".join(f"K={K} {', '.join(f'{100 * r:.0f}%' for (_, _, k), r in ratios.items() if k == K)}"
                     for K in workers)


def cpu_ms(cpu: dict, key: tuple) -> float:
    """CPU ms per update of a cell, all its process groups together (medians over rounds)."""
    c = cpu.get(key)
    return sum(1e3 * median([x[g] for x in c]) for g in c[0]) if c else float("nan")


def ceiling(a, rates, ratios) -> list[str]:
    """The most of (a)'s rate a server that answers each push with the weights after it can reach
    at K=1, S=1, in this run's numbers. One worker waits for each answer, so nothing overlaps the
    update: an update takes (a)'s time plus the pass (`one_pass_ms`, on the shard's threads)."""
    if 1 not in a.workers or 1 not in a.shards or not all(p == p for p in a.pass_ms.values()):
        return []
    limit = {m: 1 / (1 + median(rates[(STORE, m, 1, 1)]) * a.pass_ms[m] / 1e3) for m in a.models}
    return [f"- **The ceiling at K=1** (S=1): one worker waits for the answer to each push, so "
            f"nothing overlaps the update, and an update takes (a)'s time plus one pass of the "
            f"update (the one-pass push alone on {shard_threads(a, 1)} threads, measured in this "
            f"run: " + ", ".join(f"{a.pass_ms[m]:.1f} ms for {m}" for m in a.models)
            + "). Against (a)'s median rate, that is at most "
            + ", ".join(f"{100 * limit[m]:.0f}% ({m})" for m in a.models)
            + "; ps-trainer reached " + ", ".join(f"{100 * ratios[(m, 1, 1)]:.0f}%" for m in a.models)
            + " of (a), " + ", ".join(f"{100 * ratios[(m, 1, 1)] / limit[m]:.0f}%" for m in a.models)
            + " of that ceiling."]


def reading(a, rates, cpu, model, S1, K4) -> list[str]:
    """What the CPU accounting says about the two targets, in this run's numbers."""
    def cost(path, S, K):  # (CPU ms per update, cores the path kept busy)
        ms = cpu_ms(cpu, (path, model, S, K))
        return ms, ms * median(rates[(path, model, S, K)]) / 1e3

    if K4 not in a.workers:
        return []
    ours, store_, docs = cost(OURS, S1, K4), cost(STORE, S1, K4), cost(DOCS, S1, K4)
    return ["", f"Reading it ({model}, S={S1}, K={K4}; CPU from the table below): an update costs "
                f"ps-trainer {ours[0]:.0f} CPU ms, (a) {store_[0]:.0f} and (b) {docs[0]:.0f}. Per update "
                f"the shard does all of (a)'s work plus one pass that checks the gradient (its sum) "
                f"and applies Nesterov with weight decay and the Polyak lerp into a second copy of "
                f"its state (core/fused_push.py; pushes that queued while the shard was busy share "
                f"the pass): on cores "
                f"that are all busy, ps-trainer / (a) cannot pass {100 * store_[0] / ours[0]:.0f}% "
                f"here. Against (b), ps-trainer spends {docs[0] / ours[0]:.1f}x less CPU per update, "
                f"yet kept only {ours[1]:.2f} cores busy where (b) kept {docs[1]:.2f}. That fits the "
                f"code: at S={S1}, every push's update and every snapshot's "
                f"`ray.put` run one at a time under its shard's lock, while (b)'s cost is spread over "
                f"its workers' deserialization and its server."]


def copies_table() -> str:
    """Memory copies of the model's bytes one update costs (counted from the code: ps_trainer,
    Ray 2.60's serializer, torch 2.13's tensor pickling). Not counted, on every path alike: a
    training worker's copy of its gradient into a send buffer."""
    return "\n".join([
        "Copies of the model's bytes per update (read from the code; passes that compute are listed apart):", "",
        "| path | gradient, worker -> server | weights, server -> worker | copies | other passes |",
        "| --- | --- | --- | ---: | --- |",
        "| ps-trainer | 1: Ray puts the argument into the store; the shard reads it there | "
        "1: the `ray.put` of `[weights \\| BN]` straight from the shard's storage, under its "
        "lock (`ShardState.publication`); `ray.get` is zero-copy and the worker's model reads "
        "the snapshot in place (`FlatModel.alias`; only tensors a shard boundary cuts are copied) "
        "| 2 | validation (the gradient's sum), Nesterov + weight decay and the Polyak lerp in one "
        "pass, written into a second copy of the state that is kept only if every sum is finite "
        "(core/fused_push.py: 2.0x a memcpy in all; pushes queued behind a busy shard share the "
        "pass: group commit) |",
        "| (a) object store | 1: the same put | 1: the sink's `ray.put`, landed the same way | 2 | none |",
        "| (c) store + update | 1: the same put | 1: the same as (a) | 2 | torch's fused SGD and "
        "the Polyak lerp over the whole shard (two passes), one push at a time |",
        "| (b) Ray docs | 3: the worker's returned list put into the store, `np.stack`, "
        "`.sum(axis=0)` | 6: a tensor pickles as `torch.save` into a BytesIO, the pickled bytes "
        "are copied into Ray's in-band buffer and that into the store; the worker unpickles them "
        "into bytes, `torch.load`s those into new tensors, and `load_state_dict` copies them into "
        "the model | 9 | SGD step; per-tensor Python work for 161 parameters and 320 state_dict "
        "entries |"])


def where_time_goes(a, phases, cpu) -> str:
    """CPU milliseconds per update in each group of processes (medians over rounds), and the
    phases of one worker's update in wall time (at the smallest K run: K=1 by default)."""
    model, k = a.models[0], min(a.workers)
    rows = [f"Where the time goes ({model}): CPU ms per update (user + system, all threads; medians "
            f"over rounds) in the workers, the servers (shards, sinks, or the docs' server), the "
            f"raylet (it holds the object store) and the driver. On {os.cpu_count()} cores a "
            f"path can at best reach {os.cpu_count()} x 1000 / total updates/s.", "",
            "| path | S | K | workers | servers | raylet | driver | total | updates/s at that CPU cost |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    keys = [(p, model, s, k) for p in (OURS, STORE, BARE) for s in a.shards for k in a.workers]
    keys += [(DOCS, model, min(a.shards), k) for k in a.docs_workers]
    for key in keys:
        if not cpu.get(key):
            continue
        ms = {g: 1e3 * median([c[g] for c in cpu[key]]) for g in cpu[key][0]}
        total = sum(ms.values())
        rows.append(f"| {key[0]} | {key[2] if key[0] != DOCS else 1} | {key[3]} | "
                    f"{ms['workers']:.0f} | {ms['server']:.0f} | {ms['raylet']:.0f} | "
                    f"{ms['driver']:.0f} | {total:.0f} | {os.cpu_count() * 1000 / total:.1f} |")
    rows += ["", f"One worker's update in wall time (K={k}, median ms; push = the gradient's put, the "
                 "server's work, its snapshot and put, and the reply: one call per shard, each push "
                 "answered with the weights after it; pull = the `ray.get` of those weights; land = "
                 "the landing in place: parameters re-pointed, cut tensors and BatchNorm statistics copied):", "",
             "| path | S | pull, ms | land, ms | push + result, ms | update, ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for path in (OURS, STORE, BARE):
        for s in a.shards:
            ph = phases.get((path, model, s, k))
            if not ph:
                continue
            p, l_, q = (1e3 * float(np.median([x[i] for x in ph])) for i in range(3))
            rows.append(f"| {path} | {s} | {p:.0f} | {l_:.0f} | {q:.0f} | {p + l_ + q:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
