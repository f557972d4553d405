from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[Dtype]
    DTYPE_FLOAT32: _ClassVar[Dtype]
    DTYPE_BFLOAT16: _ClassVar[Dtype]

class PushOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PUSH_OUTCOME_UNSPECIFIED: _ClassVar[PushOutcome]
    PUSH_OUTCOME_APPLIED: _ClassVar[PushOutcome]
    PUSH_OUTCOME_SCALED: _ClassVar[PushOutcome]
    PUSH_OUTCOME_COMPENSATED: _ClassVar[PushOutcome]
    PUSH_OUTCOME_AGGREGATED: _ClassVar[PushOutcome]
    PUSH_OUTCOME_REJECTED: _ClassVar[PushOutcome]
DTYPE_UNSPECIFIED: Dtype
DTYPE_FLOAT32: Dtype
DTYPE_BFLOAT16: Dtype
PUSH_OUTCOME_UNSPECIFIED: PushOutcome
PUSH_OUTCOME_APPLIED: PushOutcome
PUSH_OUTCOME_SCALED: PushOutcome
PUSH_OUTCOME_COMPENSATED: PushOutcome
PUSH_OUTCOME_AGGREGATED: PushOutcome
PUSH_OUTCOME_REJECTED: PushOutcome

class Chunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetLayoutRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShardInfo(_message.Message):
    __slots__ = ("shard_id", "param_count", "buffer_count")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    PARAM_COUNT_FIELD_NUMBER: _ClassVar[int]
    BUFFER_COUNT_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    param_count: int
    buffer_count: int
    def __init__(self, shard_id: _Optional[int] = ..., param_count: _Optional[int] = ..., buffer_count: _Optional[int] = ...) -> None: ...

class GetLayoutResponse(_message.Message):
    __slots__ = ("model", "num_classes", "in_channels", "image_size", "shards", "dtype", "fingerprint", "policy", "push_every", "fetch_every")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    IN_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PUSH_EVERY_FIELD_NUMBER: _ClassVar[int]
    FETCH_EVERY_FIELD_NUMBER: _ClassVar[int]
    model: str
    num_classes: int
    in_channels: int
    image_size: int
    shards: _containers.RepeatedCompositeFieldContainer[ShardInfo]
    dtype: Dtype
    fingerprint: str
    policy: str
    push_every: int
    fetch_every: int
    def __init__(self, model: _Optional[str] = ..., num_classes: _Optional[int] = ..., in_channels: _Optional[int] = ..., image_size: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[ShardInfo, _Mapping]]] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., fingerprint: _Optional[str] = ..., policy: _Optional[str] = ..., push_every: _Optional[int] = ..., fetch_every: _Optional[int] = ...) -> None: ...

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    def __init__(self, worker_id: _Optional[int] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("worker_id", "clock")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    clock: int
    def __init__(self, worker_id: _Optional[int] = ..., clock: _Optional[int] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("shard_id", "averaged", "worker_id", "clock", "if_newer_than")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    AVERAGED_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    IF_NEWER_THAN_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    averaged: bool
    worker_id: int
    clock: int
    if_newer_than: int
    def __init__(self, shard_id: _Optional[int] = ..., averaged: _Optional[bool] = ..., worker_id: _Optional[int] = ..., clock: _Optional[int] = ..., if_newer_than: _Optional[int] = ...) -> None: ...

class PullHeader(_message.Message):
    __slots__ = ("version", "not_modified", "element_count", "param_count", "dtype", "waited_seconds")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NOT_MODIFIED_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    PARAM_COUNT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    WAITED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    not_modified: bool
    element_count: int
    param_count: int
    dtype: Dtype
    waited_seconds: float
    def __init__(self, version: _Optional[int] = ..., not_modified: _Optional[bool] = ..., element_count: _Optional[int] = ..., param_count: _Optional[int] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., waited_seconds: _Optional[float] = ...) -> None: ...

class PullResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PullHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[PullHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class PushHeader(_message.Message):
    __slots__ = ("shard_id", "worker_id", "version_read", "fingerprint", "dtype", "gradient_count", "batch_norm_count")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_READ_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    BATCH_NORM_COUNT_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    worker_id: int
    version_read: int
    fingerprint: str
    dtype: Dtype
    gradient_count: int
    batch_norm_count: int
    def __init__(self, shard_id: _Optional[int] = ..., worker_id: _Optional[int] = ..., version_read: _Optional[int] = ..., fingerprint: _Optional[str] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., gradient_count: _Optional[int] = ..., batch_norm_count: _Optional[int] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PushHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[PushHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("shard_id", "worker_id", "outcome", "version_read", "staleness", "version", "lr", "reason")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    VERSION_READ_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    worker_id: int
    outcome: PushOutcome
    version_read: int
    staleness: int
    version: int
    lr: float
    reason: str
    def __init__(self, shard_id: _Optional[int] = ..., worker_id: _Optional[int] = ..., outcome: _Optional[_Union[PushOutcome, str]] = ..., version_read: _Optional[int] = ..., staleness: _Optional[int] = ..., version: _Optional[int] = ..., lr: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class RetireWorkerRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    def __init__(self, worker_id: _Optional[int] = ...) -> None: ...

class RetireWorkerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerCounters(_message.Message):
    __slots__ = ("worker_id", "outcomes")
    class OutcomesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    outcomes: _containers.ScalarMap[str, int]
    def __init__(self, worker_id: _Optional[int] = ..., outcomes: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ShardStats(_message.Message):
    __slots__ = ("shard_id", "version", "pushes", "outcomes", "workers", "reject_reasons", "waits", "mean_staleness")
    class OutcomesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class RejectReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PUSHES_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    REJECT_REASONS_FIELD_NUMBER: _ClassVar[int]
    WAITS_FIELD_NUMBER: _ClassVar[int]
    MEAN_STALENESS_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    version: int
    pushes: int
    outcomes: _containers.ScalarMap[str, int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerCounters]
    reject_reasons: _containers.ScalarMap[str, int]
    waits: int
    mean_staleness: float
    def __init__(self, shard_id: _Optional[int] = ..., version: _Optional[int] = ..., pushes: _Optional[int] = ..., outcomes: _Optional[_Mapping[str, int]] = ..., workers: _Optional[_Iterable[_Union[WorkerCounters, _Mapping]]] = ..., reject_reasons: _Optional[_Mapping[str, int]] = ..., waits: _Optional[int] = ..., mean_staleness: _Optional[float] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("shards", "server_rejections")
    class ServerRejectionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    SERVER_REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[ShardStats]
    server_rejections: _containers.ScalarMap[str, int]
    def __init__(self, shards: _Optional[_Iterable[_Union[ShardStats, _Mapping]]] = ..., server_rejections: _Optional[_Mapping[str, int]] = ...) -> None: ...
