"""The deterministic simulator: K logical workers in one process, on a virtual clock.

`ps-train --simulate` takes the same settings as a real run and runs the same objects: the same
`ShardState`s (optimizer, Polyak average, policy), the same `Worker`s (pull, compute, push), over
the in-process client, which serves snapshots by the Ray shard's rule (`core.publish`: a new one
every `--publish-every` versions and `--publish-interval` virtual seconds). Only time is different. Each step's duration is drawn, seeded, from the
configured model: `sim_step_time` (times a straggler's slowdown, varied by +-`sim_jitter`) plus the
injected delay. Events are processed in virtual-time order (ties by worker), so

- staleness arises exactly as on a cluster whose workers have those step times: a push is applied
  at the virtual moment its step ends, and every push applied since the worker's pull is one
  version of staleness (about K - 1 on average for K equally fast workers);
- the same seed gives bit-identical metrics: nothing depends on the real clock, threads or
  scheduling (one torch thread; the global RNG is consumed in event order);
- a coordinating policy (SSP, BSP) parks a worker whose pull is not allowed yet, and releases it
  at the virtual moment the push or retirement that allows it happens; the wait is recorded.

Checkpoints (`--checkpoint-steps`, and always at the end and on Ctrl-C/SIGTERM) hold the whole
simulation: shards, every worker's buffers, batch order and RNG states, the event queue and the
virtual clock. `--resume RUN_DIR` therefore continues exactly: an interrupted-and-resumed run ends
with the same weights and the same metrics tables as an uninterrupted one.

A worker computes its gradient when its step begins (on the weights it just pulled) and the push
is applied when the step ends, which is the same thing a real worker does, in a different order
of real time. It does not model network latency or the shard's own compute time; for capacity
(how many shards keep up with K workers) `harness/scaling.py` gives a push a duration at its shard.
"""

from __future__ import annotations

import heapq
import time
from concurrent.futures import Future

import numpy as np
import torch

from ..config import TrainConfig, fault_at
from ..core import FlatModel, ShardState
from ..core import checkpoint
from ..core.publish import Published, Publisher
from ..data.stream import open_batches
from ..models import build
from ..trainer import lock
from ..trainer.divergence import Diverged, DivergenceWatch
from ..trainer.metrics import RunDirectory, new_run_dir
from ..trainer.progress import ProgressBar
from ..trainer.signals import stop_requested
from ..trainer.evaluate import Evaluator
from ..trainer.plan import prepare, shard_options, worker_data, worker_options
from ..trainer.summary import summarize
from ..transport.inprocess import InProcessClient
from ..worker.delays import worker_delays
from ..worker.worker import Worker, wants_channels_last


