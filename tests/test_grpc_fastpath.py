"""The gRPC transport's speed-ups keep its behaviour: a snapshot's chunk messages are encoded once
and served to every reader of that version (and never to a reader of another snapshot), a Unix
domain socket serves the same protocol, and a push encoded at once (tuned allocator) lands
exactly as one streamed from a send buffer (untuned)."""

import os

import numpy as np
import pytest
import torch

from ps_trainer.core import LRSchedule, NesterovMomentum, PolyakAverage, ShardState
from ps_trainer.transport import grpc_server
from ps_trainer.transport.grpc_backend import LocalBackend
from ps_trainer.transport.grpc_client import GrpcClient, GrpcError, parse_target
from ps_trainer.transport.grpc_server import serve
from ps_trainer.core.malloc import tune_malloc
from ps_trainer.transport.grpc_wire import ModelInfo

N, B = 1000, 6  # parameters and BatchNorm statistics: (N + B) * 4 = 4024 bytes
CHUNK = 1024  # bytes per chunk: 4 chunks a pull


def shard(seed=0):
    rng = np.random.default_rng(seed)
    return ShardState(0, rng.standard_normal(N, dtype=np.float32), np.ones(B, np.float32),
                      optimizer=NesterovMomentum(0.9, 1e-4), schedule=LRSchedule(0.1),
                      averager=PolyakAverage(0.9))


@pytest.fixture
def started():
    servers, clients = [], []
    yield servers, clients
    for c in clients:
        c.close()
    for s in servers:
        s.stop(grace=None)


def test_a_snapshot_is_encoded_once_for_every_reader(started, monkeypatch):
    servers, clients = started
    calls = []
    real = grpc_server.encode_chunk
    monkeypatch.setattr(grpc_server, "encode_chunk", lambda o, d: calls.append(o) or real(o, d))
    s = shard()
    srv = serve(LocalBackend([s]), ModelInfo("m", "fp"), chunk_bytes=CHUNK)
    servers.append(srv)
    a, b = (GrpcClient(f"grpc://127.0.0.1:{srv.port}") for _ in range(2))
    clients += [a, b]
    expected, version = s.snapshot()
    for c in (a, b, a):  # the second pull of `a` is "not modified": no chunks at all
        (arr, v), = c.pull(worker=0)
        assert v == version and np.array_equal(arr, expected)
    assert calls == [0, 1024, 2048, 3072]  # one encoding of 4 chunks, for two readers
    grad = np.full(N, 0.01, np.float32)
    assert a.results([a.push(0, grad, version, 0, None)])[0].outcome == "applied"
    (arr, v), = b.pull(worker=1)  # a new version: encoded afresh, never the old bytes
    expected, version = s.snapshot()
    assert v == version == 1 and np.array_equal(arr, expected)
    assert len(calls) == 8
    # Both weight sets are cached side by side, each for its own snapshot.
    (avg, _), = a.pull(averaged=True)
    assert np.array_equal(avg, s.snapshot(averaged=True)[0])
    assert len(calls) == 12


def test_the_cache_never_serves_another_snapshot_of_the_same_version():
    """A restored shard can reach a version number again with other weights: the cache is keyed
    by the snapshot itself, not only its version."""
    servicer = grpc_server.ParameterServerServicer(LocalBackend([shard()]), ModelInfo("m", "fp"),
                                                   chunk_bytes=CHUNK)
    one, two = np.zeros(N + B, np.float32), np.ones(N + B, np.float32)
    first = servicer._encoded(0, False, 5, one)
    assert servicer._encoded(0, False, 5, one) is first
    other = servicer._encoded(0, False, 5, two)
    assert other is not first
    assert b"".join(other.message(k) for k in range(other.count)) != \
        b"".join(first.message(k) for k in range(first.count))


def test_unix_socket_serves_the_same_protocol(started, tmp_path):
    servers, clients = started
    path = str(tmp_path / "ps.sock")
    s = shard()
    srv = serve(LocalBackend([s]), ModelInfo("m", "fp"), chunk_bytes=CHUNK, unix_socket=path,
                token="sesame")
    servers.append(srv)
    assert os.path.exists(path) and srv.port > 0  # the TCP port as well
    c = GrpcClient(f"unix:{path}", token="sesame")
    clients.append(c)
    (arr, v), = c.pull(worker=0)
    assert np.array_equal(arr, s.snapshot()[0])
    assert c.results([c.push(0, np.full(N, 0.01, np.float32), v, 0, None)])[0].outcome == "applied"
    with pytest.raises(GrpcError, match="UNAUTHENTICATED"):  # unix:///absolute/path, no token
        GrpcClient(f"unix://{path}")
    srv.stop(grace=None)
    assert not os.path.exists(path)  # gRPC removes its socket file


def test_parse_target():
    assert parse_target("unix:/tmp/x.sock") == ("unix:/tmp/x.sock", False)
    assert parse_target("unix:///tmp/x.sock") == ("unix:///tmp/x.sock", False)
    assert parse_target("grpc://h:1") == ("h:1", False)
    with pytest.raises(ValueError, match="unix:PATH"):
        parse_target("http://h:1")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_push_encoded_at_once_equals_one_from_a_send_buffer(started, dtype):
    """tune_malloc on: the push is encoded before `push` returns; off: copied into a reused send
    buffer and encoded as gRPC sends. The shard ends bit-identical, and the caller may zero its
    gradient as soon as `push` returns either way."""
    from ps_trainer.core.shard import to_bfloat16_bits

    servers, clients = started
    shards = [shard(), shard()]
    ports = []
    for s in shards:
        srv = serve(LocalBackend([s]), ModelInfo("m", "fp"), chunk_bytes=CHUNK)
        servers.append(srv)
        ports.append(srv.port)
    tuned = GrpcClient(f"127.0.0.1:{ports[0]}", chunk_bytes=CHUNK)
    plain = GrpcClient(f"127.0.0.1:{ports[1]}", chunk_bytes=CHUNK, malloc_tuning=False)
    clients += [tuned, plain]
    assert tuned._encode_now == tune_malloc() and plain._encode_now is False
    rng = np.random.default_rng(3)
    for step in range(3):
        g = rng.standard_normal(N, dtype=np.float32) * 1e-2
        for c in (tuned, plain):
            grad = to_bfloat16_bits(torch.from_numpy(g)) if dtype == "bfloat16" else g.copy()
            bn = np.full(B, 2.0 + step, np.float32)
            handle = c.push(0, grad, step, 0, bn)
            grad[:] = 0  # reusable at once
            bn[:] = np.nan
            assert c.results([handle])[0].outcome == "applied"
    a, b = (s.snapshot() for s in shards)
    assert a[1] == b[1] == 3 and np.array_equal(a[0], b[0])
