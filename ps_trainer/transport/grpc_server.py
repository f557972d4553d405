"""A parameter server over gRPC: the `ParameterServerService` of protos/ps_trainer/v1, served
from a backend's shards (grpc_backend.py), so workers outside Ray (another machine, another
language, a classroom laptop) train against the same `ShardState` (DistBelief, Dean et al. 2012).

The servicer is a thin adapter (grpc's route_guide): Pull is a generator of chunk messages,
Push reads a stream of them; the shard decides everything else. Invariants:
- Nothing malformed reaches the weights: the header is checked against the shard before a byte
  is allocated (size, dtype, layout fingerprint), the chunks by `grpc_wire.Assembler`, the values
  by the shard. A refused push that named a shard is recorded by that shard (`reject`, counted
  per worker, its clock moves as the worker's did) and reported to `on_push`; every refusal is
  also counted in the server's own `rejections`, by reason.
- Errors map to status codes: another layout -> FAILED_PRECONDITION; wrong size, dtype, shard,
  chunk order, truncated or oversized stream, non-finite values -> INVALID_ARGUMENT; a missing or
  wrong token -> UNAUTHENTICATED. The token is compared in constant time and never logged.
- Only loopback without TLS: another address needs a certificate, or `insecure=True` (a warning).
- One process, a thread per call (`max_concurrent_streams` of them at most): the update kernels
  release the GIL, so shards are served concurrently.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
import time
from collections import Counter
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..core.malloc import tune_malloc
from ..core.shard import PushResult
from ..v1 import parameter_server_pb2 as pb
from .grpc_wire import (CHUNK_BYTES, RESULT_TRAILER, SERVICE, TOKEN_HEADER,
                        WIRE_DTYPES, Assembler, ModelInfo, ServerLayout, WireError,
                        decode_chunk_stream, encode_chunk, result_to_proto)

log = logging.getLogger(__name__)

# Shard rejections that mean the push itself was malformed (core.shard's _check reasons), as
# opposed to a policy's verdict on a good push (stale, late, duplicate, recovering).
_MALFORMED = {"gradient": "non_finite", "BatchNorm": "non_finite", "version_read": "version_read",
              "push": "bad_shard"}


@dataclass(frozen=True)
class TLS:
    """PEM bytes: the server's certificate chain and key; a client CA asks for mutual TLS."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: str, key: str, client_ca: str | None = None) -> "TLS":
        return cls(Path(cert).read_bytes(), Path(key).read_bytes(),
                   Path(client_ca).read_bytes() if client_ca else None)


