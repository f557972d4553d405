"""The synchronous baseline of `bench_ddp.py`: ps-train's training run with PyTorch's
DistributedDataParallel (Li et al. 2020, "PyTorch Distributed") on the gloo backend.

One process per ps-train worker, started as torchrun would start them (so that the benchmark can
kill one by its pid). Everything a ps-train run is given is matched, taken from ps-train's own code:

- the data: `prepare(cfg)` loads and splits it; rank r trains on `worker_data(plan, r)`, the
  partition ps-train's worker r gets, in the same `Batches` order (seed 1000 * seed + r);
- the model: `prepare` builds it under `torch.manual_seed(seed)`: ps-train's checkpoint 0
  (DDP broadcasts rank 0's weights, so every rank starts from them);
- the update: `torch.optim.SGD(lr, momentum, nesterov, weight_decay)`, the rule the shards apply
  (core/optim.py), on the mean of the K gradients: one step per K gradients, as `--policy sync`;
- a straggler: after its forward/backward, the last `--stragglers` ranks sleep what
  `worker_delays(cfg)` says (worker/delays.py) of their computation, as a ps-train worker does.
  A ps-train worker's measured computation holds no communication; DDP's backward holds the
  all-reduce, so a straggler here stretches the median of 20 forward/backward passes without
  DDP, timed before training starts (`compute_time`).

Rank 0 evaluates on the held-out split every `eval_steps` steps (the others wait for it at the
next all-reduce) and after the last step. Each rank writes `OUT/rank<r>.json`: its timestamps
(s, time.time()), steps, evaluations, and the error that stopped it, if one did.

    python benchmarks/ddp_baseline.py RANK WORLD PORT SETTINGS.json OUT
"""

from __future__ import annotations

import time

T_PROCESS = time.time()  # s: before torch is imported, which is part of the start-up

import copy  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from ps_trainer.config import TrainConfig  # noqa: E402
from ps_trainer.data.stream import open_batches  # noqa: E402
from ps_trainer.models import training_loss  # noqa: E402
from ps_trainer.trainer.evaluate import evaluate, prepare as to_input  # noqa: E402
from ps_trainer.trainer.plan import prepare, worker_data, worker_options  # noqa: E402
from ps_trainer.worker.delays import worker_delays  # noqa: E402

TIMEOUT = 60  # s: how long a collective waits for a peer before gloo gives up


def compute_time(plan, rank: int, loss_options: dict, steps: int = 20) -> float:
    """Median s of one forward/backward on this rank's batches, with no communication: what a
    straggler stretches (a copy of the model, so training starts from the initial weights)."""
    model = copy.deepcopy(plan.model).train()
    cfg = plan.cfg
    batches = open_batches(worker_data(plan, rank), cfg.batch_size, cfg.seed * 1000 + rank)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        x, y = next(batches)
        x = to_input(x, plan.in_channels, plan.image_size, "cpu")  # (B, C, H, W)
        training_loss(model(x), torch.as_tensor(y), **loss_options).backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train(rank: int, world: int, port: int, cfg: TrainConfig, eval_steps: int, out: Path) -> None:
    torch.set_num_threads(cfg.threads_per_worker)
    plan = prepare(cfg)  # the data and the initial weights of ps-train's run
    loss_options = {k: v for k, v in worker_options(plan).items()
                    if k in ("aux_weight", "label_smoothing")}
    batches = open_batches(worker_data(plan, rank), cfg.batch_size, cfg.seed * 1000 + rank)
    delay = worker_delays(cfg)[rank]  # StepDelay: (slowdown - 1) x compute for a straggler
    compute = compute_time(plan, rank, loss_options) if delay.active else 0.0
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=dt.timedelta(seconds=TIMEOUT))
    model = DDP(plan.model)  # broadcasts rank 0's weights and buffers
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    data = plan.data

    def held_out() -> dict:
        m = evaluate(model.module, data.x_test, data.y_test, in_channels=plan.in_channels,
                     image_size=plan.image_size)
        model.train()
        return m

    record = {"rank": rank, "pid": os.getpid(), "process": T_PROCESS, "steps": 0,
              "of": plan.steps_per_worker, "evals": [], "compute": 0.0, "delay": 0.0, "error": "",
              "straggler_compute": compute}
    dist.barrier()  # every rank is ready: training starts now
    record["ready"] = time.time()
    (out / f"ready{rank}").touch()  # for the benchmark: the moment to aim a kill -9 after
    model.train()
    try:
        for step in range(1, plan.steps_per_worker + 1):
            t0 = time.perf_counter()
            x, y = next(batches)
            x = to_input(x, plan.in_channels, plan.image_size, "cpu")  # (B, C, H, W)
            loss = training_loss(model(x), torch.as_tensor(y), **loss_options)
            opt.zero_grad(set_to_none=False)
            loss.backward()  # the gradients' all-reduce (mean over ranks) overlaps this
            record["compute"] += time.perf_counter() - t0
            if delay.active:  # a straggler stretches its step, as a ps-train worker does
                pause = delay(compute)
                time.sleep(pause)
                record["delay"] += pause
            opt.step()
            record["steps"] = step
            if rank == 0 and step % eval_steps == 0 and step < plan.steps_per_worker:
                e0, c0 = time.time(), time.process_time()
                record["evals"].append({"step": step, **held_out(), "time": time.time(),
                                        "seconds": time.time() - e0,
                                        "cpu": time.process_time() - c0})
        record["end"] = time.time()  # training ends; the final evaluation is not part of it
        if rank == 0:
            record["evals"].append({"step": plan.steps_per_worker, **held_out(),
                                    "time": time.time(), "seconds": time.time() - record["end"],
                                    "cpu": 0.0})  # after training: not in its CPU either
    except Exception as e:  # noqa: BLE001 - a peer died: say how the baseline fails
        record["end"] = time.time()
        record["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    # Out at once: a clean exit (destroy_process_group, interpreter shutdown) can wait forever
    # for a gloo peer that has gone (seen here on a loaded machine).
    os._exit(1 if record["error"] else 0)


if __name__ == "__main__":
    rank, world, port = (int(a) for a in sys.argv[1:4])
    spec = json.loads(Path(sys.argv[4]).read_text())
    cfg = TrainConfig.from_dict(spec["settings"]).validate()
    train(rank, world, port, cfg, spec["eval_steps"], Path(sys.argv[5]))
