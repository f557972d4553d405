"""The gRPC parameter server, for real on 127.0.0.1 (a free port each time): training through it,
equality with the in-process shard, a full-size round trip, every malformed push, the token, TLS,
the bind rule, health, reflection, worker ids and coordinating policies."""

import copy
import logging
import subprocess
import threading
import time

import grpc
import numpy as np
import pytest
import torch

from ps_trainer.core import (FlatModel, LRSchedule, NesterovMomentum, ParamLayout, PolyakAverage,
                             ShardState)
from ps_trainer.core.policy import BoundedStaleness
from ps_trainer.core.shard import to_bfloat16_bits
from ps_trainer.data import Batches, load_dataset
from ps_trainer.models import build
from ps_trainer.transport.grpc_backend import LocalBackend
from ps_trainer.transport.grpc_client import GrpcClient, GrpcError
from ps_trainer.transport.grpc_server import TLS, serve
from ps_trainer.transport.grpc_wire import SERVICE, ModelInfo
from ps_trainer.v1 import parameter_server_pb2 as pb
from ps_trainer.worker.worker import Worker

N, B = 10, 2  # parameters and BatchNorm statistics of the small shard


def small_shards(num=1, policy=None):
    return [ShardState(i, np.arange(N, dtype=np.float32), np.ones(B, np.float32),
                       optimizer=NesterovMomentum(0.9, 0.0), schedule=LRSchedule(0.1),
                       averager=PolyakAverage(0.9), policy=policy) for i in range(num)]


