"""Where a run's actors go: starting or joining Ray, and choosing resource requests that always
schedule.

Ray actors that ask for more CPUs or GPUs than the cluster has wait forever, silently. So the plan
is computed from what the cluster reports before any actor starts: one GPU per worker when the
cluster has GPUs (an error, at once, if it has too few), and on CPU-only machines fractional CPU
requests that add up to the cores there are, so any `--workers` value schedules (with a warning
when workers share cores). A local Ray listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import torch


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Join `address` (or RAY_ADDRESS), else start Ray locally on loopback. True if started here."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    # Without this Ray binds its services to every interface; with it, 127.0.0.1 only.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=True, configure_logging=False)
    gcs = ray.get_runtime_context().gcs_address
    if not gcs.startswith("127.0.0.1"):  # ray was imported before ps_trainer set the variable
        warnings.warn(f"the local Ray node listens on {gcs}, not only on 127.0.0.1: import "
                      f"ps_trainer before ray, or set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0")
    return True


@dataclass
class ResourcePlan:
    worker_cpus: float
    worker_gpus: float
    shard_cpus: float
    device: str  # 'cpu' or 'cuda'
    warnings: list[str] = field(default_factory=list)


def plan_resources(workers: int, shards: int, device: str, resources: dict) -> ResourcePlan:
    """Requests for `workers` worker actors and `shards` shard actors on a cluster with `resources`
    (what `ray.cluster_resources()` returns). Raises ValueError when the run cannot fit."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if device == "auto":
        device = "cuda" if gpus >= 1 else "cpu"
    if device == "cuda":
        if gpus < workers:
            raise ValueError(f"--workers {workers} needs {workers} GPUs (one per worker) but the "
                             f"cluster has {gpus:g}; use --workers {int(gpus)} or --device cpu"
                             if gpus >= 1 else
                             "--device cuda: the cluster has no GPU; use --device cpu or --address "
                             "of a GPU cluster (ray up cluster/gpu.yaml)")
        shard_cpus = min(1.0, max(cpus - workers, 0.0) / shards) if cpus else 0.0
        return ResourcePlan(min(1.0, cpus / (workers + shards)) if cpus else 0.0, 1.0,
                            _floor(shard_cpus), "cuda")
    if cpus <= 0:
        raise ValueError("the Ray cluster reports no CPUs; check --address / RAY_ADDRESS")
    actors = workers + shards
    share = _floor(min(1.0, cpus / actors))  # fractional requests: the sum never exceeds the cores
    plan = ResourcePlan(share, 0.0, share, "cpu")
    if workers > cpus:
        plan.warnings.append(f"{workers} workers (and {shards} shards) share {cpus:g} CPU cores: each "
                             f"worker gets about {cpus / actors:.2f} of a core, so each step is that "
                             f"much slower; use --workers {int(cpus)} for speed here, or join a "
                             f"cluster with --address")
    return plan


def _floor(x: float) -> float:
    return int(x * 1000) / 1000  # Ray rounds resource requests; never ask for a hair more


def available_memory() -> int:
    """Bytes of memory available on this machine (MemAvailable), or 0 if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


PROCESS_OVERHEAD = 400 << 20  # bytes: a Ray worker process with torch imported, measured ~350 MB


def estimate_worker_memory(model: torch.nn.Module, batch: int, channels: int, size: int) -> int:
    """Bytes one CPU worker needs: its process, weights/gradients/pulled copy (x4 the parameters)
    and the activations autograd keeps, measured by a forward pass on the `meta` device (no memory,
    no compute) at the real batch and image size."""
    total = [0]

    def hook(_m, _inp, out):
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * t.element_size()

    meta = model.to("meta")
    handles = [m.register_forward_hook(hook) for m in meta.modules() if not list(m.children())]
    try:
        meta.train()
        meta(torch.empty(batch, channels, size, size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in meta.parameters()) * 4
    return PROCESS_OVERHEAD + 4 * params + total[0]
