"""The synchronous baseline (issue 15, item 4): PyTorch DistributedDataParallel against ps-train's
`sync` and `async` policies, in wall time and in steps to a fixed held-out accuracy.

DDP (`ddp_baseline.py`, gloo, Li et al. 2020) runs one process per ps-train worker, one torch
thread each, on the same model, initial weights, data partitions, batch order, batch size, lr,
Nesterov momentum, weight decay and epochs, and is evaluated on the same held-out split.
ps-train runs through its real CLI in a subprocess: `--policy sync` (BSP, Chen et al. 2016: one
update on the mean of one gradient per worker, DDP's rule) and `--policy async` (Downpour, Dean
et al. 2012: every push applied as it arrives, so K times the updates of one gradient each).

Every run reports its start-up (launch to the first step: Python, torch, for ps-train also
`ray.init` and the actors) apart from its training time (first step to last step: DDP's without
the pauses of its evaluations, ps-train's with its driver's evaluations running beside the
workers; never the final evaluation), worker steps (all workers together) and updates, the time
and worker steps to a fixed held-out top-1, the final top-1, and where the CPU went. Scenarios:

- even: K equally fast workers, on digits (8x8, the default data set); also async with
  ps-train's default 2 shards and its default evaluation cadence (3 s), to show what each costs;
- straggler: the last worker takes --straggler-slowdown times its computation per step; DDP's last
  rank sleeps exactly as a ps-train worker does (`worker_delays`, worker/delays.py);
- kill: half-way through its training, the last worker's process (DDP: rank K-1; ps-train: the
  newest `ray::WorkerActor`) gets SIGKILL from outside, by pid;
- cifar: resnet20 (He et al. 2015) on synthetic CIFAR-size data written here: 32x32x3 images of
  10 classes, each a smooth random prototype, shifted, blended with another class and noised.

Rounds alternate the systems (DDP, sync, async); the tables give medians over rounds.

    python benchmarks/bench_ddp.py [--workers 2] [--epochs 25] [--rounds 3] [--smoke] [--no-write]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

from ps_trainer.trainer.metrics import read_table  # noqa: E402

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
       "OMP_NUM_THREADS": "1"}
RUN_TIMEOUT = 900  # s: a run that takes longer than this is stuck
AFTER_KILL = 90  # s: how long a DDP rank may go on after its peer is killed (gloo's own: 60)
OBSERVE = 0.1  # s between an Observer's reads of a ps-train run's weights


@dataclass
class Run:
    """One training run, as the tables show it. Times in s, accuracies as fractions."""

    system: str
    startup: float = math.nan  # launch -> first step
    training: float = math.nan  # first step -> last step
    worker_steps: int = 0  # all workers together: images / batch size
    updates: int = 0  # optimizer steps (DDP) or shard versions (ps-train)
    to_target: float = math.nan  # first step -> the first evaluation at >= the target
    steps_to_target: float = math.nan  # worker steps at that evaluation
    polyak_to_target: float = math.nan  # the same for ps-train's Polyak-averaged weights
    final: float = math.nan  # raw weights, top-1
    polyak: float = math.nan  # ps-train's Polyak-averaged weights
    compute: float = math.nan  # ms: median forward/backward of a step (DDP: with its all-reduce)
    outcome: str = "finished"
    cpu: dict = field(default_factory=dict)  # role -> CPU s during training
    notes: dict = field(default_factory=dict)


OTHER = "Ray's own (raylet, GCS, agents)"


class CpuSampler:
    """CPU seconds (user + system) of process trees over time, by role, sampled in a thread: so
    that the CPU spent between two moments (training's first and last step) can be read off."""

    ROLES = (("ray::WorkerActor", "ps-train workers"), ("ray::ParameterServerShard", "shards"),
             ("ddp_baseline.py", "DDP ranks"), ("ps_trainer.cli", "driver"),
             ("reaper.py", "driver"))

    def __init__(self, roots: list[int], every: float = 0.2):  # s between samples
        self.roots, self.every = roots, every
        self.samples: dict[int, tuple[str, list]] = {}  # pid -> (role, [(t, cpu s)])
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.done.is_set():
            procs = []
            for pid in self.roots:
                try:
                    root = psutil.Process(pid)
                    procs += [root] + root.children(recursive=True)
                except psutil.Error:
                    pass
            for p in procs:
                try:
                    role, series = self.samples.get(p.pid, (OTHER, []))
                    if role == OTHER:  # an idle Ray worker may become an actor: look again
                        title = " ".join(p.cmdline())
                        role = next((r for key, r in self.ROLES if key in title), OTHER)
                        self.samples[p.pid] = (role, series)
                    t = p.cpu_times()
                    self.samples[p.pid][1].append((time.time(), t.user + t.system))
                except psutil.Error:
                    pass
            self.done.wait(self.every)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

    def between(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds each role used from t0 to t1 (interpolated between samples)."""
        out: dict[str, float] = {}
        for role, series in self.samples.values():
            if series:
                ts, cs = zip(*series)
                used = float(np.interp(t1, ts, cs) - np.interp(t0, ts, cs))
                out[role] = out.get(role, 0.0) + used
        return out


# ---- DDP -----------------------------------------------------------------------------------------
def run_ddp(settings: dict, out: Path, eval_steps: int, target: float,
            kill_after: float | None = None) -> Run:
    """DDP as K processes (as torchrun starts them); with `kill_after`, rank K-1 gets SIGKILL
    that many s after training starts."""
    out.mkdir(parents=True)
    (out / "spec.json").write_text(json.dumps({"settings": settings, "eval_steps": eval_steps}))
    k = settings["workers"]
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(out / "log.txt", "w")
    t_launch = time.time()
    ranks = [subprocess.Popen([sys.executable, str(HERE / "ddp_baseline.py"), str(r), str(k),
                               str(port), str(out / "spec.json"), str(out)], env=ENV, stdout=log,
                              stderr=subprocess.STDOUT) for r in range(k)]
    cpu = CpuSampler([p.pid for p in ranks])
    t_kill = None
    try:
        if kill_after is not None:
            _wait_for(lambda: (out / f"ready{k - 1}").exists(), ranks[0], "DDP to start")
            time.sleep(kill_after)
            t_kill = time.time()
            os.kill(ranks[-1].pid, signal.SIGKILL)
        deadline = time.time() + (AFTER_KILL if t_kill else RUN_TIMEOUT)
        while any(p.poll() is None for p in ranks) and time.time() < deadline:
            time.sleep(0.05)
    finally:
        cpu.stop()
        hung = [p for p in ranks if p.poll() is None]
        for p in hung:
            p.kill()
            p.wait()
        log.close()
    run = Run("DDP (gloo)")
    if t_kill:
        return _after_kill(run, out, t_kill, kill_after, bool(hung))
    if hung:
        raise RuntimeError(f"DDP did not finish in {RUN_TIMEOUT} s: {_tail(out / 'log.txt')}")
    r0 = json.loads((out / "rank0.json").read_text())
    if r0["error"]:
        raise RuntimeError(f"DDP failed: {r0['error']}")
    # Every rank stands still while rank 0 evaluates: those pauses are not training time (this
    # flatters DDP, whose evaluations stop it, against ps-train, whose evaluations run beside
    # its workers).
    pauses = np.cumsum([e["seconds"] for e in r0["evals"]])
    run.notes["eval_seconds"] = float(pauses[-2]) if len(pauses) > 1 else 0.0
    run.startup = r0["ready"] - t_launch
    run.training = r0["end"] - r0["ready"] - run.notes["eval_seconds"]
    run.worker_steps, run.updates = r0["steps"] * k, r0["steps"]
    run.compute = 1000 * r0["compute"] / r0["steps"]
    hit = next((i for i, e in enumerate(r0["evals"]) if e["top1"] >= target), None)
    if hit is not None:
        e = r0["evals"][hit]
        run.to_target = min(e["time"] - r0["ready"] - pauses[hit], run.training)
        run.steps_to_target = e["step"] * k
    run.final = r0["evals"][-1]["top1"]
    run.cpu = cpu.between(r0["ready"], r0["end"])
    run.cpu["DDP ranks"] -= sum(e["cpu"] for e in r0["evals"])  # rank 0's evaluations: paused
    last = json.loads((out / f"rank{k - 1}.json").read_text())
    run.notes["last_compute"] = 1000 * (last["straggler_compute"]
                                        or last["compute"] / last["steps"])  # ms
    return run


def _after_kill(run: Run, out: Path, t_kill: float, kill_after: float, hung: bool) -> Run:
    """What the surviving rank 0 did once its peer was killed: raised (and when), or hung."""
    run.notes["killed_at"] = kill_after
    path = out / "rank0.json"
    if hung or not path.exists():
        run.outcome = f"failed: rank 0 hung (stopped by us after {AFTER_KILL} s)"
        return run
    r0 = json.loads(path.read_text())
    if not r0["error"]:
        run.outcome = "finished before the kill"
        return run
    error = r0["error"].split(". ")[0].replace("/__w/pytorch/pytorch/third_party/", "")
    run.outcome = (f"failed: rank 0 raised {r0['end'] - t_kill:.2f} s after the kill "
                   f"(`{error}`); the job ends without a model, at step {r0['steps']} of "
                   f"{r0['of']}")
    return run


# ---- ps-train ------------------------------------------------------------------------------------
class Observer(threading.Thread):
    """An outside reader of a ps-train run's weights. It joins the run over `--serve-grpc`, as an
    outside worker would, and every `every` s pulls the raw and the Polyak-averaged weights and
    keeps a copy of each with the time its pull returned (so the weights existed by then).

    They are evaluated after the run (`first_hits`), by ps-train's own `Evaluator`, so a time to
    a target is as fine as `every`, and these evaluations take no CPU from training (as DDP's
    evaluation pauses are left out of its times). The driver's own evaluations, beside the
    workers at its --eval-every cadence, are only as fine as that cadence, and come later still
    when an evaluation takes long (its next one waits 4x as long as it took)."""

    def __init__(self, run_dir: Path, proc: subprocess.Popen, every: float):
        super().__init__(daemon=True)
        self.run_dir, self.proc, self.every = run_dir, proc, every
        self.reads: list[tuple[float, bool, list]] = []  # (time, averaged, [(array, version)])
        self.done = threading.Event()
        self.error: str | None = None
        self.start()

    def run(self) -> None:
        from ps_trainer.transport.grpc_client import GrpcClient

        server, port = self.run_dir / "server.json", None
        while port is None:  # the driver writes it once its gRPC server listens
            try:
                port = json.loads(server.read_text())["port"]
            except (OSError, ValueError, KeyError):  # not there yet, or half written
                if self.done.wait(0.05) or self.proc.poll() is not None:
                    return
        try:
            with GrpcClient(f"127.0.0.1:{port}") as client:
                while not self.done.is_set():
                    for averaged in (False, True):
                        snaps = client.pull(averaged=averaged)  # its buffers are reused: copy
                        self.reads.append((time.time(), averaged,
                                           [(a.copy(), v) for a, v in snaps]))
                    self.done.wait(self.every)
        except Exception as e:  # noqa: BLE001 - the run ended under it: keep what was read
            self.error = f"{type(e).__name__}: {e}"

    def stop(self) -> None:
        self.done.set()
        self.join()


def first_hits(reads: list, settings: dict, target: float) -> tuple[float, float]:
    """The times of the first of `reads` (an Observer's, a raw and a Polyak-averaged read in
    turn) whose held-out top-1 reaches `target`: (raw, averaged), NaN where none does. Evaluated
    as the run's driver evaluates (`Evaluator`: the pushed BatchNorm statistics for raw weights,
    re-estimated for averaged ones), both weight sets of a pair in one call."""
    from ps_trainer.config import TrainConfig
    from ps_trainer.trainer.evaluate import Evaluator
    from ps_trainer.trainer.plan import prepare

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    plan = prepare(TrainConfig(**{k: v for k, v in settings.items() if k in names}).validate())

    class Replay:  # a PS client serving one recorded read of each weight set
        snaps: dict = {}

        def pull(self, averaged: bool = False, worker=None, clock: int = 0) -> list:
            return self.snaps[averaged]

    replay = Replay()
    evaluator = Evaluator(plan, replay)
    hits = [math.nan, math.nan]  # raw, averaged
    for (t_raw, _, raw), (t_avg, _, avg) in zip(reads[0::2], reads[1::2]):
        replay.snaps = {False: raw, True: avg}
        for k, (row, t) in enumerate(zip(evaluator(0, 0.0), (t_raw, t_avg))):
            if hits[k] != hits[k] and row["top1"] >= target:
                hits[k] = t
        if hits[0] == hits[0] and hits[1] == hits[1]:
            break
    return hits[0], hits[1]


def run_ps(settings: dict, policy: str, out: Path, eval_every: float, target: float,
           kill_after: float | None = None, observe: float | None = None) -> Run:
    """`ps-train` (the CLI's own entry point) in a subprocess; with `observe`, its weights read
    every `observe` s by an `Observer` for the times to the target (else those come from the
    driver's own evaluations); with `kill_after`, the newest worker actor's process gets SIGKILL
    that many s after training starts."""
    out.mkdir(parents=True)
    run_dir = out / "run"
    settings = dict(settings)
    eval_every = settings.pop("eval_every", eval_every)  # a system's own cadence
    args = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    args += [f"--policy={policy}", f"--eval-every={eval_every}", "--no-progress",
             f"--run-dir={run_dir}"] + (["--serve-grpc=0"] if observe else [])  # 0: a free port
    log = open(out / "log.txt", "w")
    t_launch = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "ps_trainer.cli", *args], env=ENV, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    cpu = CpuSampler([proc.pid])
    observer = Observer(run_dir, proc, observe) if observe else None
    victim = None
    try:
        if kill_after is not None:
            # The driver's first drain writes the first rows of pushes into the table's open part
            # (metrics.ParquetLog): training has begun, within its half-second rounds.
            _wait_for(lambda: any((run_dir / "pushes.parquet").glob("*part-*")), proc,
                      "ps-train's first pushes")
            time.sleep(kill_after)
            workers = _ps_workers(proc)  # none: its workers are done (and were ended by it)
            if workers:
                victim = max(workers, key=lambda p: p.create_time())
                victim.kill()  # SIGKILL, by pid
                t_kill = time.time()
        rc = proc.wait(RUN_TIMEOUT)
    finally:
        cpu.stop()
        if observer:
            observer.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    if rc != 0:
        raise RuntimeError(f"ps-train --policy {policy} exited {rc}: {_tail(out / 'log.txt')}")
    summary = json.loads((run_dir / "summary.json").read_text())
    # numpy only (pandas is not a dependency): a push row per shard, so one step per (worker, time)
    pushes = {k: np.asarray(v) for k, v in read_table(
        run_dir / "pushes.parquet", columns=["worker", "time", "compute", "delay"]).to_pydict().items()}
    evals = {k: np.asarray(v) for k, v in read_table(
        run_dir / "evals.parquet", columns=["weights", "time", "top1"]).to_pydict().items()}
    _, keep = np.unique(np.column_stack([pushes["worker"].astype(float), pushes["time"]]), axis=0,
                        return_index=True)
    keep.sort()  # first row of each step, in table order
    worker, time_, compute = pushes["worker"][keep], pushes["time"][keep], pushes["compute"][keep]
    start = time_ - compute - pushes["delay"][keep]  # each step's start
    first = float(start.min())  # the first step's start
    last_push = float(pushes["time"].max())
    run = Run(f"ps-train {policy}")
    run.startup, run.training = first - t_launch, last_push - first
    run.worker_steps, run.updates = summary["steps"], max(summary["versions"])
    run.compute = 1000 * float(np.median(compute))
    run.final, run.polyak = summary["raw"]["top1"], summary["polyak"]["top1"]
    raw = (evals["weights"] == "raw") & (evals["time"] >= first)
    if observer:
        if not observer.reads:
            raise RuntimeError(f"the observer of ps-train --policy {policy} read nothing: "
                               f"{observer.error or 'no server.json'}")
        t, t_avg = first_hits(observer.reads, settings, target)
        run.notes["observed"] = len(observer.reads) / 2  # reads of each weight set
    else:  # the driver's evaluations, each stamped with the time its weights were read
        hit = np.flatnonzero(raw & (evals["top1"] >= target))
        t = float(evals["time"][hit[0]]) if hit.size else math.nan
        hit = np.flatnonzero((evals["weights"] == "polyak") & (evals["time"] >= first)
                             & (evals["top1"] >= target))
        t_avg = float(evals["time"][hit[0]]) if hit.size else math.nan
    if t == t:  # the steps pushed by the time those weights were read
        run.to_target, run.steps_to_target = t - first, int((time_ <= t).sum())
    run.polyak_to_target = t_avg - first
    starts = [start[worker == w].min() for w in np.unique(worker)]
    run.notes["start_skew"] = float(max(starts) - min(starts))  # s: the last worker's late start
    run.notes["evaluations"] = int(raw.sum())
    run.notes["staleness"] = summary["mean_staleness"]
    last = worker == settings["workers"] - 1
    run.notes["last_compute"] = 1000 * float(np.median(compute[last]))  # ms: the straggler's, if any
    run.cpu = cpu.between(first, last_push)
    if kill_after is not None:
        run.outcome = "finished before the kill"
        if victim is not None:
            run.notes["killed_at"] = t_kill - first
            restarts = summary["worker_restarts"]
            run.outcome = (f"went on: worker {summary_worker(restarts)} restarted on its "
                           f"partition, every push accounted for: "
                           f"{'yes' if summary['accounted'] else 'NO'}")
    return run


def _ps_workers(proc: subprocess.Popen) -> list[psutil.Process]:
    """ps-train's worker actor processes (their title is `ray::WorkerActor...`)."""
    found = []
    for p in psutil.Process(proc.pid).children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith("ray::WorkerActor"):
                found.append(p)
        except psutil.Error:
            pass
    return found


def summary_worker(restarts: list[str]) -> str:
    """Which worker the driver restarted, from the summary's 'worker I: why' lines."""
    return ", ".join(r.split(":")[0].removeprefix("worker ") for r in restarts) or "none"


def _wait_for(ready, proc: subprocess.Popen, what: str, timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _tail(path: Path, n: int = 1500) -> str:
    return path.read_text()[-n:] if path.exists() else "(no log)"


# ---- data ----------------------------------------------------------------------------------------
def synthetic_cifar(path: Path, n_train: int, n_test: int, seed: int = 0, noise: float = 1.5,
                    mix: float = 0.45) -> None:
    """CIFAR-size data a network can learn but not at once: each of 10 classes is a smooth random
    colour pattern (4x4 noise, upsampled); an image is its class's pattern blended with up to
    `mix` of another class's, shifted by up to 4 px, plus Gaussian noise of std `noise`."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    protos = F.interpolate(torch.from_numpy(rng.standard_normal((10, 3, 4, 4), dtype=np.float32)),
                           size=32, mode="bilinear", align_corners=False).numpy()  # (10, 3, 32, 32)
    n = n_train + n_test
    y = rng.integers(0, 10, n)
    other = (y + rng.integers(1, 10, n)) % 10
    a = rng.uniform(0, mix, n)[:, None, None, None]
    x = (1 - a) * protos[y] + a * protos[other]  # (N, 3, 32, 32)
    shifts = rng.integers(-4, 5, (n, 2))
    x = np.stack([np.roll(xi, tuple(s), axis=(1, 2)) for xi, s in zip(x, shifts)])
    x = x + noise * rng.standard_normal(x.shape)
    x = ((x - x.mean()) / x.std()).astype(np.float32)
    np.savez(path, x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])


# ---- scenarios -----------------------------------------------------------------------------------
LOADS: list[float] = []  # the 1-minute load average as each run starts
SYSTEMS = [("DDP (gloo)", "ddp", {}), ("ps-train sync", "sync", {}),
           ("ps-train async", "async", {})]  # (label, "ddp" or --policy, settings over the run's)


def scenario(name: str, settings: dict, systems: list, tmp: Path, *, eval_steps: int,
             eval_every: float, target: float, rounds: int,
             kill_after: dict | None = None, observe: float | None = None) -> list[list[Run]]:
    """`rounds` x every system (label, "ddp" or a policy, settings over `settings`), in turn;
    returns [system][round]."""
    runs: list[list[Run]] = [[] for _ in systems]
    for r in range(rounds):
        for i, (label, policy, extra) in enumerate(systems):
            LOADS.append(os.getloadavg()[0])
            out = tmp / f"{name}-{i}-{r}"
            kill = kill_after[label] if kill_after else None
            run = (run_ddp(dict(settings, **extra), out, eval_steps, target, kill)
                   if policy == "ddp" else
                   run_ps(dict(settings, **extra), policy, out, eval_every, target, kill,
                          observe))
            run.system = label
            runs[i].append(run)
            print(f"  {name} round {r + 1}: {label}: start-up {run.startup:.1f} s, training "
                  f"{run.training:.1f} s, {run.worker_steps} worker steps, top-1 "
                  f"{_pct(run.final)}; {run.outcome}", flush=True)
    return runs


def median_run(runs: list[Run]) -> Run:
    """The medians of the rounds' numbers and notes (the outcome of the first)."""
    m = Run(runs[0].system, outcome=runs[0].outcome,
            notes={k: statistics.median(r.notes[k] for r in runs) for k in runs[0].notes})
    for f in ("startup", "training", "worker_steps", "updates", "to_target", "steps_to_target",
              "polyak_to_target", "final", "polyak", "compute"):
        values = [getattr(r, f) for r in runs]
        ok = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
        setattr(m, f, statistics.median(ok) if len(ok) == len(values) else math.nan)
    return m


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def _s(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1f}"


def table(title: str, runs: list[list[Run]], target: float) -> list[str]:
    meds = [median_run(r) for r in runs]
    ddp = meds[0].training
    t = f"{100 * target:g}%"
    lines = [f"**{title}**", "",
             f"| system | start-up, s | training, s | x DDP | worker steps | updates | s to {t} "
             f"| worker steps to {t} | final top-1 | Polyak: s to {t} | Polyak: final top-1 "
             f"| compute, ms/step |",
             "| --- |" + " ---: |" * 11]
    for m in meds:
        lines.append(f"| {m.system} | {_s(m.startup)} | {_s(m.training)} | {m.training / ddp:.2f} "
                     f"| {m.worker_steps:.0f} | {m.updates:.0f} | {_s(m.to_target)} | "
                     f"{'-' if math.isnan(m.steps_to_target) else f'{m.steps_to_target:.0f}'} | "
                     f"{_pct(m.final)} | {_s(m.polyak_to_target)} | {_pct(m.polyak)} | "
                     f"{m.compute:.1f} |")
    return lines


def cpu_table(runs: list[list[Run]]) -> list[str]:
    """Where the CPU goes during training: ms per worker step of each role (medians)."""
    roles = ["DDP ranks", "ps-train workers", "shards", "driver", OTHER]
    lines = ["| system | " + " | ".join(roles) + " | total | cores busy |",
             "| --- |" + " ---: |" * (len(roles) + 2)]
    for rounds in runs:
        ms = {r: statistics.median(1000 * x.cpu.get(r, 0.0) / x.worker_steps for x in rounds)
              for r in roles}
        total = statistics.median(sum(x.cpu.values()) for x in rounds)
        busy = statistics.median(sum(x.cpu.values()) / x.training for x in rounds)
        steps = statistics.median(x.worker_steps for x in rounds)
        lines.append(f"| {rounds[0].system} | " + " | ".join(
            f"{ms[r]:.1f}" if ms[r] else "-" for r in roles)
            + f" | {1000 * total / steps:.1f} | {busy:.2f} |")
    return lines


def kill_table(runs: list[list[Run]]) -> list[str]:
    lines = ["| system | killed after, s of training | what happened | training, s | final top-1 "
             "(raw) |", "| --- | ---: | --- | ---: | ---: |"]
    for (r,) in runs:
        lines.append(f"| {r.system} | {r.notes.get('killed_at', math.nan):.1f} | {r.outcome} | "
                     f"{_s(r.training) if r.outcome.startswith('went on') else '-'} | "
                     f"{_pct(r.final)} |")
    return lines


def even_digits(a, digits: dict, tmp: Path, per_epoch: int) -> tuple[list[str], list[Run]]:
    """Scenario `even` (with the extra shard count to compare), its table, the target and where
    the CPU goes; returns the lines and the medians (the kill scenario aims at half-time)."""
    k = a.workers
    systems = SYSTEMS + ([(f"ps-train async, {a.compare_shards} shards", "async",
                           {"ps_shards": a.compare_shards}),
                          ("ps-train async, --eval-every 3", "async", {"eval_every": 3.0})]
                         if a.compare_shards else [])
    even = scenario("even", digits, systems, tmp, eval_steps=per_epoch, eval_every=1.0,
                    target=a.target, rounds=a.rounds)
    meds = [median_run(r) for r in even]
    ddp, sync, asyn = meds[:3]
    ratios = {m.system: m.training / ddp.training for m in meds[1:]}
    best = min(sync.training, asyn.training) / ddp.training
    cpu = {m.system: {r: statistics.median(x.cpu.get(r, 0.0) * 1000 / x.worker_steps for x in rs)
                      for r in ("ps-train workers", "shards", "driver", "DDP ranks")}
           for m, rs in zip(meds, even)}
    step = lambda m: 1000 * m.training / (m.worker_steps / k)  # noqa: E731 - wall ms a step
    lines = table(f"digits_cnn on digits, {a.epochs:g} epochs, {k} even workers", even, a.target)
    verdict = lambda r: "met" if r <= 1.2 else "not met"  # noqa: E731
    lines += ["", "Target: ps-train within 1.2x of DDP's training time on digits: "
              + ", ".join(f"{label} {r:.2f}x" for label, r in ratios.items())
              + f". With {a.ps_shards} shard(s) and an evaluation every second: "
                f"**{verdict(best)}** (best {best:.2f}x)"
              + (f"; at ps-train's default evaluation cadence (every 3 s): "
                 f"**{verdict(meds[4].training / ddp.training)}** "
                 f"({meds[4].training / ddp.training:.2f}x)" if a.compare_shards else "")
              + ".", "",
              "Where the CPU goes during training (first step to last): CPU ms (user + system) "
              "per worker step of each kind of process, and how many of the cores the run kept "
              "busy:", ""] + cpu_table(even) + [""]
    c = cpu[asyn.system]
    lines += [
        f"Reading it: a DDP rank's step is {step(ddp):.1f} ms of wall time, of which "
        f"{ddp.compute:.1f} ms forward/backward with the all-reduce (one gloo call inside the "
        f"backward) and {cpu[ddp.system]['DDP ranks']:.1f} ms of CPU. An async ps-train worker's "
        f"step is {step(asyn):.1f} ms ({asyn.compute:.1f} ms forward/backward) and costs "
        f"{c['ps-train workers'] + c['shards'] + c['driver']:.1f} ms of CPU: its own process "
        f"{c['ps-train workers']:.1f} ms (the forward/backward, its push as one Ray actor call "
        f"answered with the next weights, `--exchange`, its comm threads), the shard "
        f"{c['shards']:.1f} ms (that call: the update, the snapshot and the reply), the driver {c['driver']:.1f} ms (evaluations, one a "
        f"second, and the drains). DDP keeps its ranks in lock-step and its cores partly idle; "
        f"ps-train fills them, with more CPU a step. With sync (no exchange: its pulls wait), "
        f"each pull waits for the other worker's push and the update, a pull and a push per "
        f"step that nothing hides."]
    if a.compare_shards:
        more, rare = meds[3:5]
        lines += ["", f"With {a.compare_shards} shards (ps-train's default) every step makes "
                      f"{a.compare_shards} round trips, one to each shard: "
                      f"{more.training:.1f} s against {asyn.training:.1f} s with "
                      f"{a.ps_shards}, shards' CPU {cpu[more.system]['shards']:.1f} against "
                      f"{c['shards']:.1f} ms a step. digits_cnn has 57K parameters (226 KB): "
                      f"a second shard spreads nothing worth a second round trip. Evaluating "
                      f"every 3 s (ps-train's default) instead of every second: "
                      f"{rare.training:.1f} s, the driver's CPU "
                      f"{cpu[rare.system]['driver']:.1f} against {c['driver']:.1f} ms a step. "
                      f"DDP's evaluation pauses took {ddp.notes['eval_seconds']:.2f} s; with them "
                      f"its training time is {ddp.training + ddp.notes['eval_seconds']:.1f} s."]
    lines += ["", f"Start-up (launch to the first step): DDP {ddp.startup:.1f} s (two Python "
                  f"processes import torch and meet at the gloo rendezvous); ps-train "
                  f"{asyn.startup:.1f} s (the driver's imports and checks, `ray.init`: GCS, "
                  f"raylet and agents, then the shard and worker actors, each a process that "
                  f"imports torch). Its workers started {asyn.notes['start_skew']:.2f} s apart "
                  f"(the first one's early steps count as training).", ""]
    return lines, meds


def fine_steps(per_epoch: int) -> int:
    """DDP's evaluation interval in steps for a time to the target: a fifth of an epoch (4 steps
    of 2 x 32 digits: 45 ms even, 90 ms with a 3x straggler), at least as fine as the Observer's
    0.1 s reads of ps-train's weights, so the comparison never favours ps-train."""
    return max(1, round(per_epoch / 5))


def straggler_digits(a, digits: dict, tmp: Path) -> list[str]:
    """Scenario `straggler`: the time to the target is the point here."""
    k, slow = a.workers, a.straggler_slowdown
    fine = fine_steps(max(1, round(1438 / (a.batch_size * k))))
    runs = scenario("straggler", dict(digits, stragglers=1, straggler_slowdown=slow), SYSTEMS,
                    tmp, eval_steps=fine, eval_every=1.0, target=a.target, rounds=a.rounds,
                    observe=OBSERVE)
    ddp, sync, asyn = (median_run(r) for r in runs)
    t = f"{100 * a.target:g}%"
    period = lambda m: 1000 * m.training / (m.worker_steps / k)  # noqa: E731 - ms a step
    ahead = lambda x: "ahead of" if x < ddp.to_target else "behind"  # noqa: E731
    return table(f"The same, worker {k - 1} {slow:g}x slower (`--stragglers 1 "
                 f"--straggler-slowdown {slow:g}`; DDP's rank {k - 1} sleeps the same); DDP "
                 f"evaluates every {fine} steps, ps-train's weights are read every {OBSERVE:g} s", runs,
                 a.target) + [
        "", "The straggler's step, in ms: " + "; ".join(
            f"{m.system} {period(m):.1f} = {slow:g} x {m.notes['last_compute']:.1f} of "
            f"computation + {period(m) - slow * m.notes['last_compute']:.1f}" for m in
            (ddp, sync, asyn)) + " (DDP's computation timed without the all-reduce before "
            "training, ps-train's the median of the straggler's steps; the rest is "
            "communication and waiting: a ps-train worker's pull, without --prefetch, is in "
            "series with every step). DDP and sync wait for the straggler at every step; "
            f"async does not, so updates come faster, but each is one worker's gradient on "
            f"weights {asyn.notes['staleness']:.1f} versions old on average. Time to {t}: async's "
            f"raw weights {_s(asyn.to_target)} s, {ahead(asyn.to_target)} DDP's "
            f"{_s(ddp.to_target)} s (its Polyak average {_s(asyn.polyak_to_target)} s, "
            f"{ahead(asyn.polyak_to_target)} DDP); sync {_s(sync.to_target)} s (ps-train's "
            f"weights read every {OBSERVE:g} s over gRPC, each read a pull that takes CPU from "
            f"the run: it counts against ps-train). Every worker does "
            f"the same number of steps (its share of the epochs), so every run ends when the "
            f"straggler has done its own: training time DDP {ddp.training:.1f} s, sync "
            f"{sync.training:.1f} s, async {asyn.training:.1f} s.", ""]


def kill_digits(a, digits: dict, tmp: Path, per_epoch: int, meds: list[Run]) -> list[str]:
    half = {m.system: m.training / 2 for m in meds}
    runs = scenario("kill", digits, SYSTEMS, tmp, eval_steps=per_epoch, eval_every=1.0,
                    target=a.target, rounds=1, kill_after=half)
    return [f"**The same, one worker's process killed with SIGKILL half-way through training**, "
            f"by pid from outside (DDP: rank {a.workers - 1}; ps-train: the newest "
            f"`ray::WorkerActor` process)", ""] + kill_table(runs) + [
        "", "On loopback the kernel resets a killed process's TCP connections, so gloo fails at "
            "once; a lost machine sends no reset, and gloo then waits out its timeout (30 min by "
            "default; 60 s here). Either way DDP's job ends: torchrun would restart every rank "
            "from the last checkpoint (this baseline writes none). ps-train's driver sees the "
            "actor die, starts a new worker on the same partition at the steps the shards "
            "recorded, and the other worker never stops; the restart costs the new actor's "
            "start-up.", ""]


def cifar(a, common: dict, tmp: Path) -> list[str]:
    data = tmp / "cifar_synthetic.npz"
    synthetic_cifar(data, a.cifar_images, 512)
    settings = dict(common, model="resnet20", dataset="npz", data_dir=str(data),
                    epochs=a.cifar_epochs, lr=a.cifar_lr)
    steps = max(1, round(a.cifar_images / (a.batch_size * a.workers) / 2))
    print(f"resnet20, synthetic CIFAR-size data, {a.cifar_epochs:g} epochs", flush=True)
    runs = scenario("cifar", settings, SYSTEMS, tmp, eval_steps=steps, eval_every=5.0,
                    target=a.cifar_target, rounds=a.cifar_rounds)
    ddp, sync, asyn = (median_run(r) for r in runs)
    return table(f"resnet20 on synthetic CIFAR-size data ({a.cifar_images} training and 512 "
                 f"held-out 32x32x3 images, 10 classes; see `synthetic_cifar`), "
                 f"{a.cifar_epochs:g} epochs, {a.workers} even workers, lr {a.cifar_lr}; DDP "
                 f"evaluates every half epoch ({steps} steps), ps-train every 5 s; "
                 f"{a.cifar_rounds} round(s)", runs, a.cifar_target) + [
        "", "Where the CPU goes (ms per worker step):", ""] + cpu_table(runs) + [
        "", f"resnet20's forward/backward is {ddp.compute:.0f} ms a step here (DDP, all-reduce "
            f"included) and {sync.compute:.0f}-{asyn.compute:.0f} ms in ps-train's workers: the "
            f"per-step Ray calls matter less than on digits. ps-train's driver evaluates on the "
            f"same 2 cores (raw and Polyak weights, the Polyak ones after re-estimating "
            f"BatchNorm statistics on 20 training batches), which DDP's training time leaves "
            f"out. Async's raw weights, evaluated with the BatchNorm statistics its workers "
            f"pushed, reached {_pct(asyn.final)}; its Polyak average, with the statistics "
            f"recomputed, {_pct(asyn.polyak)}.", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2, help="workers = DDP processes (default: 2)")
    ap.add_argument("--epochs", type=float, default=25, help="digits epochs (default: 25)")
    ap.add_argument("--batch-size", type=int, default=32, help="per worker (default: 32)")
    ap.add_argument("--lr", type=float, default=0.05, help="digits (default: 0.05, ps-train's)")
    ap.add_argument("--ps-shards", type=int, default=1,
                    help="ps-train's shards (default: 1: the models here are small)")
    ap.add_argument("--compare-shards", type=int, default=2,
                    help="also run async with this many shards on even digits (default: 2, "
                         "ps-train's default; 0 = no)")
    ap.add_argument("--target", type=float, default=0.97, help="digits held-out top-1 to reach "
                                                                "(default: 0.97)")
    ap.add_argument("--rounds", type=int, default=3, help="digits rounds (default: 3)")
    ap.add_argument("--straggler-slowdown", type=float, default=3.0, help="(default: 3)")
    ap.add_argument("--cifar-epochs", type=float, default=2, help="(default: 2)")
    ap.add_argument("--cifar-images", type=int, default=2048, help="training images (default: "
                                                                    "2048, and 512 held out)")
    ap.add_argument("--cifar-lr", type=float, default=0.02,
                    help="(default: 0.02; at 0.05 async resnet20 diverged in its first steps)")
    ap.add_argument("--cifar-target", type=float, default=0.6, help="(default: 0.6)")
    ap.add_argument("--cifar-rounds", type=int, default=1, help="(default: 1; 0 = skip)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["straggler", "kill", "cifar"],
                    help="scenarios to leave out")
    ap.add_argument("--smoke", action="store_true",
                    help="2 epochs of digits, even workers only, one round; implies --no-write")
    ap.add_argument("--keep", action="store_true", help="keep the runs' folders (printed)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    a = ap.parse_args()
    if a.smoke:
        # 45 steps a worker: async's raw weights read 89.7-97.5% in six printed runs
        a.epochs, a.rounds, a.no_write, a.target, a.compare_shards = 2, 1, True, 0.8, 0
        a.skip = ["straggler", "kill", "cifar"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    k = a.workers
    common = dict(workers=k, batch_size=a.batch_size, lr=a.lr, momentum=0.9, nesterov=True,
                  weight_decay=5e-4, seed=0, threads_per_worker=1, ps_shards=a.ps_shards)
    digits = dict(common, model="digits_cnn", dataset="digits", epochs=a.epochs)
    per_epoch = max(1, round(1438 / (a.batch_size * k)))  # DDP steps; 1,438 training digits
    load = os.getloadavg()
    lines = [f"Machine: {machine()}; load average {load[0]:.2f} at the start. {k} workers = {k} "
             f"DDP processes, 1 torch thread each; batch {a.batch_size} per worker, lr {a.lr}, "
             f"Nesterov momentum 0.9, weight decay 5e-4, seed 0; ps-train with {a.ps_shards} "
             f"shard(s), through its CLI. Training time runs from the first step to the last; "
             f"DDP's excludes the pauses of its evaluations (rank 0, every epoch: {per_epoch} "
             f"steps, unless a table says otherwise), ps-train's includes its driver's (raw and "
             f"Polyak weights, every second, beside the workers). Worker steps count all "
             f"workers; accuracies are on the held-out split. ps-train's times to a target come "
             f"from its driver's evaluations (each stamped with the time its weights were read: "
             f"only as fine as the evaluation interval) except in the straggler scenario, where "
             f"an outside reader (bench_ddp.Observer) reads the raw and Polyak weights every "
             f"{OBSERVE:g} s over `--serve-grpc` and they are evaluated after the run by "
             f"ps-train's own evaluation code. Its steps to a target are those pushed by the time "
             f"the weights were read. Medians of {a.rounds} alternating round(s).", ""]
    try:
        print(f"digits, {a.epochs:g} epochs, {k} workers (runs in {tmp})", flush=True)
        more, meds = even_digits(a, digits, tmp, per_epoch)
        lines += more
        if "straggler" not in a.skip:
            lines += straggler_digits(a, digits, tmp)
        if "kill" not in a.skip:
            lines += kill_digits(a, digits, tmp, per_epoch, meds)
        if "cifar" not in a.skip and a.cifar_rounds:
            lines += cifar(a, common, tmp)
        LOADS.append(os.getloadavg()[0])
        lines.append(f"Load average (1 min) as each run started: {min(LOADS):.2f} to "
                     f"{max(LOADS):.2f}, median {statistics.median(LOADS):.2f}; "
                     f"{os.getloadavg()[0]:.2f} at the end.")
        if statistics.median(LOADS) > (os.cpu_count() or 1) + 1:  # the runs alone keep it
            lines.append(f"**Other processes loaded this machine during the runs** (the runs "
                         f"alone keep the load near its {os.cpu_count()} cores): every time "
                         f"above swings with that, and DDP, whose ranks wait for each other at "
                         f"every step, loses most from a descheduled rank; its ratios are not "
                         f"those of a quiet machine.")
    finally:
        if a.keep:
            print(f"runs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(lines)
    print(text)
    if not a.no_write:
        write_section("Synchronous baseline: DDP against ps-train (issue 15)", text)


if __name__ == "__main__":
    main()
