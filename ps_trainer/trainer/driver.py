"""The driver of a real run: it watches the workers until they finish, and on the way evaluates,
checkpoints, brings back shards that Ray restarted, replaces workers that died, and draws progress.

The driver never blocks the workers (Downpour SGD, Dean et al. 2012: replicas run asynchronously,
and when one fails the others go on training through the parameter servers). It only waits on
them with timeouts, drains their metric rows, and evaluates from the snapshots the shards
published. On Ctrl-C or SIGTERM it stops the workers, waits for their pushes and writes what it
has; `run._train` then kills every actor it made.

A run is a sequence of phases, one method each: `start` (evaluate the initial weights, start every
worker), `round` (one pass of the main loop: settle finished workers, `drain`, `recover`, check
for failure and divergence, flush/`evaluate`/`save_checkpoint` when due, `draw`), then `finish`
(stop, last drain, last checkpoint, final evaluation) and `report` (the summary).

Invariants:
- A worker's progress is `base[i]` + `progress[i]`: what earlier sessions (a resumed run) and dead
  incarnations did, counted from what the shards recorded (its steps are those whose pushes
  reached every shard), plus what this incarnation reported.
- Every push the shards recorded for a worker has a row in the pushes table, or is counted in
  `lost_rows` (rows a dead process took with it); the summary checks this.
- A checkpoint is written only whole and good: no shard broken or recovering, recent pushes
  healthy, every weight finite; the metric rows it accounts for are on disk before it exists.
  `sequence` is the number of the last one written (0: the initial weights).
- No version number is issued twice: a restarted shard continues above every version a worker
  saw, and above those that may have been in flight when it died.
- Signals are a flag read between rounds (see `signals.py`): a round is never cut in half.

Ray is imported here at the top: `run._train` imports this module only once Ray is needed.
"""

from __future__ import annotations

import time

import numpy as np
import ray

from ..core import checkpoint
from ..transport.ray_shard import RayClient
from .actors import ZERO, checkpoint_meta, make_worker
from .divergence import DivergenceWatch, Diverged
from .evaluate import Evaluator
from .metrics import RunDirectory
from .plan import Plan
from .progress import ProgressBar
from .signals import stop_requested
from .summary import summarize


FLUSH_EVERY = 60.0  # s between metric flushes (each checkpoint flushes too)


