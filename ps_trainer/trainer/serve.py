"""`ps-train serve`: the parameter server alone, in one process, over gRPC.

Not every worker lives inside Ray: a machine outside the cluster, a process in another language,
a classroom demo across laptops. This is the same run as `ps-train` without the Ray actors: the
same `ShardState`s (Nesterov momentum, the staleness policy, Polyak averaging) behind the gRPC
service (`transport/grpc_server.py`, concurrent: a thread per call, the update kernels release
the GIL), the same run directory (pushes.parquet with one row per push the shards recorded,
evals.parquet, checkpoints, summary), and `--resume` from its own or a Ray run's checkpoint.

Workers join with `ps-train worker --ps grpc://HOST:PORT`, each getting an id of its own. The
run ends when `--workers` of them have joined and every one that joined has finished, at
`--max-time`, or on Ctrl-C / SIGTERM; then it checkpoints, evaluates and writes the summary.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter

import numpy as np

from ..config import TrainConfig, grpc_address
from ..core import checkpoint
from ..core.publish import Publisher
from ..core.shard import ShardState
from ..transport.grpc_backend import LocalBackend
from ..transport.grpc_server import serve
from ..transport.inprocess import InProcessClient
from . import lock
from .actors import checkpoint_meta
from .evaluate import Evaluator
from .grpc_options import ServedPushes, model_info, read_token, server_tls
from .metrics import RunDirectory, new_run_dir
from .plan import Plan, shard_options
from .signals import stop_requested
from .summary import summarize

STATUS_EVERY = 10.0  # s between status lines


def serve_run(cfg: TrainConfig, plan: Plan, address: str, log=print,
              stop: list | None = None) -> dict:
    """Serve `plan`'s shards on `address` (PORT or HOST:PORT) until the run ends; the summary."""
    host, port = grpc_address(address, "--port")
    token, tls = read_token(cfg), server_tls(cfg)  # bad files fail here, before the server starts
    if not cfg.run_dir:
        cfg.run_dir = str(new_run_dir("runs", cfg.model))
    with lock.hold(cfg.run_dir, "--resume" if cfg.resume else "--run-dir"):
        return ServedRun(cfg, plan, log).run(host, port, token, tls, stop)