@pytest.fixture
def server():
    """A factory: serve(shards, **kw) on a free loopback port; every server stopped after."""
    started = []

    def start(shards, info=ModelInfo("small", "fp-small"), **kw):
        s = serve(LocalBackend(shards), info, port=0, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop(grace=None)


def raw_call(port, method, messages, metadata=(), timeout=10):
    """Call Push / Pull with hand-made protobuf bytes (what a buggy or hostile client sends)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        if method == "Push":
            call = ch.stream_unary(f"/{SERVICE}/Push", request_serializer=lambda b: b,
                                   response_deserializer=pb.PushResponse.FromString)
            return call(iter(messages), metadata=metadata, timeout=timeout)
        call = ch.unary_stream(f"/{SERVICE}/Pull", request_serializer=pb.PullRequest.SerializeToString,
                               response_deserializer=pb.PullResponse.FromString)
        return list(call(messages, metadata=metadata, timeout=timeout))


def header(**kw):
    h = dict(shard_id=0, worker_id=7, version_read=0, fingerprint="fp-small", dtype=pb.DTYPE_FLOAT32,
             gradient_count=N, batch_norm_count=B) | kw
    return pb.PushRequest(header=pb.PushHeader(**h)).SerializeToString()


def chunk(offset, data):
    return pb.PushRequest(chunk=pb.Chunk(offset=offset, data=bytes(data))).SerializeToString()


def payload(grad=None, bn=None):
    grad = np.full(N, 0.5, np.float32) if grad is None else grad
    bn = np.full(B, 3.0, np.float32) if bn is None else bn
    return grad.tobytes() + bn.tobytes()


GOOD = payload()
NAN = payload(grad=np.array([1.0] * (N - 1) + [np.nan], np.float32))
INF_BN = payload(bn=np.array([np.inf, 1.0], np.float32))

# name, messages, status code, the server's counter, recorded by the shard?
BAD_PUSHES = [
    ("another layout", [header(fingerprint="other"), chunk(0, GOOD)],
     grpc.StatusCode.FAILED_PRECONDITION, "layout_mismatch", True),
    ("wrong gradient size", [header(gradient_count=N - 1), chunk(0, GOOD[4:])],
     grpc.StatusCode.INVALID_ARGUMENT, "bad_size", True),
    ("wrong BatchNorm size", [header(batch_norm_count=B + 1), chunk(0, GOOD + b"\0" * 4)],
     grpc.StatusCode.INVALID_ARGUMENT, "bad_size", True),
    ("a header asking for a terabyte", [header(gradient_count=1 << 38)],
     grpc.StatusCode.INVALID_ARGUMENT, "bad_size", True),
    ("no dtype", [header(dtype=pb.DTYPE_UNSPECIFIED), chunk(0, GOOD)],
     grpc.StatusCode.INVALID_ARGUMENT, "bad_dtype", True),
    ("unknown dtype", [header(dtype=9), chunk(0, GOOD)],
     grpc.StatusCode.INVALID_ARGUMENT, "bad_dtype", True),
    ("unknown shard", [header(shard_id=3), chunk(0, GOOD)],
     grpc.StatusCode.INVALID_ARGUMENT, "bad_shard", False),
    ("a gap between chunks", [header(), chunk(0, GOOD[:16]), chunk(20, GOOD[20:])],
     grpc.StatusCode.INVALID_ARGUMENT, "chunk_order", True),
    ("overlapping chunks", [header(), chunk(0, GOOD[:16]), chunk(12, GOOD[12:])],
     grpc.StatusCode.INVALID_ARGUMENT, "chunk_order", True),
    ("chunks out of order", [header(), chunk(16, GOOD[16:]), chunk(0, GOOD[:16])],
     grpc.StatusCode.INVALID_ARGUMENT, "chunk_order", True),
    ("a truncated stream", [header(), chunk(0, GOOD[:30])],
     grpc.StatusCode.INVALID_ARGUMENT, "truncated", True),
    ("more bytes than announced", [header(), chunk(0, GOOD), chunk(len(GOOD), b"\0" * 4)],
     grpc.StatusCode.INVALID_ARGUMENT, "oversize", True),
    ("a NaN in the gradient", [header(), chunk(0, NAN)],
     grpc.StatusCode.INVALID_ARGUMENT, "non_finite", True),
    ("an Inf in the BatchNorm statistics", [header(), chunk(0, INF_BN)],
     grpc.StatusCode.INVALID_ARGUMENT, "non_finite", True),
    ("a version from the future", [header(version_read=5), chunk(0, GOOD)],
     grpc.StatusCode.INVALID_ARGUMENT, "version_read", True),
    ("no header", [chunk(0, GOOD)], grpc.StatusCode.INVALID_ARGUMENT, "bad_header", False),
    ("two headers", [header(), header()], grpc.StatusCode.INVALID_ARGUMENT, "bad_chunk", True),
    ("bytes that are not protobuf", [b"\xff\xff\xff"],
     grpc.StatusCode.INVALID_ARGUMENT, "bad_message", False),
]


@pytest.mark.parametrize("messages,code,key,recorded", [c[1:] for c in BAD_PUSHES],
                         ids=[c[0] for c in BAD_PUSHES])
def test_a_malformed_push_is_refused_counted_and_changes_nothing(server, messages, code, key,
                                                                 recorded):
    shard, = small_shards()
    pushes = []
    srv = server([shard], on_push=pushes.append)
    assert raw_call(srv.port, "Push", [header(worker_id=1), chunk(0, GOOD)]).outcome == \
        pb.PUSH_OUTCOME_APPLIED
    before = shard.state_dict()
    with pytest.raises(grpc.RpcError) as err:
        raw_call(srv.port, "Push", messages)
    assert err.value.code() == code, err.value.details()
    after = shard.state_dict()
    for k in ("params", "momentum", "average", "buffers"):
        np.testing.assert_array_equal(before[k], after[k])
    assert after["version"] == 1 and list(after["bn_slots"]) == [1]
    assert srv.rejections == {key: 1}
    if recorded:  # the shard counted it for the worker, as any rejected push
        assert shard.stats()["counters"] == {"applied": 1, "rejected": 1}
        assert shard.stats()["worker_counters"][7] == {"rejected": 1}
        assert shard.clocks[7] == 1  # SSP/BSP see the push the worker made
        assert [r.outcome for r in pushes] == ["applied", "rejected"] and pushes[1].worker == 7
    else:
        assert shard.stats()["counters"] == {"applied": 1} and len(pushes) == 1
    # and the server still works
    assert raw_call(srv.port, "Push", [header(version_read=1), chunk(0, GOOD)]).version == 2


def test_the_client_reports_a_nan_push_as_the_shard_recorded_it_and_raises_on_another_layout(server):
    shard, = small_shards()
    srv = server([shard])
    with GrpcClient(f"grpc://127.0.0.1:{srv.port}") as c:
        r, = c.results([c.push(0, np.full(N, np.nan, np.float32), 0, 4, None)])
        assert (r.outcome, r.worker, r.lr) == ("rejected", 4, 0.0) and "NaN or Inf" in r.reason
        c.fingerprint = "not-this-model"
        with pytest.raises(GrpcError) as err:
            c.results([c.push(0, np.ones(N, np.float32), 0, 4, None)])
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "fp-small" in str(err.value)
        assert err.value.result.outcome == "rejected"
    assert shard.version == 0 and shard.stats()["counters"] == {"rejected": 2}
    with pytest.raises(ValueError, match="fp-small"):
        GrpcClient(f"grpc://127.0.0.1:{srv.port}", fingerprint="mine")


def make_digits(num_shards):
    torch.manual_seed(0)
    model = build("digits_cnn", width=8)
    layout = ParamLayout.from_model(model)
    p, b = layout.flatten(model)
    shards = [ShardState(s.index, p[s.params[0]:s.params[1]], b[s.buffers[0]:s.buffers[1]],
                         optimizer=NesterovMomentum(0.9, 1e-4), schedule=LRSchedule(0.05),
                         averager=PolyakAverage(0.99))
              for s in layout.shards(num_shards)]
    return model, layout, shards


def test_two_workers_train_digits_through_the_server_and_every_push_is_counted(server):
    data = load_dataset("digits", seed=0)
    model, layout, shards = make_digits(2)
    pushes = []
    info = ModelInfo("digits_cnn", layout.fingerprint(), 10, 1, 8, "async")
    srv = server(shards, info, on_push=pushes.append)
    workers = []
    for k in range(2):
        client = GrpcClient(f"grpc://127.0.0.1:{srv.port}", fingerprint=layout.fingerprint())
        wid, clock = client.register()
        specs = client.layout().specs()
        assert specs == layout.shards(2)
        replica = copy.deepcopy(model)
        workers.append(Worker(wid, FlatModel(replica, layout), specs, client,
                              Batches(data.x_train, data.y_train, 32, seed=k), clock=clock,
                              prefetch=k == 1))  # one prefetches: the two buffers in turn

    def run(w):
        for _ in range(200):
            w.step()
        w.flush()
        w.client.retire(w.id)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(w.id for w in workers) == [0, 1]
    rows = [r for w in workers for r in w.drain_rows()]
    sent = sum(w.pushes_sent for w in workers)
    stats = workers[0].client.stats()
    counted = sum(sum(s["counters"].values()) for s in stats["shards"])
    assert sent == counted == len(rows) == len(pushes) == 2 * 2 * 200
    assert {r.outcome for r in pushes} == {"applied"} and stats["server_rejections"] == {}
    assert max(r["staleness"] for r in rows) >= 1  # they really were asynchronous
    # the served weights, evaluated
    (w0, v0), (w1, v1) = workers[0].client.pull()
    p = np.concatenate([w0[:shards[0].params.size], w1[:shards[1].params.size]])
    bn = np.concatenate([w0[shards[0].params.size:], w1[shards[1].params.size:]])
    layout.load_into(model, p, bn)
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(data.x_test)).argmax(1).numpy() == data.y_test).mean()
    assert acc >= 0.9, acc  # chance is 0.1
    for w in workers:
        w.client.close()


def test_pushes_through_grpc_give_bit_identical_weights_to_the_shard_itself(server):
    """The same pushes (float32 and bfloat16, with BatchNorm statistics, two workers, stale
    versions) through gRPC and straight into a ShardState: the same bits everywhere."""
    n, nb = 3_000_001, 5  # odd sizes: chunks end inside elements, segments at odd offsets
    rng = np.random.default_rng(0)
    params = rng.standard_normal(n, dtype=np.float32)

    def make():
        return ShardState(0, params, np.zeros(nb, np.float32),
                          optimizer=NesterovMomentum(0.9, 1e-4), schedule=LRSchedule(0.01),
                          averager=PolyakAverage(0.99))

    served, direct = make(), make()
    srv = server([served], ModelInfo("big", "fp-big"))
    with GrpcClient(f"127.0.0.1:{srv.port}") as c:
        for k in range(6):
            g = rng.standard_normal(n, dtype=np.float32)
            if k % 3 == 2:
                g = to_bfloat16_bits(torch.from_numpy(g))
            bn = rng.standard_normal(nb, dtype=np.float32)
            version, worker = max(0, direct.version - k % 2), k % 2
            want = direct.push(g.copy(), version, worker, bn.copy(), shard=0)
            handle = c.push(0, g, version, worker, bn)
            g[:] = 0  # the caller may reuse its buffers as soon as push returns
            bn[:] = 0
            got, = c.results([handle])
            assert got == want
        (w, v), = c.pull()
    assert v == direct.version == 6
    sd_a, sd_b = served.state_dict(), direct.state_dict()
    for key in ("params", "momentum", "average", "buffers"):
        np.testing.assert_array_equal(sd_a[key], sd_b[key])
    assert sd_a["bn_slots"].keys() == sd_b["bn_slots"].keys() == {0, 1}
    for worker in (0, 1):
        np.testing.assert_array_equal(sd_a["bn_slots"][worker], sd_b["bn_slots"][worker])
    np.testing.assert_array_equal(w, np.concatenate([direct.params, direct.bn_mean()]))


def test_a_25m_parameter_shard_round_trips_in_chunks_under_the_default_message_limit(server):
    """100 MB each way through gRPC's default 4 MiB message limit, untouched on both sides."""
    n = 25_000_000
    rng = np.random.default_rng(0)
    params = rng.standard_normal(n, dtype=np.float32)
    shard = ShardState(0, params, np.arange(7, dtype=np.float32),
                       optimizer=NesterovMomentum(0.0, 0.0), schedule=LRSchedule(0.5))
    srv = server([shard], ModelInfo("big", "fp-big"))
    with GrpcClient(f"127.0.0.1:{srv.port}") as c:
        (w, v), = c.pull()
        assert v == 0 and w.shape == (n + 7,)
        np.testing.assert_array_equal(w[:n], params)
        np.testing.assert_array_equal(w[n:], np.arange(7))
        grad = rng.standard_normal(n, dtype=np.float32)
        r, = c.results([c.push(0, grad, 0, 0, np.full(7, 2.0, np.float32))])
        assert (r.outcome, r.version, r.lr) == ("applied", 1, 0.5)
        (w2, v2), = c.pull()
        assert v2 == 1 and w2 is not w  # the other of the shard's two buffers
        np.testing.assert_array_equal(w2[:n], params - np.float32(0.5) * grad)  # plain SGD
        np.testing.assert_array_equal(w2[n:], 2.0)
        np.testing.assert_array_equal(w[:n], params)  # the previous pull's array is intact


def test_a_pull_of_a_version_already_held_is_not_modified_and_sends_no_data(server):
    shard, = small_shards()
    srv = server([shard])
    (h,) = raw_call(srv.port, "Pull", pb.PullRequest(shard_id=0, if_newer_than=0))
    assert h.header.not_modified and h.header.version == 0
    replies = raw_call(srv.port, "Pull", pb.PullRequest(shard_id=0))
    assert replies[0].header.element_count == N + B and not replies[0].header.not_modified
    data = b"".join(m.chunk.data for m in replies[1:])
    np.testing.assert_array_equal(np.frombuffer(data, np.float32), np.r_[np.arange(N), np.ones(B)])
    with GrpcClient(f"127.0.0.1:{srv.port}") as c:
        (a, _), = c.pull()
        (b, _), = c.pull()  # nothing moved: the same array, no transfer
        assert a is b
        shard.push(np.ones(N, np.float32), 0)
        (d, v), = c.pull()
        assert v == 1 and d is not a and d[0] < 0
    with pytest.raises(grpc.RpcError) as err:
        raw_call(srv.port, "Pull", pb.PullRequest(shard_id=2))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "0..0" in err.value.details()
    assert srv.rejections == {"bad_shard": 1}


def test_the_token_is_required_on_every_call_and_never_echoed(server, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-token-value"
    shard, = small_shards()
    srv = server([shard], token=secret)
    for token in (None, "bad-guess-123"):
        with pytest.raises(GrpcError) as err:
            GrpcClient(f"127.0.0.1:{srv.port}", token=token)
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert secret not in str(err.value) and (token is None or token not in str(err.value))
    with pytest.raises(grpc.RpcError) as err:
        raw_call(srv.port, "Push", [header(), chunk(0, GOOD)], metadata=(("authorization", "Bearer x"),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert srv.rejections == {"unauthenticated": 3}
    assert shard.version == 0 and not shard.stats()["counters"]
    with GrpcClient(f"127.0.0.1:{srv.port}", token=secret) as c:
        r, = c.results([c.push(0, np.ones(N, np.float32), 0, 0, None)])
        assert r.outcome == "applied" and c.pull()[0][1] == 1
    assert secret not in caplog.text


def make_cert(tmp_path, name):
    """A self-signed certificate for 127.0.0.1 / localhost (openssl), as PEM bytes."""
    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", f"/CN={name}", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return cert.read_bytes(), key.read_bytes()


def test_tls_and_mutual_tls_with_self_signed_certificates(server, tmp_path):
    cert, key = make_cert(tmp_path, "server")
    shard, = small_shards()
    srv = server([shard], tls=TLS(cert, key))
    with GrpcClient(f"127.0.0.1:{srv.port}", root_certificates=cert) as c:
        assert c.results([c.push(0, np.ones(N, np.float32), 0, 0, None)])[0].version == 1
    with pytest.raises(ConnectionError):  # a plaintext client cannot talk to it
        GrpcClient(f"127.0.0.1:{srv.port}", connect_timeout=0.5)
    other, _ = make_cert(tmp_path, "other")
    with pytest.raises(ConnectionError):  # nor one that trusts another certificate
        GrpcClient(f"127.0.0.1:{srv.port}", root_certificates=other, connect_timeout=0.5)
    # mutual TLS: the server asks for a client certificate signed by the CA it was given
    client_cert, client_key = make_cert(tmp_path, "client")
    mutual = server([shard], tls=TLS(cert, key, client_ca=client_cert))
    with pytest.raises(ConnectionError):
        GrpcClient(f"127.0.0.1:{mutual.port}", root_certificates=cert, connect_timeout=0.5)
    with GrpcClient(f"127.0.0.1:{mutual.port}", root_certificates=cert, private_key=client_key,
                    certificate_chain=client_cert) as c:
        assert c.pull()[0][1] == 1


def test_any_address_but_loopback_needs_tls_or_an_explicit_insecure(server, tmp_path, caplog):
    shard, = small_shards()
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.com"):
        with pytest.raises(ValueError, match="without TLS"):
            server([shard], host=host)
    for host in ("127.0.0.1", "localhost", "::1"):
        assert _is_loopback(host)
    with caplog.at_level(logging.WARNING):
        srv = server([shard], host="0.0.0.0", insecure=True)
    assert "WITHOUT TLS" in caplog.text and srv.port > 0
    cert, key = make_cert(tmp_path, "server")
    assert server([shard], host="0.0.0.0", tls=TLS(cert, key)).port > 0


def test_health_is_serving_and_reflection_lists_the_service(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    srv = server(small_shards(), token="t")
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        md = (("authorization", "Bearer t"),)
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", SERVICE):
            got = health.Check(health_pb2.HealthCheckRequest(service=name), metadata=md)
            assert got.status == health_pb2.HealthCheckResponse.SERVING
        replies = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=md)
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_worker_ids_are_unique_reserved_for_the_ray_run_and_reconnect_with_their_clock(server):
    shards = small_shards(2)
    shards[0].push(np.ones(N, np.float32), 0, worker=5)  # a worker of a resumed run
    shards[1].push(np.ones(N, np.float32), 0, worker=5)
    srv = server(shards, first_worker_id=4)
    with GrpcClient(f"127.0.0.1:{srv.port}") as c:
        ids = [c.register()[0] for _ in range(3)]
        assert ids == [6, 7, 8]  # 0..3 belong to the Ray run, 5 is known to the shards
        assert c.register(5) == (5, 1)  # reconnecting: one push recorded on every shard
        with pytest.raises(GrpcError) as err:
            c.register(2)
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
        c.retire(8)
        with pytest.raises(GrpcError) as err:
            c.register(8)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert all(8 in s.retired for s in shards)


def held_pull(client, **kw):
    """Start a pull in a thread; returns (thread, dict that gets its result)."""
    got = {}
    t = threading.Thread(target=lambda: got.update(r=client.pull(**kw)), daemon=True)
    t.start()
    return t, got


def test_a_coordinating_policy_holds_the_pull_until_the_other_worker_retires(server):
    """SSP with bound 0 over workers 0 and 1: worker 0, one push ahead, waits for worker 1,
    until worker 1 retires through RetireWorker."""
    shard, = small_shards(policy=BoundedStaleness(workers=2, bound=0))
    srv = server([shard])
    with GrpcClient(f"127.0.0.1:{srv.port}") as c:
        c.results([c.push(0, np.ones(N, np.float32), 0, 0, None)])
        t, got = held_pull(c, worker=0, clock=1)
        time.sleep(0.6)
        assert t.is_alive()  # held: worker 1 has not pushed
        c.retire(1)
        t.join(timeout=5)
        assert not t.is_alive() and got["r"][0][1] == 1
        assert c.last_wait >= 0.5 and shard.waits >= 1  # (one per wait slice of the server)


def test_concurrent_streams_are_bounded(server):
    """One stream allowed: while a held pull occupies it, any other call is refused."""
    shard, = small_shards(policy=BoundedStaleness(workers=2, bound=0))
    shard.push(np.ones(N, np.float32), 0, worker=0)
    srv = server([shard], max_concurrent_streams=1)
    with GrpcClient(f"127.0.0.1:{srv.port}") as c0, GrpcClient(f"127.0.0.1:{srv.port}") as c1:
        t, got = held_pull(c0, worker=0, clock=1)
        time.sleep(0.3)
        with pytest.raises(GrpcError) as err:
            c1.stats()
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        shard.retire(1)  # in-process: releases the held pull, and with it the stream
        t.join(timeout=5)
        assert got["r"][0][1] == 1 and c1.stats()["shards"][0]["version"] == 1


from ps_trainer.transport.grpc_server import _is_loopback  # noqa: E402


def test_a_push_cancelled_mid_stream_is_recorded_and_changes_nothing(server):
    """A worker that dies mid-push: the shard records a rejection for it, applies nothing."""
    shard, = small_shards()
    srv = server([shard])
    sent = threading.Event()

    def slow():
        yield header()
        yield chunk(0, GOOD[:16])
        sent.set()
        time.sleep(30)  # never finishes: cancelled below

    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        push = ch.stream_unary(f"/{SERVICE}/Push", request_serializer=lambda b: b,
                               response_deserializer=pb.PushResponse.FromString)
        future = push.future(slow())
        assert sent.wait(5)
        time.sleep(0.2)
        future.cancel()
    for _ in range(50):
        if srv.rejections:
            break
        time.sleep(0.05)
    # the server sees the cancellation, or (racing it) a stream that ended short
    assert srv.rejections in ({"cancelled": 1}, {"truncated": 1})
    assert shard.version == 0 and shard.stats()["worker_counters"][7] == {"rejected": 1}