class Simulation:
    """Builds the shards and logical workers of `cfg` and runs them to the end on virtual time."""

    def __init__(self, cfg: TrainConfig, run_dir=None, log=print):
        self.cfg, self.log = cfg, log
        torch.set_num_threads(1)  # determinism, and one core per simulation (sweeps run several)
        self.plan = plan = prepare(cfg)
        for note in plan.notes:
            log(f"note: {note}")
        params, buffers = plan.layout.flatten(plan.model)
        self.specs = plan.layout.shards(cfg.ps_shards)
        self.shards = [ShardState(s.index, params[slice(*s.params)], buffers[slice(*s.buffers)],
                                  **shard_options(plan)) for s in self.specs]
        # One publisher per shard, shared by every worker's client, as on a Ray shard. (The
        # evaluator reads the current weights: the final evaluation is of what the checkpoint has.)
        self.publishers = [Publisher(cfg.publish_every, cfg.publish_interval) for _ in self.shards]
        self.delays = worker_delays(cfg)
        self.workers = [self.make_worker(i) for i in range(cfg.workers)]
        # --crash-worker-at W@S: worker W's process dies before its step S, as on Ray; it is
        # replaced (`replace`) by a worker that continues from the pushes the shards recorded.
        self.crash = fault_at(cfg.crash_worker_at)
        self.crashed = False
        self.base = [0] * cfg.workers  # steps of each worker's dead incarnations
        self.restarts: list[str] = []
        self.jitter = [np.random.default_rng([cfg.seed, i, 7]) for i in range(cfg.workers)]
        # The event loop's state (attributes, so a checkpoint can hold it).
        self.t = 0.0  # virtual seconds
        self.events: list = []  # (time a step ends, sequence, worker, its loss)
        self.seq = 0
        self.parked: dict[int, float] = {}  # worker -> virtual time it started waiting
        self.done_steps = 0
        total = plan.steps_per_worker * cfg.workers
        self.eval_at = [round(total * k / cfg.sim_evals) for k in range(1, cfg.sim_evals)]
        self.sequence = 0  # checkpoints written
        path = run_dir or cfg.resume or cfg.run_dir or new_run_dir("runs", cfg.model)
        self.checkpoints = cfg.checkpoint_dir or str(path)
        keep = None
        if cfg.resume:
            keep = self.restore(*checkpoint.load(self.checkpoints, model=cfg.model,
                                                 fingerprint=plan.layout.fingerprint()))
        self.run = RunDirectory(path, cfg.to_yaml(), keep_rows=keep)
        self.evaluator = Evaluator(plan, InProcessClient(self.shards), clock=self.now)

    def now(self) -> float:
        return self.t

    def make_worker(self, i: int, clock: int = 0, position: int | None = None) -> Worker:
        """Logical worker i on its partition, as `trainer.actors.make_worker` makes its actor:
        the same model seed, batch order and options; `clock`: pushes the shards recorded for it,
        `position`: the batch it starts at (by default that of its recorded pushes)."""
        cfg, plan = self.cfg, self.plan
        options = worker_options(plan)
        options["max_inflight"] = 0  # pushes are applied at once: rows are written as they happen
        torch.manual_seed(cfg.seed * 1000 + i)  # as WorkerActor (the first pull overwrites it)
        model = build(cfg.model, num_classes=plan.data.num_classes, in_channels=plan.in_channels)
        start = clock * cfg.push_every if position is None else position
        batches = open_batches(worker_data(plan, i, start), cfg.batch_size, cfg.seed * 1000 + i)
        flat = FlatModel(model, plan.layout,
                         channels_last=wants_channels_last(cfg.channels_last, "cpu"))
        w = Worker(i, flat, self.specs,
                   InProcessClient(self.shards, clock=self.now, publishers=self.publishers),
                   batches, in_channels=plan.in_channels, clock=clock, **options)
        w.now = self.now
        w.threaded = False  # pulls and pushes happen in line, at their virtual moments
        return w

    def replace(self, w: Worker) -> Worker:
        """Worker w died (--crash-worker-at): its gradient being accumulated dies with it, and a
        new worker takes its partition, as the Ray driver's `replace` does. Its steps continue
        from the pushes every shard recorded, and so does its SSP clock."""
        clock = min(s.clocks[w.id] for s in self.shards)
        self.base[w.id] = clock * self.cfg.push_every  # steps whose pushes reached every shard
        new = self.make_worker(w.id, clock=clock)
        new.pushes_sent = sum(s.clocks[w.id] for s in self.shards)
        new.images = self.base[w.id] * self.cfg.batch_size
        self.workers[w.id] = new
        self.crashed = True
        self.restarts.append(f"worker {w.id}: killed before its step {w.step_count} "
                             f"(--crash-worker-at)")
        return new

    def steps_done(self, w: Worker) -> int:
        return self.base[w.id] + w.step_count

    # ---- one worker's step, in two events ---------------------------------------------------------
    def step_time(self, i: int) -> tuple[float, float]:
        """(computation, injected delay) of worker i's next step, in virtual seconds."""
        c = self.cfg.sim_step_time
        if self.cfg.sim_jitter:
            c *= 1.0 + self.cfg.sim_jitter * (2.0 * self.jitter[i].random() - 1.0)
        return c, self.delays[i](c)

    def may_begin(self, w: Worker) -> bool:
        return not w.pull_due() or all(s.ready(w.id, w.clock) for s in self.shards)

    def start(self, w: Worker, since: float) -> None:
        """Worker w is free at `since`: it dies here (--crash-worker-at) and is replaced, then
        finishes (retires), begins its next step, or waits (parked) for a coordinating policy."""
        if not self.crashed and (w.id, w.step_count) == self.crash:
            w = self.replace(w)
        if self.steps_done(w) >= self.plan.steps_per_worker:
            w.client.retire(w.id)  # SSP/BSP stop waiting for it
        elif self.may_begin(w):
            self.begin(w, since)
        else:
            self.parked[w.id] = since

    def begin(self, w: Worker, parked_since: float) -> None:
        """Worker w starts a step now: pull (if due), compute, and schedule its end."""
        w.timing["wait"] += self.t - parked_since
        loss = w.begin_step()
        compute, delay = self.step_time(w.id)
        w.timing["compute"] += compute
        w.timing["delay"] += delay
        self.push_event(self.t + compute + delay, w.id, loss)

    def push_event(self, t: float, i: int, loss: float) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, i, loss))

    # ---- checkpoints ------------------------------------------------------------------------------
    def checkpoint(self) -> str:
        """Write the whole simulation to the run directory's checkpoints."""
        self.sequence += 1
        workers, extra = [], {"torch_rng": torch.get_rng_state().numpy()}
        for w in self.workers:
            b = w.batches
            workers.append({"step_count": w.step_count, "clock": w.clock, "images": w.images,
                            "pushes_sent": w.pushes_sent, "last_loss": w.last_loss,
                            "versions": w.versions, "window": w.window, "timing": w.timing,
                            "position": b.position,
                            "delay_rng": self.delays[w.id].rng.bit_generator.state,
                            "jitter_rng": self.jitter[w.id].bit_generator.state})
            for name in ("params", "buffers", "grads"):
                extra[f"w{w.id}.{name}"] = getattr(w.flat, name).numpy()
            if w._next is not None:  # a prefetched pull, not landed yet: what it read
                snapshots, waited = w._next.result()
                workers[-1]["prefetched"] = [[v for _, v in snapshots], waited]
                for j, (arr, _) in enumerate(snapshots):
                    extra[f"w{w.id}.prefetched{j}"] = arr
        published = []  # what each shard's publisher serves now: the next pulls read it
        for i, p in enumerate(self.publishers):
            published.append({})
            for averaged, h in p.held.items():
                kind = "polyak" if averaged else "raw"
                published[i][kind] = [h.version, h.time]
                extra[f"pub{i}.{kind}"] = h.snapshot
        meta = {"model": self.cfg.model, "fingerprint": self.plan.layout.fingerprint(),
                "num_params": self.plan.layout.num_params, "sequence": self.sequence,
                "kind": "simulation", "t": self.t, "seq": self.seq, "events": self.events,
                "parked": {str(k): v for k, v in self.parked.items()},
                "done_steps": self.done_steps, "eval_at": self.eval_at, "workers": workers,
                "published": published, "base": self.base, "crashed": self.crashed,
                "restarts": self.restarts,
                "rows": {"pushes": self.run.pushes.rows, "evals": self.run.evals.rows}}
        self.run.flush()  # every row the checkpoint accounts for is on disk before it exists
        return checkpoint.save(self.checkpoints, [s.state_dict() for s in self.shards], meta,
                               extra=extra)

    def restore(self, states: list[dict], meta: dict) -> dict:
        """Load a checkpoint written by `checkpoint`; returns the metric rows it accounts for."""
        if meta.get("kind") != "simulation":
            raise ValueError("--resume: that checkpoint is of a real run; resume it without --simulate")
        for s, sd in zip(self.shards, states):
            s.load_state_dict(sd)
        extra = meta["extra"]
        torch.set_rng_state(torch.from_numpy(extra["torch_rng"].copy()))
        for w, st in zip(self.workers, meta["workers"]):
            for name in ("params", "buffers", "grads"):
                getattr(w.flat, name).copy_(torch.from_numpy(extra[f"w{w.id}.{name}"]))
            # the same batches from where it was (a stream's or a partition's: by position)
            w.batches = open_batches(worker_data(self.plan, w.id, st["position"]),
                                     self.cfg.batch_size, self.cfg.seed * 1000 + w.id)
            self.delays[w.id].rng.bit_generator.state = st["delay_rng"]
            self.jitter[w.id].bit_generator.state = st["jitter_rng"]
            w.step_count, w.clock, w.images = st["step_count"], st["clock"], st["images"]
            w.pushes_sent, w.last_loss, w.versions = st["pushes_sent"], st["last_loss"], st["versions"]
            w.window = st.get("window", st["versions"])  # older checkpoints: push_every 1 only
            w.timing = st["timing"]
            if st.get("prefetched"):
                versions, waited = st["prefetched"]
                w._next = Future()
                w._next.set_result(([(extra[f"w{w.id}.prefetched{j}"].copy(), v)
                                     for j, v in enumerate(versions)], waited))
        for i, (p, held) in enumerate(zip(self.publishers, meta.get("published", []))):
            for kind, (version, t) in held.items():
                arr = extra[f"pub{i}.{kind}"].copy()
                arr.flags.writeable = False
                p.held[kind == "polyak"] = Published(arr, version, t, arr)
        self.t, self.seq, self.done_steps = meta["t"], meta["seq"], meta["done_steps"]
        self.events = [tuple(e) for e in meta["events"]]
        heapq.heapify(self.events)
        self.parked = {int(k): v for k, v in meta["parked"].items()}
        self.eval_at, self.sequence = meta["eval_at"], meta["sequence"]
        self.base = meta.get("base", self.base)
        self.crashed, self.restarts = meta.get("crashed", False), meta.get("restarts", [])
        return meta["rows"]

    # ---- the event loop ---------------------------------------------------------------------------
    def __call__(self) -> dict:
        cfg, plan, run = self.cfg, self.plan, self.run
        steps_each = plan.steps_per_worker
        total = steps_each * cfg.workers
        parked = self.parked
        bar = ProgressBar(total, enabled=cfg.progress)
        wall0 = time.time()
        interrupted = False
        watch = DivergenceWatch()
        next_checkpoint = (self.done_steps // cfg.checkpoint_steps + 1) * cfg.checkpoint_steps \
            if cfg.checkpoint_steps else None

        # Ctrl-C and SIGTERM only raise a flag, read between events: a checkpoint is always taken
        # at an event boundary, never with a step half-processed.
        with stop_requested() as stop, bar:
            if not cfg.resume:
                run.evals.write(self.evaluator(0, 0.0))
                for w in self.workers:
                    self.start(w, 0.0)
            while self.events and not stop:
                self.t, _, i, loss = heapq.heappop(self.events)
                w = self.workers[i]
                w.finish_step(loss)  # the push (if due) is applied now
                self.done_steps += 1
                rows = w.drain_rows()
                run.pushes.write(rows)
                watch.add(rows)
                if watch.diverged():
                    break
                self.start(w, self.t)
                for j in sorted(parked):  # the push (or a retirement) may have released them
                    if self.may_begin(self.workers[j]):
                        self.begin(self.workers[j], parked.pop(j))
                if self.eval_at and self.done_steps >= self.eval_at[0]:
                    self.eval_at.pop(0)
                    run.evals.write(self.evaluator(self.done_steps, 0.0))
                    bar.update(self.done_steps, **{"virtual s": f"{self.t:.1f}"})
                if next_checkpoint and self.done_steps >= next_checkpoint:
                    next_checkpoint += cfg.checkpoint_steps
                    if watch.healthy():  # never replace a good checkpoint with a diverged state
                        self.checkpoint()
            if parked and not stop and not watch.diverged():
                raise RuntimeError(f"simulation deadlocked: workers {sorted(parked)} wait forever "
                                   f"under policy {cfg.policy}")
        if stop:
            interrupted = True
            self.log("\ninterrupted: checkpointing; `ps-train --resume "
                     f"{run.path}` continues exactly from here")
        diverged = watch.diverged()
        if not diverged:
            self.checkpoint()  # before the final evaluation: a resumed run evaluates it again
        final = self.evaluator(self.done_steps, 0.0, final=True)
        run.evals.write(final)
        run.close()
        progress = {w.id: {"worker": w.id, "steps": self.steps_done(w), "images": w.images,
                           "loss": w.last_loss, "pushes_sent": w.pushes_sent} for w in self.workers}
        summary, table = summarize(plan, final, [s.stats() for s in self.shards], progress,
                                   run.path, self.t, interrupted=interrupted)
        summary.update(simulated=True, virtual_seconds=self.t, wall_seconds=time.time() - wall0,
                       worker_restarts=self.restarts)
        table += f"\nsimulated: {self.t:.2f} virtual s in {summary['wall_seconds']:.1f} s of wall time"
        if diverged:
            summary["diverged"] = watch.message() + (
                f"; the last good checkpoint ({self.sequence}) is kept" if self.sequence else "")
        run.write_summary(summary, table)
        self.log(table)
        if diverged:
            raise Diverged(f"{summary['diverged']} (metrics are in {run.path})", summary)
        return summary


def simulate(cfg: TrainConfig, log=print) -> dict:
    """Run `cfg` in the simulator and return its summary (the run directory is as a real run's)."""
    if not cfg.run_dir and not cfg.resume:
        cfg.run_dir = str(new_run_dir("runs", cfg.model))
    with lock.hold(cfg.resume or cfg.run_dir, "--resume" if cfg.resume else "--run-dir"):
        return Simulation(cfg, log=log)()
