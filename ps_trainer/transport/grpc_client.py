"""The PS client over gRPC: the same calls as the in-process and Ray clients (`pull`, `push`,
`results`, `retire`, `last_wait`), so `Worker` trains against a server outside Ray unchanged.

Invariants:
- A pull lands each shard's bytes in a preallocated buffer with one copy (from the received
  message into the buffer), all shards concurrently. Each shard has two buffers used in turn,
  so a pull (e.g. the worker's prefetch) never overwrites the array the previous pull returned:
  an array stays valid until the next-but-one pull. A pull of a version this client already
  holds is answered "not modified" by the server and costs no transfer.
- A push is asynchronous (a future), but its bytes are copied before `push` returns (into the
  encoded messages, or with an untuned allocator into a reused send buffer), so the caller may
  zero or reuse its gradient buffer at once. uint16 gradients are bfloat16 bits.
- A push the shard refused for its values (NaN, a version from the future) comes back as the
  shard's rejected `PushResult`, as from the Ray client; every other failure (layout mismatch,
  authentication, transport) raises `GrpcError` naming the call, the code and the reason.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np

from ..core.malloc import tune_malloc
from ..core.shard import PushResult
from ..v1 import parameter_server_pb2 as pb
from ..v1 import parameter_server_pb2_grpc as pb_grpc
from .grpc_wire import (CHUNK_BYTES, RESULT_TRAILER, SERVICE, TOKEN_HEADER, Assembler,
                        ServerLayout, WireError, chunks, decode_chunk_stream,
                        result_from_proto, wire_dtype)


class GrpcError(RuntimeError):
    """A call to the parameter server failed: `code` (grpc.StatusCode), `details` (the server's
    reason), and for a push the shard's recorded `result` when there is one."""

    def __init__(self, what: str, error: grpc.RpcError, result: PushResult | None = None):
        self.code, self.details, self.result = error.code(), error.details(), result
        super().__init__(f"{what} failed: {self.code.name}: {self.details}")


def parse_target(target: str) -> tuple[str, bool]:
    """`grpc://host:port`, `grpcs://host:port` (TLS) or `host:port` -> (host:port, tls?);
    `unix:PATH` (or `unix:///ABSOLUTE_PATH`): a server's Unix domain socket on this machine."""
    if target.startswith("unix:"):
        return target, False
    for scheme, tls in (("grpc://", False), ("grpcs://", True)):
        if target.startswith(scheme):
            return target[len(scheme):], tls
    if "://" in target:
        raise ValueError(f"parameter server address {target!r}: use grpc://HOST:PORT, "
                         f"grpcs://HOST:PORT or unix:PATH")
    return target, False


@dataclass
class _Held:
    index: int  # which of the shard's two buffers holds the last pull
    version: int
    averaged: bool


@dataclass(frozen=True)
class _Push:
    shard: int
    future: grpc.Future


def _identity(b: bytes) -> bytes:
    return b


