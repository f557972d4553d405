"""A Ray run's shard served over gRPC (what `ps-train --serve-grpc` builds on): a real local Ray
with one ParameterServerShard actor, reached by GrpcClient through a RayBackend server."""

import grpc
import numpy as np
import pytest

from ps_trainer.core import LRSchedule, NesterovMomentum, PolyakAverage
from ps_trainer.core.policy import Async
from ps_trainer.transport.grpc_backend import RayBackend
from ps_trainer.transport.grpc_client import GrpcClient
from ps_trainer.transport.grpc_server import serve
from ps_trainer.transport.grpc_wire import SERVICE, ModelInfo
from ps_trainer.transport.ray_shard import ParameterServerShard, RayClient
from ps_trainer.v1 import parameter_server_pb2 as pb

N, B = 1000, 4


@pytest.fixture
def ray_shard(ray_local):
    actor = ray_local.remote(ParameterServerShard).options(num_cpus=0, max_concurrency=4).remote(
        0, np.zeros(N, np.float32), np.ones(B, np.float32), optimizer=NesterovMomentum(0.9, 0.0),
        schedule=LRSchedule(0.1), policy=Async(), averager=PolyakAverage(0.5))
    yield ray_local, actor
    ray_local.kill(actor)


def test_an_outside_worker_pulls_and_pushes_a_ray_shard_and_its_counters_move(ray_shard):
    ray, actor = ray_shard
    pushes = []
    srv = serve(RayBackend([actor]), ModelInfo("m", "fp"), first_worker_id=2,
                on_push=pushes.append)
    try:
        with GrpcClient(f"grpc://127.0.0.1:{srv.port}") as c:
            assert c.layout().shards == ((N, B),)
            wid, clock = c.register()
            assert (wid, clock) == (2, 0)  # 0 and 1 are the Ray run's own workers
            (w, v), = c.pull(worker=wid)
            assert v == 0 and not w[:N].any() and (w[N:] == 1).all()
            g = np.ones(N, np.float32)
            results = c.results([c.push(0, g, v, wid, np.full(B, 3.0, np.float32)),
                                 c.push(0, g, v, wid, None)])
            # concurrent pushes: either may arrive first
            assert sorted((r.outcome, r.version, r.staleness) for r in results) == \
                [("applied", 1, 0), ("applied", 2, 1)]
            nan, = c.results([c.push(0, np.full(N, np.nan, np.float32), 0, wid, None)])
            assert nan.outcome == "rejected" and "NaN" in nan.reason
            # A Ray worker's pull sees the outside worker's pushes: the same shard.
            (rw, rv), = RayClient([actor]).pull()
            assert rv == 2 and rw[:N].max() < 0 and (rw[N:] == 3.0).all()
            (w2, v2), = c.pull(worker=wid, clock=3)
            np.testing.assert_array_equal(w2, rw)
            assert c.register(wid) == (wid, 3)  # reconnecting: its three pushes
            stats = c.stats()
        actor_stats = ray.get(actor.stats.remote())
        assert actor_stats["counters"] == {"applied": 2, "rejected": 1} == stats["shards"][0]["counters"]
        assert actor_stats["worker_counters"] == {2: {"applied": 2, "rejected": 1}}
        assert [r.outcome for r in pushes] == ["applied", "applied", "rejected"]
        assert stats["server_rejections"] == {"non_finite": 1}

        # A stream refused before the shard saw it is recorded by the actor too, so its
        # per-worker clock stays the worker's (SSP, BSP), and by the server.
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            push = ch.stream_unary(f"/{SERVICE}/Push", request_serializer=lambda b: b,
                                   response_deserializer=pb.PushResponse.FromString)
            head = pb.PushRequest(header=pb.PushHeader(
                shard_id=0, worker_id=2, version_read=2, fingerprint="fp",
                dtype=pb.DTYPE_FLOAT32, gradient_count=N)).SerializeToString()
            gap = pb.PushRequest(chunk=pb.Chunk(offset=8, data=b"\0" * 8)).SerializeToString()
            with pytest.raises(grpc.RpcError) as err:
                push(iter([head, gap]), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        actor_stats = ray.get(actor.stats.remote())
        assert actor_stats["version"] == 2
        assert actor_stats["worker_counters"][2] == {"applied": 2, "rejected": 2}
        assert srv.rejections == {"non_finite": 1, "chunk_order": 1}
        assert len(pushes) == 4
    finally:
        srv.stop(grace=None)