class ServedRun:
    """The shards in this process, their run directory, and the loop that watches them."""

    def __init__(self, cfg: TrainConfig, plan: Plan, log):
        self.cfg, self.plan, self.log = cfg, plan, log
        params, buffers = plan.layout.flatten(plan.model)
        self.shards = [ShardState(s.index, params[slice(*s.params)], buffers[slice(*s.buffers)],
                                  **shard_options(plan)) for s in plan.layout.shards(cfg.ps_shards)]
        self.sequence, keep, self.resumed = -1, None, False  # the first one written is 0
        if cfg.resume:
            states, meta = checkpoint.load(cfg.checkpoint_location(), model=cfg.model,
                                           fingerprint=plan.layout.fingerprint())
            by_index = {sd["index"]: sd for sd in states}
            for s in self.shards:
                s.load_state_dict(by_index[s.index])
            self.sequence, self.resumed = meta["sequence"], True
            keep = {"pushes": {(int(w), sd["index"]): sum(c.values())
                               for sd in states for w, c in sd["worker_counters"].items()},
                    "evals": meta["rows"]["evals"]}
            log(f"resumed from checkpoint {self.sequence}: shard versions "
                f"{[s.version for s in self.shards]}")
        self.directory = RunDirectory(cfg.run_dir, cfg.to_yaml(), keep_rows=keep)
        # What the kept rows say each worker pushed (a resumed run), then every new row.
        kept = Counter()
        for (w, _), n in self.directory.pushes.kept.items() if keep else ():
            kept[w] += n
        self.pushes = ServedPushes(cfg, kept)
        self.backend = LocalBackend(self.shards, [Publisher(cfg.publish_every, cfg.publish_interval)
                                                  for _ in self.shards])
        self.evaluator = Evaluator(plan, InProcessClient(self.shards))
        self.latest = {"raw": float("nan"), "polyak": float("nan")}
        self.server = None
        if not self.resumed:
            self.save_checkpoint()  # checkpoint 0: the initial weights

    # ---- the run ------------------------------------------------------------------------------
    def run(self, host: str, port: int, token, tls, stop: list | None) -> dict:
        cfg = self.cfg
        try:
            server = serve(self.backend, model_info(self.plan), port, host, tls=tls,
                           insecure=cfg.insecure, token=token, on_push=self.pushes.on_push)
        except (OSError, ValueError) as e:  # the port is taken; no TLS off loopback; ...
            raise ValueError(f"--host {host} --port {port}: {e}") from None
        self.server = server
        (self.directory.path / "server.json").write_text(json.dumps(
            {"host": host, "port": server.port, "pid": os.getpid(), "tls": tls is not None}))
        self.log(f"ps-train serve: {cfg.model} in {cfg.ps_shards} shards, policy {cfg.policy}, "
                 f"listening on {host}:{server.port}" + (" with TLS" if tls else "")
                 + (", token required" if token else "") + f"; the run ends when {cfg.workers} "
                 f"workers have joined and finished (or Ctrl-C); run directory {cfg.run_dir}")
        self.t0 = time.time()
        if not self.resumed:
            self.evaluate(final=False)
        next_eval, next_status = time.time() + cfg.eval_every, time.time() + STATUS_EVERY
        next_checkpoint = time.time() + cfg.checkpoint_every if cfg.checkpoint_every else None
        stopped_for_time = False
        try:
            with stop_requested(stop) as signals:
                while not signals:
                    time.sleep(0.2)
                    self.drain()
                    if self.finished():
                        break
                    now = time.time()
                    if cfg.max_time and now - self.t0 >= cfg.max_time:
                        stopped_for_time = True
                        break
                    if now >= next_eval:
                        self.evaluate(final=False)
                        next_eval = time.time() + cfg.eval_every
                    if next_checkpoint and now >= next_checkpoint:
                        self.save_checkpoint()
                        next_checkpoint = time.time() + cfg.checkpoint_every
                    if now >= next_status:
                        self.status()
                        next_status = now + STATUS_EVERY
                interrupted = bool(signals)
        finally:
            server.stop(grace=2.0)
        return self.finish(interrupted, stopped_for_time)

    def registered(self) -> set[int]:
        """Ids of the workers that joined (none before the server starts)."""
        return set(self.server.servicer.registered) if self.server else set()

    def finished(self) -> bool:
        """`--workers` workers have joined, and every worker that joined has finished."""
        joined = self.registered()
        return len(joined) >= self.cfg.workers and all(self.backend.clock(w)[1] for w in joined)

    def drain(self) -> None:
        self.directory.pushes.write(self.pushes.drain())

    def evaluate(self, final: bool) -> list[dict]:
        evals = self.evaluator(sum(s.version for s in self.shards), self.t0, final=final)
        self.directory.evals.write(evals)
        for r in evals:
            self.latest[r["weights"]] = r["top1"]
        return evals

    def status(self) -> None:
        joined = self.registered()
        done = sum(1 for w in joined if self.backend.clock(w)[1])
        self.log(f"serve: {time.time() - self.t0:.0f} s, versions {[s.version for s in self.shards]}, "
                 f"{sum(self.pushes.sent.values())} pushes, workers {len(joined)} joined / "
                 f"{done} finished, top-1 raw {100 * self.latest['raw']:.1f}% polyak "
                 f"{100 * self.latest['polyak']:.1f}%")

    def progress(self) -> dict:
        return self.pushes.progress(self.registered(), self.backend.stats())

    def save_checkpoint(self) -> None:
        """Checkpoint `sequence` + 1, unless a weight is not finite (the last good one stays)."""
        states = [s.state_dict() for s in self.shards]
        if not all(np.isfinite(sd["params"]).all() for sd in states):
            return
        self.drain()  # rows of the pushes in these states are on disk before the checkpoint
        self.directory.flush()
        self.sequence += 1
        meta = checkpoint_meta(self.plan, self.sequence, self.progress(),
                               {"pushes": self.directory.pushes.rows,
                                "evals": self.directory.evals.rows})
        checkpoint.save(self.cfg.checkpoint_location(), states, dict(meta, kind="serve"))

    def finish(self, interrupted: bool, stopped_for_time: bool) -> dict:
        train_time = time.time() - self.t0
        if interrupted:
            self.log(f"\ninterrupted: checkpointing and writing what was done; `ps-train serve "
                     f"--resume {self.cfg.run_dir}` continues")
        self.drain()
        self.save_checkpoint()
        final = self.evaluate(final=True)
        stats = self.backend.stats()
        self.directory.close()
        summary, table = summarize(self.plan, final, stats, self.progress(), self.directory.path,
                                   train_time, interrupted=interrupted,
                                   stopped_for_time=stopped_for_time)
        summary["served"] = {"rejections": self.server.rejections,
                             "workers": sorted(self.registered())}
        if summary["served"]["rejections"]:
            table += "\nrefused by the server: " + ", ".join(
                f"{k} {v}" for k, v in sorted(summary["served"]["rejections"].items()))
        self.directory.write_summary(summary, table)
        self.log(table)
        return summary