class GrpcClient:
    """Connects at once (raises ConnectionError if nothing answers within `connect_timeout` s)
    and reads the server's layout; `fingerprint` (this worker's ParamLayout.fingerprint()), if
    given, must match it. TLS with `root_certificates` (PEM bytes; a grpcs:// target uses the
    system's), mutual TLS with `private_key` and `certificate_chain` too. `unix:PATH`: a server's
    Unix domain socket (`serve(unix_socket=PATH)`) on this machine. `options`: gRPC channel
    arguments; `chunk_bytes`: bytes per pushed chunk; `malloc_tuning`: `core.malloc.tune_malloc`."""

    def __init__(self, target: str, token: str | None = None,
                 root_certificates: bytes | None = None, *, private_key: bytes | None = None,
                 certificate_chain: bytes | None = None, fingerprint: str | None = None,
                 connect_timeout: float = 10.0, server_name: str | None = None, options=(),
                 chunk_bytes: int = CHUNK_BYTES, malloc_tuning: bool = True):
        self._encode_now = tune_malloc() if malloc_tuning else False
        self.target, tls = parse_target(target)
        options = list(options) + ([("grpc.ssl_target_name_override", server_name)] if server_name else [])
        if tls or root_certificates or certificate_chain:
            creds = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            self.channel = grpc.secure_channel(self.target, creds, options)
        else:
            self.channel = grpc.insecure_channel(self.target, options)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            self.channel.close()
            raise ConnectionError(f"no parameter server answered at {self.target} within "
                                  f"{connect_timeout:g} s (is `ps-train serve` running there, "
                                  f"with the same TLS setting?)") from None
        self._metadata = ((TOKEN_HEADER, f"Bearer {token}"),) if token else ()
        self._stub = pb_grpc.ParameterServerServiceStub(self.channel)
        # Pull and Push with grpc_wire's chunk codec: chunks are sliced, not parsed into copies.
        self._pull = self.channel.unary_stream(
            f"/{SERVICE}/Pull", request_serializer=pb.PullRequest.SerializeToString,
            response_deserializer=decode_chunk_stream(pb.PullHeader))
        self._push = self.channel.stream_unary(
            f"/{SERVICE}/Push", request_serializer=_identity,
            response_deserializer=pb.PushResponse.FromString)
        self.server_layout = self.layout()
        server_fp = self.server_layout.info.fingerprint
        if fingerprint is not None and fingerprint != server_fp:
            self.close()
            raise ValueError(f"this worker's model has layout {fingerprint!r}, the server at "
                             f"{self.target} holds {self.server_layout.info.model!r} with "
                             f"{server_fp!r}: build the same model (see GrpcClient.layout())")
        self.fingerprint = fingerprint or server_fp
        sizes = self.server_layout.shards
        self._buffers: list[list[np.ndarray]] = [[] for _ in sizes]  # per shard, two in turn
        self._held: list[_Held | None] = [None] * len(sizes)
        self._threads = ThreadPoolExecutor(max(1, len(sizes)), thread_name_prefix="ps-pull")
        self.last_wait = 0.0  # s the shards held the last pull (SSP/BSP)
        self._send: dict[tuple, list] = {}  # (shard, dtype, BN size) -> free send buffers
        self._send_lock = threading.Lock()
        self._pull_lock = threading.Lock()
        self.chunk_bytes = chunk_bytes

    # ---- the four calls of every PS client ----------------------------------------------------
    def pull(self, averaged: bool = False, worker: int | None = None,
             clock: int = 0) -> list[tuple[np.ndarray, int]]:
        """`[weights | BatchNorm statistics]` and version of every shard, fetched concurrently;
        `worker` and `clock` (pushes it made) let a coordinating policy hold the pull."""
        n = len(self._held)
        with self._pull_lock:  # one pull at a time per client: the buffers alternate
            if n == 1:
                got = [self._pull_shard(0, averaged, worker, clock)]
            else:
                got = list(self._threads.map(
                    lambda i: self._pull_shard(i, averaged, worker, clock), range(n)))
        self.last_wait = max(w for _, _, w in got)
        return [(arr, version) for arr, version, _ in got]

    def push(self, shard: int, grad: np.ndarray, version_read: int, worker: int,
             bn_stats: np.ndarray | None) -> _Push:
        """Start sending one gradient (float32, or bfloat16 bits as uint16) and the worker's
        BatchNorm statistics (float32, or None) to `shard`; `results` waits for the answer."""
        bn = np.empty(0, np.float32) if bn_stats is None else bn_stats
        if bn.dtype != np.float32:
            raise ValueError(f"BatchNorm statistics must be float32, got {bn.dtype}")
        header = pb.PushRequest(header=pb.PushHeader(
            shard_id=shard, worker_id=worker, version_read=int(version_read),
            fingerprint=self.fingerprint, dtype=wire_dtype(grad), gradient_count=grad.size,
            batch_norm_count=bn.size))
        if self._encode_now:
            # Encoded now, one copy of `grad` into the messages (their memory is reused from
            # the last push's: tune_malloc), so the caller may zero `grad` as soon as this returns.
            messages = [header.SerializeToString(),
                        *chunks([grad.reshape(-1), bn], self.chunk_bytes)]
            return _Push(shard, self._push.future(iter(messages), metadata=self._metadata))
        # Without a tuned allocator, 100 MB of fresh messages would be 100 MB of page faults:
        # copied now into a reused send buffer instead, encoded chunk by chunk as gRPC sends.
        key = (shard, grad.dtype.str, bn.size)
        with self._send_lock:
            free = self._send.get(key)
            g, b = free.pop() if free else (np.empty(grad.size, grad.dtype), np.empty_like(bn))
        np.copyto(g, grad.reshape(-1))
        np.copyto(b, bn)
        return _Push(shard, self._push.future(self._stream(header, key, g, b),
                                              metadata=self._metadata))

    def _stream(self, header: pb.PushRequest, key, g: np.ndarray, b: np.ndarray):
        """A push's messages; its send buffers go back to the pool once every chunk is out."""
        yield header.SerializeToString()
        yield from chunks([g, b], self.chunk_bytes)
        with self._send_lock:
            free = self._send.setdefault(key, [])
            if len(free) < 3:
                free.append((g, b))

    def results(self, handles: list[_Push]) -> list[PushResult]:
        out = []
        for h in handles:
            try:
                out.append(result_from_proto(h.future.result()))
            except grpc.RpcError as e:
                result = _recorded(e)
                if result is None or e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise GrpcError(f"push to shard {h.shard} at {self.target}", e, result) from None
                out.append(result)  # refused for its values, recorded: as the Ray client says
        return out

    def retire(self, worker: int) -> None:
        self._call("RetireWorker", pb.RetireWorkerRequest(worker_id=worker))

    # ---- joining and reading a server ---------------------------------------------------------
    def layout(self) -> ServerLayout:
        """The model the server holds and its shard plan (`.specs()` for the Worker)."""
        return ServerLayout.from_proto(self._call("GetLayout", pb.GetLayoutRequest()))

    def register(self, worker_id: int | None = None) -> tuple[int, int]:
        """(worker id, clock): a new id nobody else uses on this server, or `worker_id` to
        reconnect, with the pushes the shards already recorded for it."""
        req = pb.RegisterWorkerRequest() if worker_id is None else \
            pb.RegisterWorkerRequest(worker_id=worker_id)
        got = self._call("RegisterWorker", req)
        return got.worker_id, got.clock

    def stats(self) -> dict:
        """Every shard's counters (as ShardState.stats()) and the server's own rejections."""
        got = self._call("GetStats", pb.GetStatsRequest())
        shards = [{"shard": s.shard_id, "version": s.version, "pushes": s.pushes,
                   "counters": dict(s.outcomes),
                   "worker_counters": {w.worker_id: dict(w.outcomes) for w in s.workers},
                   "reject_reasons": dict(s.reject_reasons), "waits": s.waits,
                   "mean_staleness": s.mean_staleness} for s in got.shards]
        return {"shards": shards, "server_rejections": dict(got.server_rejections)}

    def close(self) -> None:
        if hasattr(self, "_threads"):
            self._threads.shutdown(wait=False, cancel_futures=True)
        self.channel.close()

    def __enter__(self) -> "GrpcClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals -------------------------------------------------------------------------------
    def _call(self, name: str, request):
        try:
            return getattr(self._stub, name)(request, metadata=self._metadata)
        except grpc.RpcError as e:
            raise GrpcError(f"{name} at {self.target}", e) from None

    def _pull_shard(self, i: int, averaged: bool, worker: int | None,
                    clock: int) -> tuple[np.ndarray, int, float]:
        held = self._held[i]
        req = pb.PullRequest(shard_id=i, averaged=averaged, clock=clock)
        if worker is not None:
            req.worker_id = worker
        if held is not None and held.averaged == averaged:
            req.if_newer_than = held.version
        try:
            stream = self._pull(req, metadata=self._metadata)
            header = next(stream)
            if not isinstance(header, pb.PullHeader):
                raise ValueError(f"pull of shard {i}: the server's reply did not start with a "
                                 f"header ({header!r})")
            if header.not_modified:
                return self._buffers[i][held.index], held.version, header.waited_seconds
            index = 0 if held is None else 1 - held.index
            buf = self._buffer(i, index, header.element_count)
            assembler = Assembler([buf])
            for msg in stream:
                if isinstance(msg, WireError):
                    raise msg
                if not isinstance(msg, tuple):
                    raise ValueError(f"pull of shard {i}: the server sent {msg!r} among chunks")
                assembler.add(*msg)
            assembler.finish()
        except grpc.RpcError as e:
            raise GrpcError(f"pull of shard {i} from {self.target}", e) from None
        self._held[i] = _Held(index, header.version, averaged)
        return buf, header.version, header.waited_seconds

    def _buffer(self, i: int, index: int, elements: int) -> np.ndarray:
        p, b = self.server_layout.shards[i]
        if elements != p + b:
            raise ValueError(f"pull of shard {i}: the server announced {elements} elements, its "
                             f"layout says {p + b}")
        bufs = self._buffers[i]
        while len(bufs) <= index:
            bufs.append(np.empty(p + b, np.float32))  # (P_i + B_i,) landed into, reused
        return bufs[index]


def _recorded(error: grpc.RpcError) -> PushResult | None:
    """The shard's record of a refused push, from the call's trailing metadata."""
    for key, value in error.trailing_metadata() or ():
        if key == RESULT_TRAILER:
            return result_from_proto(pb.PushResponse.FromString(value))
    return None