class Rejections:
    """The server's own counters of refused calls, by reason (thread-safe)."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.lock = threading.Lock()

    def add(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


class _Encoded:
    """One published snapshot's chunk messages, encoded once, lazily and in order, by whichever
    reader gets to a chunk first, and served to every reader of that version: W workers pulling
    the same version cost one encoding (a copy of the shard), not W."""

    def __init__(self, arr: np.ndarray, version: int, chunk_bytes: int):
        self.source, self.version, self.chunk_bytes = arr, version, chunk_bytes
        self.data = memoryview(arr).cast("B")  # float32 little-endian (every supported host)
        self.count = -(-len(self.data) // chunk_bytes)
        self.messages: list[bytes] = []
        self.lock = threading.Lock()

    def message(self, k: int) -> bytes:
        with self.lock:
            while len(self.messages) <= k:
                start = len(self.messages) * self.chunk_bytes
                self.messages.append(encode_chunk(start, self.data[start:start + self.chunk_bytes]))
            return self.messages[k]


class ParameterServerServicer:
    """ParameterServerService over a backend (LocalBackend or RayBackend)."""

    def __init__(self, backend, info: ModelInfo, *, on_push=None, first_worker_id: int = 0,
                 rejections: Rejections | None = None, chunk_bytes: int = CHUNK_BYTES,
                 pull_timeout: float = 0.5):
        self.backend = backend
        self.layout = ServerLayout(info, tuple(backend.sizes()))
        self.on_push = on_push  # called with every PushResult a shard recorded
        self.first_worker_id = first_worker_id  # ids below are the embedded Ray run's workers
        self.rejections = rejections or Rejections()
        self.chunk_bytes = chunk_bytes  # bytes per Pull chunk
        self.pull_timeout = pull_timeout  # s a held pull waits before checking the client is there
        self._ids = threading.Lock()
        self._registered: set[int] = set()
        self._pool: dict[tuple[int, int, bool], list] = {}  # receive buffers, reused
        self._pool_lock = threading.Lock()
        self._cache: dict[tuple[int, bool], _Encoded] = {}  # the last snapshot served, encoded
        self._cache_lock = threading.Lock()

    # ---- small calls ---------------------------------------------------------------------------
    def GetLayout(self, request, context):
        return self.layout.to_proto()

    @property
    def registered(self) -> frozenset[int]:
        """Ids of the workers that joined through RegisterWorker."""
        with self._ids:
            return frozenset(self._registered)

    def RegisterWorker(self, request, context):
        with self._ids:
            if request.HasField("worker_id"):
                w = request.worker_id
                if w < self.first_worker_id:
                    self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "reserved_id",
                                 f"worker id {w} belongs to the Ray run's own workers "
                                 f"(0..{self.first_worker_id - 1}); register without an id")
            else:
                taken = self._registered | self.backend.workers()
                w = max([self.first_worker_id - 1, *taken]) + 1
            clock, retired = self.backend.clock(w)
            if retired:
                self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "retired",
                             f"worker {w} finished (retired); register without an id")
            self._registered.add(w)
        return pb.RegisterWorkerResponse(worker_id=w, clock=clock)

    def RetireWorker(self, request, context):
        self.backend.retire(request.worker_id)
        return pb.RetireWorkerResponse()

    def GetStats(self, request, context):
        shards = [pb.ShardStats(
            shard_id=s["shard"], version=s["version"], pushes=s["pushes"], outcomes=s["counters"],
            reject_reasons=s["reject_reasons"], waits=s["waits"],
            mean_staleness=s["mean_staleness"],
            workers=[pb.WorkerCounters(worker_id=w, outcomes=c)
                     for w, c in sorted(s["worker_counters"].items())])
            for s in self.backend.stats()]
        return pb.GetStatsResponse(shards=shards, server_rejections=self.rejections.snapshot())

    # ---- pull ----------------------------------------------------------------------------------
    def Pull(self, request, context):
        """Header, then the snapshot's bytes in chunks, encoded once per snapshot (`_Encoded`)."""
        shard = self._shard(request.shard_id, context)
        worker = request.worker_id if request.HasField("worker_id") else None
        t0, held = time.perf_counter(), False
        while True:  # a coordinating policy holds the pull; stop if the client went away
            got = self.backend.pull(shard, request.averaged, worker, request.clock,
                                    self.pull_timeout)
            if got is not None:
                break
            if not context.is_active():
                return
            held = True
        arr, version, waited = got
        if held:  # asked again: the whole time since the first ask
            waited = time.perf_counter() - t0
        not_modified = request.HasField("if_newer_than") and version <= request.if_newer_than
        yield pb.PullResponse(header=pb.PullHeader(
            version=version, not_modified=not_modified, element_count=arr.shape[0],
            param_count=self.layout.shards[shard][0], dtype=pb.DTYPE_FLOAT32,
            waited_seconds=waited)).SerializeToString()
        if not_modified:
            return
        encoded = self._encoded(shard, request.averaged, version, arr)
        for k in range(encoded.count):
            yield encoded.message(k)

    def _encoded(self, shard: int, averaged: bool, version: int, arr: np.ndarray) -> "_Encoded":
        """The chunk messages of this snapshot, shared by every reader of it: the same array
        object (a published snapshot is immutable; a restored shard publishes a new one)."""
        with self._cache_lock:
            got = self._cache.get((shard, averaged))
            if got is None or got.source is not arr or got.version != version:
                got = self._cache[(shard, averaged)] = _Encoded(arr, version, self.chunk_bytes)
            return got

    # ---- push ----------------------------------------------------------------------------------
    def Push(self, request_iterator, context):
        first = next(request_iterator, None)
        if isinstance(first, WireError):
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, first.key, str(first))
        if not isinstance(first, pb.PushHeader):
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_header",
                         "a push must start with its PushHeader")
        h = first
        shard = self._shard(h.shard_id, context)
        worker = h.worker_id
        num_params, num_buffers = self.layout.shards[shard]
        fingerprint = self.layout.info.fingerprint
        if h.fingerprint != fingerprint:
            self._reject(context, shard, worker, grpc.StatusCode.FAILED_PRECONDITION,
                         "layout_mismatch",
                         f"push for layout {h.fingerprint!r}, but this server holds model "
                         f"{self.layout.info.model!r} with layout {fingerprint!r}: build the "
                         f"worker's model from GetLayout")
        if h.dtype not in WIRE_DTYPES:
            self._reject(context, shard, worker, grpc.StatusCode.INVALID_ARGUMENT, "bad_dtype",
                         f"gradient dtype {pb.Dtype.Name(h.dtype) if h.dtype in pb.Dtype.values() else h.dtype}; "
                         f"send {' or '.join(pb.Dtype.Name(d) for d in WIRE_DTYPES)}")
        if h.gradient_count != num_params:
            self._reject(context, shard, worker, grpc.StatusCode.INVALID_ARGUMENT, "bad_size",
                         f"gradient of {h.gradient_count} elements for shard {shard}, which "
                         f"holds {num_params}")
        if h.batch_norm_count not in (0, num_buffers):
            self._reject(context, shard, worker, grpc.StatusCode.INVALID_ARGUMENT, "bad_size",
                         f"{h.batch_norm_count} BatchNorm statistics for shard {shard}, which "
                         f"holds {num_buffers} (or send none)")
        # Sizes checked: now allocate (or reuse) exactly the shard's size.
        key = (shard, h.dtype, bool(h.batch_norm_count))
        grad, bn = self._take(key, num_params, h.dtype, h.batch_norm_count)
        try:
            assembler = Assembler([grad, bn])
            try:
                for msg in request_iterator:
                    if isinstance(msg, WireError):
                        raise msg
                    if not isinstance(msg, tuple):
                        raise WireError("bad_chunk", "a push has one header, then only chunks")
                    assembler.add(*msg)
                assembler.finish()
            except WireError as e:
                self._reject(context, shard, worker, grpc.StatusCode.INVALID_ARGUMENT, e.key,
                             f"push to shard {shard}: {e}")
            except grpc.RpcError:  # the client cancelled mid-stream: nothing applied
                self._reject(context, shard, worker, grpc.StatusCode.CANCELLED, "cancelled",
                             f"push to shard {shard} cancelled mid-stream")
            result = self.backend.push(shard, grad, h.version_read, worker,
                                       bn if h.batch_norm_count else None)
        finally:
            self._give(key, grad, bn)
        self._report(result)
        if result.outcome == "rejected":
            counter = _MALFORMED.get(result.reason.split(" ")[0])
            if counter:  # the values were bad, not the timing: an error for the client too
                self.rejections.add(counter)
                self._fail(context, result, grpc.StatusCode.INVALID_ARGUMENT,
                           f"push to shard {shard}: {result.reason}")
        return result_to_proto(result)

    def _take(self, key, num_params: int, dtype: int, num_buffers: int):
        with self._pool_lock:
            free = self._pool.get(key)
            if free:
                return free.pop()
        return np.empty(num_params, WIRE_DTYPES[dtype]), np.empty(num_buffers, np.float32)

    def _give(self, key, grad, bn) -> None:
        with self._pool_lock:
            free = self._pool.setdefault(key, [])
            if len(free) < 2:  # bounded: concurrent pushes beyond this allocate and drop
                free.append((grad, bn))

    # ---- errors --------------------------------------------------------------------------------
    def _shard(self, shard: int, context) -> int:
        if not 0 <= shard < len(self.layout.shards):
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_shard",
                         f"shard {shard} does not exist: this server holds shards "
                         f"0..{len(self.layout.shards) - 1}")
        return shard

    def _refuse(self, context, code, key: str, message: str):
        """Refuse a call no shard will record (none identified). Raises."""
        self.rejections.add(key)
        context.abort(code, message)

    def _reject(self, context, shard: int, worker: int, code, key: str, message: str):
        """Refuse a push before its shard saw it: the shard records the rejection. Raises."""
        self.rejections.add(key)
        result = self.backend.reject(shard, worker, message)
        self._report(result)
        self._fail(context, result, code, message)

    def _fail(self, context, result: PushResult, code, message: str):
        context.set_trailing_metadata(((RESULT_TRAILER, result_to_proto(result).SerializeToString()),))
        context.abort(code, message)

    def _report(self, result: PushResult) -> None:
        if self.on_push is not None:
            try:
                self.on_push(result)
            except Exception:  # a metrics writer's failure must not fail the worker's push
                log.exception("on_push callback failed")