class Driver:
    """One real run from its first evaluation to its summary. `directory` is the run directory;
    `resumed` is the meta of the checkpoint the shards were loaded from (None for a fresh run);
    `stop`: a list of signals the caller noted (non-empty: stop at once)."""

    def __init__(self, plan: Plan, shards: list, workers: list, directory: RunDirectory, log,
                 resources=None, resumed: dict | None = None, stop: list | None = None,
                 evaluator=None, outside=None):
        self.plan, self.cfg, self.shards, self.workers = plan, plan.cfg, shards, workers
        self.directory, self.log, self.resources = directory, log, resources
        self.resumed, self.stop = resumed, stop
        self.t0 = time.time()
        # evaluate(step, t0, final=False) -> rows: here, or in its own actor (`make_evaluator`)
        self.evaluator = evaluator or Evaluator(plan, RayClient(shards))
        self.bar = ProgressBar(plan.steps_per_worker * self.cfg.workers, enabled=self.cfg.progress)
        self.progress = {i: dict(ZERO, worker=i) for i in range(len(workers))}  # this incarnation's
        # What earlier sessions (a resumed run) and dead incarnations did, per worker.
        self.base = {i: dict(ZERO, worker=i) for i in range(len(workers))}
        self.rows_written = {i: 0 for i in self.base}
        # Rows a dead worker's process (or driver) took with it.
        self.lost_rows = {i: 0 for i in self.base}
        if resumed:
            self.resume_from(resumed)
        self.restarts: list[str] = []
        self.sequence = (resumed or {}).get("sequence", 0)
        self.latest = {"raw": float("nan"), "polyak": float("nan")}
        self.staleness: list[int] = []  # of recent pushes, for the progress bar
        self.alive = set(range(len(workers)))
        self.failure, self.stopped_for_time = "", False
        self.watch = DivergenceWatch()
        self.shard_restarts: list[dict] = []
        self.broken = ""  # why a restarted shard could not restore its state
        self.last_evals: list[dict] = []
        self.pending: dict = {}  # the `run` call of each worker still going -> its index
        self.outside = outside  # --serve-grpc: workers outside Ray (grpc_join.GrpcJoin), or None

    def resume_from(self, resumed: dict) -> None:
        """The checkpoint's counts are the truth; rows it has and the table lacks are lost."""
        for i in self.base:
            counts = [resumed["counts"].get((i, s), 0) for s in range(self.cfg.ps_shards)]
            self.count_done(i, counts)
            kept = self.directory.pushes.kept
            self.rows_written[i] = sum(n for (w, _), n in kept.items() if w == i)
            self.lost_rows[i] = self.base[i]["pushes_sent"] - self.rows_written[i]

    def count_done(self, i: int, per_shard: list[int]) -> None:
        """Worker i's earlier work, from the pushes each shard recorded for it: its steps are those
        whose pushes reached every shard (later work died with it, and is redone)."""
        steps = min(per_shard) * self.cfg.push_every
        self.base[i].update(steps=steps, images=steps * self.cfg.batch_size,
                            pushes_sent=sum(per_shard))

    def total(self, i: int) -> dict:
        """Worker i's progress over every session and incarnation."""
        p, b = self.progress[i], self.base[i]
        return {"worker": i, "loss": p["loss"], **{k: b[k] + p[k] for k in ("steps", "images",
                                                                              "pushes_sent")}}

    def run(self) -> dict:
        """Start, go round until every worker is done (or one fails, the run diverges or a signal
        comes), then finish; returns the summary, or raises as `report` says."""
        self.start()
        with stop_requested(self.stop) as stop_signal, self.bar:
            while self.pending and not self.failure and not stop_signal:
                if not self.round():
                    break
        return self.finish(interrupted=bool(stop_signal))

    def start(self) -> None:
        """Evaluate the initial weights (a resumed run has them in its table already), set when to
        flush, evaluate and checkpoint, and start every worker on the steps it has left."""
        cfg = self.cfg
        if not self.resumed:
            self.last_evals = self.evaluator(0, self.t0)
            self.directory.evals.write(self.last_evals)
        self.next_flush = time.time() + FLUSH_EVERY
        self.next_eval = time.time() + cfg.eval_every
        self.next_checkpoint = self.checkpoint_time()
        every = cfg.checkpoint_steps
        done = sum(b["steps"] for b in self.base.values())
        self.next_checkpoint_step = (done // every + 1) * every if every else None
        for i in range(len(self.workers)):
            self.launch(i)

    def launch(self, i: int) -> None:
        """Start worker i on the steps it has left; `round` sees its call return (done or dead)."""
        self.pending[self.workers[i].run.remote(self.plan.steps_per_worker
                                                - self.base[i]["steps"])] = i

    def checkpoint_time(self) -> float:
        """When the next checkpoint by time is due (never, without --checkpoint-every)."""
        every = self.cfg.checkpoint_every
        return time.time() + every if every else float("inf")

    def round(self) -> bool:
        """One pass of the main loop (it waits at most half a second for a worker to finish).
        False: stop at once (a shard is gone for good, or the run diverged), without this round's
        evaluation or checkpoint."""
        cfg = self.cfg
        done, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0.5)
        if done and not self.recover() and self.broken:
            # Workers fail when a shard is gone for good: not theirs to restart.
            self.failure = self.broken
            return False
        for ref in done:
            self.worker_done(ref)
        steps = self.drain()
        self.recover()
        if self.broken:
            self.failure = self.broken
            return False
        if len(self.shard_restarts) > cfg.max_shard_failures:
            self.failure = (f"{len(self.shard_restarts)} shard failures, more than "
                            f"--max-shard-failures")
        if self.watch.diverged():
            self.failure = self.watch.message() + (
                f"; the last good checkpoint ({self.sequence}) is kept" if self.sequence else "")
            return False
        if cfg.max_time and time.time() - self.t0 > cfg.max_time and not self.stopped_for_time:
            self.stopped_for_time = True
            self.stop_all()
        self.when_due(steps)
        self.draw(steps)
        return True

    def worker_done(self, ref) -> None:
        """A worker's `run` call returned: it finished, or its actor died (then it is replaced while
        --max-worker-failures allows, and otherwise the run fails)."""
        i = self.pending.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.RayError as e:
            error = str(e).strip().splitlines()[-1]
            if isinstance(e, ray.exceptions.RayActorError):
                error = error.split(". ")[0]  # Ray appends a page of possible causes
            if isinstance(e, ray.exceptions.RayActorError) and \
                    len(self.restarts) < self.cfg.max_worker_failures:
                self.replace(i, error)
                return
            self.alive.discard(i)
            self.failure = f"worker {i} failed: {error}" + (
                f" (after {len(self.restarts)} restarts, the most --max-worker-failures allows)"
                if self.restarts else "")

    def drain(self) -> int:
        """Take every live worker's new metric rows and progress, write the rows, and return the
        steps of all workers together. A worker that died is skipped: its `run` result says so."""
        refs = [self.workers[i].drain.remote() for i in sorted(self.alive)]
        ray.wait(refs, num_returns=len(refs), timeout=30)
        for ref in refs:
            try:
                rows, prog = ray.get(ref, timeout=0)
            except ray.exceptions.RayError:  # died: its run() result says so, handled there
                continue
            self.directory.pushes.write(rows)
            self.watch.add(rows)
            self.progress[prog["worker"]] = prog
            self.rows_written[prog["worker"]] += len(rows)
            self.staleness.extend(r["staleness"] for r in rows if r["staleness"] >= 0)
        if self.outside is not None:  # pushes of workers outside Ray, as their shards saw them
            rows = self.outside.drain()
            self.directory.pushes.write(rows)
            self.staleness.extend(r["staleness"] for r in rows if r["staleness"] >= 0)
        del self.staleness[:-2000]
        return sum(self.total(i)["steps"] for i in self.progress)

    def stop_all(self) -> None:
        """Stop every live worker after its current step, and release the workers held in a pull."""
        ray.get([self.workers[i].stop.remote() for i in sorted(self.alive)], timeout=30)
        # A worker held in a pull by SSP/BSP must not wait for workers that will never push.
        for s in self.shards:
            try:
                ray.get([s.retire.remote(i) for i in range(len(self.workers))], timeout=30)
            except ray.exceptions.RayActorError:
                pass  # a shard gone for good: nobody waits on it

    def save_checkpoint(self) -> None:
        """Write checkpoint `sequence` + 1 of the shards' states and the workers' progress, unless
        it would not be whole or good (then the last checkpoint stays the latest)."""
        if self.broken:
            return  # a shard lost its state: the last checkpoint is the last whole one
        states = ray.get([s.state_dict.remote() for s in self.shards])
        if any(sd is None for sd in states):
            return  # a shard is recovering: its restored past does not go with the others' present
        if not self.watch.healthy() or not all(np.isfinite(sd["params"]).all() for sd in states):
            return  # keep the last good checkpoint: never overwrite it with a diverged state
        # Rows of pushes the shards recorded before their state was taken are on disk before the
        # checkpoint exists (resume keeps what it accounts for).
        self.drain()
        self.directory.flush()
        self.sequence += 1
        checkpoint.save(self.cfg.checkpoint_location(), states, checkpoint_meta(
            self.plan, self.sequence, {i: self.total(i) for i in self.progress},
            {"pushes": self.directory.pushes.rows, "evals": self.directory.evals.rows}))

    def recover(self) -> bool:
        """A shard that Ray restarted has loaded the latest checkpoint: tell it the version to
        continue from, above any version a worker may have seen, and count what was lost.
        True when every shard is serving."""
        try:
            infos = ray.get([s.recovery.remote() for s in self.shards], timeout=10)
        except ray.exceptions.GetTimeoutError:
            return False  # a shard is still coming back; look again next round
        except ray.exceptions.RayActorError as e:  # died with no restarts left
            self.broken = (f"a parameter-server shard died and --max-shard-failures "
                           f"{self.cfg.max_shard_failures} allows no more restarts "
                           f"({str(e).strip().splitlines()[0].split('. ')[0]})")
            return False
        for i, info in enumerate(infos):
            if info is None:
                continue
            if info["error"]:  # never go on with one shard back at its initial weights
                self.broken = f"{info['error']}; the run stops (the last whole checkpoint is kept)"
                return False
            self.continue_shard(i, info)
        return True

    def continue_shard(self, i: int, info: dict) -> None:
        """Shard i came back from a checkpoint (`info`): continue its versions above every version
        a live worker saw of it, and give it each worker's count of pushes (SSP's clocks)."""
        ids = sorted(self.alive)
        seen = ray.get([self.workers[w].versions_seen.remote() for w in ids], timeout=30)
        top = max([info["restored_version"]] + [v[i] for v, _ in seen])
        # Pushes applied but not yet acknowledged when it died were seen by nobody; there are
        # at most max_inflight + 1 per worker. Start above them too.
        floor = top + self.cfg.workers * (self.cfg.max_inflight + 1) + 1
        clocks = {w: c for w, (_, c) in zip(ids, seen)}
        # Workers that finished after that checkpoint retired on the shard's lost state: again.
        ready = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)[0] \
            if self.pending else []
        running = {self.pending[r] for r in self.pending if r not in ready}
        finished = [w for w in range(self.cfg.workers) if w not in running]
        ray.get(self.shards[i].finish_recovery.remote(floor, clocks, finished))
        self.shard_restarts.append({**info, "top_seen": top, "continued_at": floor,
                                    "updates_lost": top - info["restored_version"]})
        self.log(f"\nshard {i} died and came back from checkpoint {info['checkpoint']} at version "
                 f"{info['restored_version']}; at least {top - info['restored_version']} updates "
                 f"since it are lost; versions continue at {floor}")

    def replace(self, i: int, error: str) -> None:
        """Worker i's actor died: start another on the same partition for the steps it had left."""
        per_shard = [sum(st["worker_counters"].get(i, {}).values())
                     for st in ray.get([s.stats.remote() for s in self.shards])]
        recorded = sum(per_shard)
        # Its steps are those whose pushes reached every shard; later work died with it.
        self.count_done(i, per_shard)
        self.lost_rows[i] += recorded - self.rows_written[i]
        self.rows_written[i] = recorded
        self.progress[i] = dict(ZERO, worker=i)
        self.restarts.append(f"worker {i}: {error}")
        self.log(f"\nworker {i} died ({error}); restarting it on its partition "
                 f"({len(self.restarts)} of at most {self.cfg.max_worker_failures} restarts)")
        # It starts at the pushes every shard recorded for it (a push that reached only some
        # shards is redone); a shard that counted one more adopts that at its first pull.
        self.workers[i] = make_worker(self.plan, self.shards, self.resources, i, crash=False,
                                      clock=min(per_shard))
        self.launch(i)

    def when_due(self, steps: int) -> None:
        """Flush the metrics, evaluate and checkpoint, each when its time (or step) has come."""
        cfg = self.cfg
        if time.time() >= self.next_flush:  # metrics readable even if the driver is killed
            self.directory.flush()
            self.next_flush = time.time() + FLUSH_EVERY
        if self.pending and time.time() >= self.next_eval:
            self.evaluate(steps)
        if self.pending and (time.time() >= self.next_checkpoint
                             or self.next_checkpoint_step and steps >= self.next_checkpoint_step):
            self.save_checkpoint()
            self.next_checkpoint = self.checkpoint_time()
            every = cfg.checkpoint_steps
            self.next_checkpoint_step = self.next_checkpoint_step and (steps // every + 1) * every

    def evaluate(self, steps: int) -> None:
        """Evaluate the raw and Polyak weights the shards published, while the workers go on."""
        e0 = time.time()
        self.last_evals = self.evaluator(steps, self.t0)
        for r in self.last_evals:
            self.latest[r["weights"]] = r["top1"]
            self.directory.evals.write([r])
        # Evaluation shares the CPU with the workers: never let it take over 20% of it.
        self.next_eval = time.time() + max(self.cfg.eval_every, 4 * (time.time() - e0))

    def draw(self, steps: int) -> None:
        """Redraw the progress bar: rates, mean loss, staleness, the last accuracies."""
        elapsed = max(1e-9, time.time() - self.t0)
        self.bar.update(steps, **{
            "steps/s": f"{steps / elapsed:.1f}",
            "img/s": f"{sum(p['images'] for p in self.progress.values()) / elapsed:.0f}",
            "loss": _mean_loss(self.progress),
            "stale": f"{np.mean(self.staleness):.1f}" if self.staleness else "-",
            "acc raw/polyak": f"{100 * self.latest['raw']:.1f}/{100 * self.latest['polyak']:.1f}%"})

    def finish(self, interrupted: bool) -> dict:
        """Stop what still runs, take the last rows, wait for a shard that died at the very end,
        write the last checkpoint and evaluate the final weights; then `report`."""
        if interrupted:
            self.log("\ninterrupted: stopping workers, checkpointing and writing what was done; "
                     f"`ps-train --resume {self.directory.path}` continues")
        if self.failure:
            self.log(f"error: {self.failure}; stopping the other workers")
        if interrupted or self.failure:
            self.stop_all()
            ray.wait(list(self.pending), num_returns=len(self.pending), timeout=60)
        train_time = time.time() - self.t0
        if self.outside is not None:
            self.outside.stop()  # no pushes from outside after the last drain
        steps = self.drain()
        deadline = time.time() + 60
        while not self.broken and not self.recover() and time.time() < deadline:
            time.sleep(0.5)  # a shard that died at the very end: let it come back first
        self.save_checkpoint()  # every push is in: a resumed run continues from exactly here
        # The weights are not whole: report the last evaluation of them.
        if self.broken and self.last_evals:
            final = self.last_evals
        else:
            final = self.evaluator(steps, self.t0, final=True)
            self.directory.evals.write(final)
        return self.report(final, train_time, interrupted)

    def report(self, final: list[dict], train_time: float, interrupted: bool) -> dict:
        """Write and print the summary; return it, or raise `Diverged` or RuntimeError (saying
        where the metrics are) if the run failed."""
        shard_stats = self.shard_stats()
        self.directory.close()
        progress = {i: self.total(i) for i in self.progress}
        if self.outside is not None:
            progress.update(self.outside.progress(shard_stats))
        summary, table = summarize(self.plan, final, shard_stats, progress, self.directory.path,
                                   train_time, interrupted=interrupted,
                                   stopped_for_time=self.stopped_for_time, lost_rows=self.lost_rows,
                                   shard_restarts=self.shard_restarts)
        summary["worker_restarts"] = self.restarts
        summary["shard_restarts"] = self.shard_restarts
        if self.shard_restarts:
            table += "\nshard restarts: " + "; ".join(
                f"shard {r['shard']} from checkpoint {r['checkpoint']} (version "
                f"{r['restored_version']}, {r['updates_lost']} updates lost, continued at "
                f"{r['continued_at']})"
                for r in self.shard_restarts)
        if self.restarts:
            table += f"\nworker restarts: {len(self.restarts)} (" + "; ".join(self.restarts) + ")"
        self.directory.write_summary(summary, table)
        self.log(table)
        if self.failure and self.watch.diverged():
            summary["diverged"] = self.failure
            self.directory.write_summary(summary, table)
            raise Diverged(f"{self.failure} (metrics are in {self.directory.path})", summary)
        if self.failure:
            raise RuntimeError(f"{self.failure} (metrics so far are in {self.directory.path})")
        return summary

    def shard_stats(self) -> list[dict]:
        """Each shard's counters; a shard gone for good recorded nothing that is left."""
        stats = []
        for i, s in enumerate(self.shards):
            try:
                stats.append(ray.get(s.stats.remote()))
            except ray.exceptions.RayActorError:  # gone for good: what it recorded is lost with it
                stats.append({"shard": i, "version": -1, "counters": {}, "worker_counters": {}})
        return stats


def _mean_loss(progress: dict) -> str:
    losses = [p["loss"] for p in progress.values() if np.isfinite(p["loss"])]
    return f"{np.mean(losses):.3f}" if losses else "-"
