"""What travels on the gRPC wire (protos/ps_trainer/v1/parameter_server.proto), shared by the
server and the client: dtypes, push outcomes, the model description, and the chunked byte streams.

A shard of a large model is ~100 MB and gRPC refuses messages over 4 MiB by default, so a tensor
travels as a header message and then chunks of raw little-endian bytes (`CHUNK_BYTES`) at byte
offsets. Invariants of a stream, checked by `Assembler` before anything is applied:
- chunks come in order, without gaps or overlaps, and stop exactly at the announced size;
- the receiver allocates what the header announced, after checking it against the shard's size,
  never more (a client cannot make the server allocate beyond the shard);
- bytes are copied once, from the message into the preallocated destination.

The chunk messages are encoded and decoded here by hand (`encode_chunk`, `decode_chunk_stream`):
the bytes are exactly what protobuf writes and reads (tests check both ways), but a chunk's data
is sliced out of the arrays and the received bytes with memoryviews, instead of the three extra
copies of 100 MB that building and parsing protobuf `bytes` fields cost in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError

from ..core.layout import ShardSpec
from ..core.policy import OUTCOMES
from ..core.shard import BFLOAT16_BITS, PushResult
from ..v1 import parameter_server_pb2 as pb

SERVICE = "ps_trainer.v1.ParameterServerService"
CHUNK_BYTES = 1 << 20  # bytes of tensor data per message: well under gRPC's 4 MiB default limit
TOKEN_HEADER = "authorization"  # metadata key; the value is "Bearer <token>"
RESULT_TRAILER = "ps-push-result-bin"  # trailing metadata of a failed push the shard recorded

# ---- dtypes and outcomes ----------------------------------------------------------------------
# numpy has no bfloat16: its 16-bit patterns travel (and are held) as uint16, see core/shard.py.
WIRE_DTYPES = {pb.DTYPE_FLOAT32: np.dtype("<f4"), pb.DTYPE_BFLOAT16: np.dtype("<u2")}
DTYPE_NAMES = {pb.DTYPE_FLOAT32: "float32", pb.DTYPE_BFLOAT16: "bfloat16"}


def wire_dtype(arr: np.ndarray) -> int:
    """The Dtype enum of a gradient array: float32, or uint16 meaning bfloat16 bits."""
    if arr.dtype == np.float32:
        return pb.DTYPE_FLOAT32
    if arr.dtype == BFLOAT16_BITS:
        return pb.DTYPE_BFLOAT16
    raise ValueError(f"gradient dtype {arr.dtype}; send float32, or bfloat16 as uint16 bits "
                     f"(core.shard.to_bfloat16_bits)")


OUTCOME_ENUM = {name: pb.PushOutcome.Value(f"PUSH_OUTCOME_{name.upper()}") for name in OUTCOMES}
OUTCOME_NAME = {v: k for k, v in OUTCOME_ENUM.items()}


def result_to_proto(r: PushResult) -> pb.PushResponse:
    return pb.PushResponse(shard_id=r.shard, worker_id=r.worker, outcome=OUTCOME_ENUM[r.outcome],
                           version_read=r.version_read, staleness=r.staleness, version=r.version,
                           lr=r.lr, reason=r.reason)


def result_from_proto(m: pb.PushResponse) -> PushResult:
    return PushResult(m.shard_id, m.worker_id, OUTCOME_NAME[m.outcome], m.version_read,
                      m.staleness, m.version, m.lr, m.reason)


# ---- the model a server holds -------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """What GetLayout says about the model, besides the shard sizes the backend knows."""

    model: str  # registry name (ps_trainer.models.build)
    fingerprint: str  # ParamLayout.fingerprint(): a push must carry the same
    num_classes: int = 0
    in_channels: int = 0
    image_size: int = 0
    policy: str = ""  # the staleness policy's name
    push_every: int = 0  # Downpour's n_push the server suggests (0: none)
    fetch_every: int = 0  # Downpour's n_fetch the server suggests (0: none)


@dataclass(frozen=True)
class ServerLayout:
    """GetLayout's answer: the model and, per shard, (parameters, BatchNorm statistics) counts."""

    info: ModelInfo
    shards: tuple[tuple[int, int], ...]

    def specs(self) -> list[ShardSpec]:
        """The shard plan as `ParamLayout.shards` writes it: contiguous ranges in shard order."""
        out, p, b = [], 0, 0
        for i, (np_, nb) in enumerate(self.shards):
            out.append(ShardSpec(i, (p, p + np_), (b, b + nb)))
            p, b = p + np_, b + nb
        return out

    def to_proto(self) -> pb.GetLayoutResponse:
        i = self.info
        return pb.GetLayoutResponse(
            model=i.model, num_classes=i.num_classes, in_channels=i.in_channels,
            image_size=i.image_size, dtype=pb.DTYPE_FLOAT32, fingerprint=i.fingerprint,
            policy=i.policy, push_every=i.push_every, fetch_every=i.fetch_every,
            shards=[pb.ShardInfo(shard_id=k, param_count=p, buffer_count=b)
                    for k, (p, b) in enumerate(self.shards)])

    @classmethod
    def from_proto(cls, m: pb.GetLayoutResponse) -> "ServerLayout":
        info = ModelInfo(m.model, m.fingerprint, m.num_classes, m.in_channels, m.image_size,
                         m.policy, m.push_every, m.fetch_every)
        shards = sorted(m.shards, key=lambda s: s.shard_id)
        return cls(info, tuple((s.param_count, s.buffer_count) for s in shards))