# ---- authentication ------------------------------------------------------------------------------
class TokenInterceptor(grpc.ServerInterceptor):
    """Every call must carry `authorization: Bearer <token>`; compared in constant time."""

    def __init__(self, token: str, rejections: Rejections):
        self._expected = f"Bearer {token}".encode()
        self.rejections = rejections

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        got = dict(details.invocation_metadata or ()).get(TOKEN_HEADER, "")
        got = got.encode() if isinstance(got, str) else got
        if handler is None or hmac.compare_digest(got, self._expected):
            return handler
        self.rejections.add("unauthenticated")

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")

        def deny_stream(request, context):
            deny(request, context)
            yield  # pragma: no cover (abort raises)

        return handler._replace(unary_unary=deny, stream_unary=deny, unary_stream=deny_stream,
                                stream_stream=deny_stream)


# ---- the server --------------------------------------------------------------------------------
def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _identity(b: bytes) -> bytes:
    return b


def _handlers(servicer: ParameterServerServicer) -> grpc.GenericRpcHandler:
    """The service's methods; Pull and Push with the hand-made chunk codec of grpc_wire."""
    unary = {name: grpc.unary_unary_rpc_method_handler(
        getattr(servicer, name), request_deserializer=req.FromString,
        response_serializer=lambda m: m.SerializeToString())
        for name, req in [("GetLayout", pb.GetLayoutRequest),
                          ("RegisterWorker", pb.RegisterWorkerRequest),
                          ("RetireWorker", pb.RetireWorkerRequest),
                          ("GetStats", pb.GetStatsRequest)]}
    return grpc.method_handlers_generic_handler(SERVICE, {
        **unary,
        "Pull": grpc.unary_stream_rpc_method_handler(
            servicer.Pull, request_deserializer=pb.PullRequest.FromString,
            response_serializer=_identity),
        "Push": grpc.stream_unary_rpc_method_handler(
            servicer.Push, request_deserializer=decode_chunk_stream(pb.PushHeader),
            response_serializer=lambda m: m.SerializeToString()),
    })


