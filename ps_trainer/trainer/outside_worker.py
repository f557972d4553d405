"""`ps-train worker --ps grpc://HOST:PORT`: one model replica in this process, outside Ray.

The loop is the same `Worker` (worker/worker.py) as on Ray; only its PS client differs
(`transport.grpc_client.GrpcClient`, with the same four calls). The model is the one the server
says it holds (GetLayout), built here and checked against the server's layout fingerprint; the
worker's id comes from the server (RegisterWorker), or `--worker-id` to reconnect, continuing
at the pushes the shards recorded for it. Its data is partition `id mod --workers` of the data
set named by the local settings (`--dataset`, `--data-dir`, `--batch-size`, ...).
"""

from __future__ import annotations

import os
import time
from collections import Counter

import numpy as np
import torch

from ..config import TrainConfig
from ..core.layout import FlatModel
from ..data.stream import open_batches
from ..models import build
from ..transport.grpc_client import GrpcClient
from ..worker.worker import Worker, wants_channels_last
from .grpc_options import client_tls, read_token
from .plan import loader_processes, prepare, worker_data, worker_options
from .progress import ProgressBar
from .signals import stop_requested


def connect(cfg: TrainConfig, target: str) -> GrpcClient:
    """The client for `target` (grpc://HOST:PORT, or grpcs:// for TLS with the system's CAs);
    ValueError (exit 2) if nothing answers or it refuses us."""
    try:
        return GrpcClient(target, token=read_token(cfg), **client_tls(cfg))
    except ConnectionError as e:
        raise ValueError(f"--ps {target}: {e}") from None


def run_worker(cfg: TrainConfig, target: str, steps: int, worker_id: int | None = None,
               log=print, stop: list | None = None) -> dict:
    """Join the server at `target` and train `steps` steps (0: --epochs of this worker's
    partition); returns what this worker did, as its summary line says."""
    client = connect(cfg, target)
    try:
        return _run(cfg, client, target, steps, worker_id, log, stop)
    finally:
        client.close()


def _run(cfg, client: GrpcClient, target: str, steps: int, worker_id, log, stop) -> dict:
    info = client.server_layout.info
    cfg.model, cfg.ps_shards = info.model, len(client.server_layout.shards)
    cfg.validate()
    plan = prepare(cfg)  # this worker's data, and the server's model built here
    if plan.layout.fingerprint() != info.fingerprint:
        raise ValueError(f"--ps {target}: the server holds {info.model} with layout "
                         f"{info.fingerprint}, but this machine builds {plan.layout.fingerprint()} "
                         f"(a different ps-trainer version?)")
    wid, clock = client.register(worker_id)
    torch.set_num_threads(max(1, cfg.threads_per_worker))
    torch.manual_seed(cfg.seed * 1000 + wid)
    device = "cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    model = build(cfg.model, num_classes=plan.data.num_classes, in_channels=plan.in_channels)
    flat = FlatModel(model, plan.layout, device=device,
                     channels_last=wants_channels_last(cfg.channels_last, device))
    data = worker_data(plan, wid % cfg.workers, start=clock * cfg.push_every)
    batches = open_batches(data, cfg.batch_size, cfg.seed * 1000 + wid,
                           loader_processes(cfg, os.cpu_count() or 1, device == "cuda"),
                           device == "cuda")
    worker = Worker(wid, flat, client.server_layout.specs(), client, batches,
                    in_channels=plan.in_channels, device=device, clock=clock,
                    **worker_options(plan))
    steps = steps or plan.steps_per_worker
    log(f"ps-train worker {wid}: {cfg.model} from {target} ({cfg.ps_shards} shards, policy "
        f"{info.policy}), partition {wid % cfg.workers} of {cfg.workers} of {cfg.dataset}, "
        f"{steps} steps of batch {cfg.batch_size} on {device}"
        + (f", continuing at push {clock}" if clock else ""))
    outcomes, staleness = Counter(), []
    t0 = time.time()
    with stop_requested(stop) as signals, ProgressBar(steps, enabled=cfg.progress) as bar:
        for step in range(steps):
            if signals:
                break
            worker.step()
            for r in worker.drain_rows():
                outcomes[r["outcome"]] += 1
                staleness.append(r["staleness"])
            if step % 10 == 0 or step == steps - 1:
                bar.update(step + 1, loss=f"{worker.last_loss:.3f}",
                           stale=f"{np.mean(staleness[-200:]):.1f}" if staleness else "-")
        worker.flush()
    for r in worker.drain_rows():
        outcomes[r["outcome"]] += 1
        staleness.append(r["staleness"])
    client.retire(wid)  # SSP/BSP: nobody waits for a finished worker
    seconds = time.time() - t0
    out = {"worker": wid, "steps": worker.step_count, "images": worker.images,
           "pushes_sent": worker.pushes_sent, "outcomes": dict(outcomes),
           "acknowledged": sum(outcomes.values()), "loss": worker.last_loss,
           "mean_staleness": float(np.mean(staleness)) if staleness else 0.0,
           "seconds": seconds, "interrupted": bool(signals)}
    log(f"worker {wid}: {out['steps']} steps, {out['images']} images in {seconds:.1f} s "
        f"({out['images'] / max(seconds, 1e-9):.0f} images/s), {out['pushes_sent']} pushes sent, "
        f"{out['acknowledged']} acknowledged ("
        + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
        + f"), mean staleness {out['mean_staleness']:.2f}, last loss {worker.last_loss:.4f}")
    return out