# ---- chunk messages, by hand -------------------------------------------------------------------
# PullResponse and PushRequest are both `oneof kind { Header header = 1; Chunk chunk = 2; }` and
# Chunk is `{ uint64 offset = 1; bytes data = 2; }`: protobuf's wire format is tag, length, bytes.
_LEN, _VARINT = 2, 0
_CHUNK_TAG = bytes([2 << 3 | _LEN])  # field 2 (chunk), length-delimited
_OFFSET_TAG = bytes([1 << 3 | _VARINT])
_DATA_TAG = bytes([2 << 3 | _LEN])


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("bad_message", "a malformed protobuf varint")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def encode_chunk(offset: int, data) -> bytes:
    """A PullResponse/PushRequest holding one Chunk: the same bytes as protobuf writes, with
    `data` (a memoryview of bytes) copied once, into the message."""
    inner_head = (_OFFSET_TAG + _varint(offset) if offset else b"") + \
        (_DATA_TAG + _varint(len(data)) if len(data) else b"")
    return b"".join((_CHUNK_TAG, _varint(len(inner_head) + len(data)), inner_head, data))


def _fields(buf, pos: int, end: int):
    """(field number, value) of each field in buf[pos:end]: an int for varints, (start, stop)
    for length-delimited ones; other wire types are skipped, as protobuf skips unknown fields."""
    while pos < end:
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == _LEN:
            size, pos = _read_varint(buf, pos)
            value, pos = (pos, pos + size), pos + size
        elif wire == 1:  # fixed64
            value, pos = None, pos + 8
        elif wire == 5:  # fixed32
            value, pos = None, pos + 4
        else:
            raise WireError("bad_message", f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise WireError("bad_message", "a protobuf field runs past the end of its message")
        yield field, value


def decode_chunk_stream(header_type):
    """A deserializer for PullResponse / PushRequest bytes: the header message (parsed by
    protobuf: it is small), a `(offset, memoryview of the data)` for a chunk (no copy), None for
    an empty message, or a `WireError` (returned: a deserializer that raises ends the call with
    INTERNAL before the servicer could count it)."""

    def decode(raw: bytes):
        try:
            return _decode(raw)
        except (WireError, DecodeError) as e:  # returned, not raised: the servicer counts it
            return WireError("bad_message", f"undecodable message: {e}")

    def _decode(raw: bytes):
        view = memoryview(raw)
        out = None
        for field, value in _fields(view, 0, len(view)):
            if field == 1 and isinstance(value, tuple):
                out = header_type.FromString(view[value[0]:value[1]])
            elif field == 2 and isinstance(value, tuple):
                offset, data = 0, view[0:0]
                for f, v in _fields(view, *value):
                    if f == 1 and isinstance(v, int):
                        offset = v
                    elif f == 2 and isinstance(v, tuple):
                        data = view[v[0]:v[1]]
                out = (offset, data)
        return out

    return decode


def chunks(segments, chunk_bytes: int = CHUNK_BYTES):
    """Encoded chunk messages of the byte payload `segments` (arrays, one after another).
    A chunk never spans two segments; offsets run over the whole payload."""
    base = 0
    for seg in segments:
        mv = memoryview(np.ascontiguousarray(seg)).cast("B")
        for start in range(0, len(mv), chunk_bytes):
            yield encode_chunk(base + start, mv[start:start + chunk_bytes])
        base += len(mv)


# ---- reassembly --------------------------------------------------------------------------------
class WireError(ValueError):
    """A malformed stream: `key` names the reason for the counters, the message says what."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class Assembler:
    """Receives a chunked payload into preallocated arrays (the segments, one after another):
    in order, without gaps or overlaps, no more bytes than they hold, one copy per byte."""

    def __init__(self, segments: list[np.ndarray]):
        self.views = [memoryview(s).cast("B") for s in segments]
        self.total = sum(len(v) for v in self.views)  # bytes
        self.received = 0  # bytes

    def add(self, offset: int, data: memoryview) -> None:
        if offset != self.received:
            what = "overlaps bytes already received" if offset < self.received else "leaves a gap"
            raise WireError("chunk_order", f"chunk at byte {offset} {what}: expected byte "
                                           f"{self.received} (chunks must come in order)")
        if len(data) > self.total - self.received:
            raise WireError("oversize", f"chunk ends at byte {offset + len(data)}, past the "
                                        f"{self.total} bytes the header announced")
        end, base = offset + len(data), 0
        for v in self.views:  # the chunk may straddle segments: copy each part where it goes
            lo, hi = max(offset, base), min(end, base + len(v))
            if lo < hi:
                v[lo - base:hi - base] = data[lo - offset:hi - offset]
            base += len(v)
        self.received += len(data)

    def finish(self) -> None:
        if self.received != self.total:
            raise WireError("truncated", f"stream ended after {self.received} of the "
                                         f"{self.total} bytes its header announced")