class GrpcServer:
    """A running server: `.port`, `.stop()`, `.wait()`, `.servicer` (counters, layout)."""

    def __init__(self, server: grpc.Server, port: int, servicer: ParameterServerServicer,
                 health_servicer):
        self.server, self.port, self.servicer = server, port, servicer
        self.health = health_servicer

    @property
    def rejections(self) -> dict[str, int]:
        return self.servicer.rejections.snapshot()

    def stop(self, grace: float | None = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (or `timeout` s); True if it stopped."""
        return self.server.wait_for_termination(timeout)


def serve(backend, info: ModelInfo, port: int = 0, host: str = "127.0.0.1", *,
          tls: TLS | None = None, insecure: bool = False, token: str | None = None,
          max_concurrent_streams: int = 64, on_push=None, first_worker_id: int = 0,
          chunk_bytes: int = CHUNK_BYTES, unix_socket: str | None = None, options=(),
          malloc_tuning: bool = True) -> GrpcServer:
    """Start serving `backend`'s shards on host:port (port 0: a free one, see `.port`).

    `token`: the shared secret every call must carry (read it from a file or the environment,
    never from a command line). `on_push(PushResult)`: every push a shard recorded.
    `first_worker_id`: ids below it belong to the embedded Ray run's workers.
    `unix_socket`: a path to listen on as well, for workers on this machine (`unix:PATH`; the
    socket file is its owner's only, mode 0755, and removed when the server stops; same TLS and
    token as the TCP port). `options`: gRPC server channel arguments. `malloc_tuning`: keep freed
    message memory for reuse (`core.malloc.tune_malloc`, process-wide)."""
    if not _is_loopback(host) and tls is None and not insecure:
        raise ValueError(f"refusing to serve on {host!r} without TLS: anyone who can reach it "
                         f"could push gradients; give a certificate and key (--tls-cert, "
                         f"--tls-key), bind 127.0.0.1, or pass --insecure to accept the risk")
    if token is not None and not token:
        raise ValueError("the token is empty; give a non-empty token or none")
    if malloc_tuning:
        tune_malloc()
    rejections = Rejections()
    servicer = ParameterServerServicer(backend, info, on_push=on_push,
                                       first_worker_id=first_worker_id, rejections=rejections,
                                       chunk_bytes=chunk_bytes)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_concurrent_streams, thread_name_prefix="ps-grpc"),
        interceptors=[TokenInterceptor(token, rejections)] if token else [],
        maximum_concurrent_rpcs=max_concurrent_streams, options=list(options))
    server.add_generic_rpc_handlers((_handlers(servicer),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    if tls is not None:
        creds = grpc.ssl_server_credentials([(tls.key, tls.cert)], root_certificates=tls.client_ca,
                                            require_client_auth=tls.client_ca is not None)
        bound = server.add_secure_port(address, creds)
    else:
        if not _is_loopback(host):
            log.warning("serving on %s WITHOUT TLS (--insecure): gradients, weights and the "
                        "token cross the network in the clear", host)
        bound = server.add_insecure_port(address)
    if not bound:
        raise OSError(f"could not bind {address}")
    if unix_socket:
        unix = f"unix:{unix_socket}"
        if not (server.add_secure_port(unix, creds) if tls is not None
                else server.add_insecure_port(unix)):
            raise OSError(f"could not bind {unix}")
    server.start()
    for name in (SERVICE, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("parameter server (%d shards) on %s:%d%s%s%s", len(servicer.layout.shards), host,
             bound, f" and unix:{unix_socket}" if unix_socket else "", " with TLS" if tls else "",
             ", token required" if token else "")
    return GrpcServer(server, bound, servicer, health_servicer)
