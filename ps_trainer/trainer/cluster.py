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
import socket
import warnings
from dataclasses import dataclass, field

import torch


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Join `address` (or RAY_ADDRESS), else start Ray locally on loopback. True if started here.
    ValueError, within about 10 s, if no Ray cluster answers at the address."""
    import ray

    if ray.is_initialized():
        return False
    flag = "--address" if address else "--address (from RAY_ADDRESS)"
    address = address or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        check_address(address, flag)
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as e:  # wrong version, lost on the way
            raise ValueError(f"{flag} {address}: Ray could not join the cluster there "
                             f"({_first_line(e)}); {_FIX}") from None
        return True
    # Without this Ray binds its services to every interface; with it, 127.0.0.1 only.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # address="local": a new node of our own even if another Ray runs on this machine (a
    # `ray start --head` left running would else be joined, with its settings, not ours)
    from ..transport.ray_shard import INLINE_BYTES

    # Arguments up to 1 MiB (a small model's gradient) travel inside the call, not through the
    # object store: on digits_cnn this took the raylet's CPU per step from 2.5 ms to 0.1 ms.
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=True, configure_logging=False,
             _system_config={"max_direct_call_object_size": INLINE_BYTES})
    gcs = ray.get_runtime_context().gcs_address
    if not gcs.startswith("127.0.0.1"):  # ray was imported before ps_trainer set the variable
        warnings.warn(f"the local Ray node listens on {gcs}, not only on 127.0.0.1: import "
                      f"ps_trainer before ray, or set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0")
    return True


_FIX = "start one with `ray start --head`, or leave --address empty to run locally"


def check_address(address: str, flag: str = "--address", timeout: float = 5.0) -> None:
    """ValueError, within 2 * `timeout` s, unless a Ray cluster answers at `address` (a TCP
    connection, then Ray's first call). ray.init itself retries for minutes where none does."""
    target = _bootstrap_address(address, flag)
    if target is None:  # 'local': ray.init starts a new local Ray
        return
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{flag} {address}: expected HOST:PORT (e.g. 10.0.0.5:6379), 'auto' "
                         f"or ray://HOST:PORT")
    shown = address if target == address else f"{address} (that is {target})"
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        reason = "no answer" if isinstance(e, TimeoutError) else e.strerror or _first_line(e)
        raise ValueError(f"{flag} {shown}: no Ray cluster answered there ({reason}); "
                         f"{_FIX}") from None
    try:
        import grpc
        from ray.core.generated import gcs_service_pb2 as pb, gcs_service_pb2_grpc as rpc
    except ImportError:  # Ray's generated gRPC code: without it, the TCP check is all there is
        return
    # A port that accepts connections may belong to anything. Ask it for its cluster id, the first
    # call every Ray client makes: a Ray cluster answers it (or refuses a client without a token).
    not_ray = {grpc.StatusCode.UNIMPLEMENTED: "something else listens there",
               grpc.StatusCode.UNAVAILABLE: "the port accepts connections but does not speak gRPC",
               grpc.StatusCode.DEADLINE_EXCEEDED: f"the port accepts connections but gives no "
                                                  f"answer within {timeout:g} s"}
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            rpc.NodeInfoGcsServiceStub(channel).GetClusterId(pb.GetClusterIdRequest(),
                                                             timeout=timeout)
        except grpc.RpcError as e:
            if e.code() in not_ray:
                raise ValueError(f"{flag} {shown}: no Ray cluster answered there "
                                 f"({not_ray[e.code()]}); {_FIX}") from None


def _bootstrap_address(address: str, flag: str) -> str | None:
    """HOST:PORT that ray.init(address) will dial ('auto' looked up, 127.0.0.1 made the node's
    address, as Ray does); None for 'local'."""
    if "://" in address:  # ray://HOST:PORT, Ray Client
        return address.split("://", 1)[1].rstrip("/")
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # a private helper of Ray's: without it, dial what was given
        return None if address == "local" else address
    try:
        return canonicalize_bootstrap_address(address)
    except ConnectionError:  # 'auto', and no Ray cluster runs on this machine
        raise ValueError(f"{flag} {address}: no Ray cluster runs on this machine; {_FIX}") from None
    except ValueError as e:  # malformed
        raise ValueError(f"{flag} {address}: {_first_line(e)}; expected HOST:PORT (e.g. "
                         f"10.0.0.5:6379), 'auto' or ray://HOST:PORT") from None


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


# A shard's push streams the model's arrays through memory; one core's bandwidth bounds it. Given
# two torch threads, ResNet-50's push took 32.1 ms instead of 58.8 on a 2-core VM, and the
# capacity benchmark's updates/s at 4 workers rose from 13.3 to 16.0 (docs/benchmarks.md). Shards
# on CPU-only nodes with room for it (cluster/gpu.yaml's head) ask for this many CPUs, and get as
# many threads. More were not measured (no machine here had the cores). The compiled push (2M+
# parameters, core/push_kernel.py) runs on them too: its loop took 14-20 ms on two against 27-30
# ms on one (Xeon VM, session 16).
SHARD_THREADS = 2


@dataclass
class ResourcePlan:
    worker_cpus: float
    worker_gpus: float
    shard_cpus: float
    device: str  # 'cpu' or 'cuda'
    warnings: list[str] = field(default_factory=list)


def plan_resources(workers: int, shards: int, device: str, resources: dict,
                   nodes: list[dict] | None = None) -> ResourcePlan:
    """Requests for `workers` worker actors and `shards` shard actors on a cluster with `resources`
    (what `ray.cluster_resources()` returns) made of `nodes` (each node's resources, if known).
    Raises ValueError when the run cannot fit."""
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
        cpu_only = sum(n.get("CPU", 0) for n in nodes or [] if n.get("GPU", 0) < 1)
        if shard_cpus == 1.0 and cpu_only >= SHARD_THREADS * shards + 1:  # (+ 1: the driver)
            shard_cpus = float(SHARD_THREADS)  # off the GPU nodes: their CPUs feed the loaders
        worker_cpus = min(1.0, cpus / (workers + shards)) if cpus else 0.0
        beside = _cpus_beside_each_gpu(nodes or [], shards * _floor(shard_cpus))
        return ResourcePlan(_floor(max(worker_cpus, beside)), 1.0, _floor(shard_cpus), "cuda")
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


def _cpus_beside_each_gpu(nodes: list[dict], shard_cpus: float) -> int:
    """Whole CPUs a GPU worker can have on every GPU node (its DataLoader processes decode on
    them: a resnet50 worker on an H200 needs about 14), leaving the shards theirs: on CPU-only
    nodes if they fit there (cluster/gpu.yaml's head), else spread over the GPU nodes, with one
    CPU more for the driver's process there. 0 when the nodes are not known."""
    gpu_nodes = [n for n in nodes if n.get("GPU", 0) >= 1]
    if not gpu_nodes:
        return 0
    cpu_only = sum(n.get("CPU", 0) for n in nodes if n.get("GPU", 0) < 1)
    taken = 0.0 if cpu_only and cpu_only >= shard_cpus else shard_cpus / len(gpu_nodes) + 1
    return max(0, min(int((n.get("CPU", 0) - taken) // int(n["GPU"])) for n in gpu_nodes))


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
