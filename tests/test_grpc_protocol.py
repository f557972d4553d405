"""The wire contract without a server: the committed generated code is what the .proto makes,
the hand-made chunk codec writes and reads exactly protobuf's bytes, reassembly refuses every
malformed stream, and the enums cover the core's dtypes and outcomes."""

import filecmp
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ps_trainer.core import ParamLayout
from ps_trainer.core.policy import OUTCOMES
from ps_trainer.core.shard import PushResult
from ps_trainer.models import build
from ps_trainer.transport.grpc_wire import (OUTCOME_ENUM, Assembler, ModelInfo, ServerLayout,
                                            WireError, chunks, decode_chunk_stream, encode_chunk,
                                            result_from_proto, result_to_proto, wire_dtype)
from ps_trainer.v1 import parameter_server_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ["parameter_server_pb2.py", "parameter_server_pb2.pyi", "parameter_server_pb2_grpc.py"]


def test_the_protos_are_buf_lint_clean_under_the_standard_rules(tmp_path, installed):
    buf = installed("buf")  # PyPI's buf-bin, in the test extra
    lint = lambda root: subprocess.run([buf, "lint", "--error-format=json"], cwd=root,
                                       capture_output=True, text=True, timeout=120)
    # the linter is really looking: a service without the suffix, a bare request type, no version
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "buf.yaml").write_text((ROOT / "protos" / "buf.yaml").read_text())
    (bad / "ps.proto").write_text('syntax = "proto3";\npackage ps;\nmessage Req {}\n'
                                  "service Ps { rpc Pull(Req) returns (Req); }\n")
    flagged = lint(bad)
    assert flagged.returncode != 0, flagged.stdout
    assert {"SERVICE_SUFFIX", "RPC_REQUEST_STANDARD_NAME"} <= {
        json.loads(line)["type"] for line in flagged.stdout.splitlines()}, flagged.stdout
    ours = lint(ROOT / "protos")
    assert ours.returncode == 0 and ours.stdout == "", ours.stdout


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None,
                    reason="grpcio-tools (the test extra) is not installed")
def test_the_committed_generated_code_is_what_the_proto_makes(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}",
                    f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}",
                    str(ROOT / "protos/ps_trainer/v1/parameter_server.proto")], check=True)
    for name in GENERATED:
        assert filecmp.cmp(tmp_path / "ps_trainer/v1" / name, ROOT / "ps_trainer/v1" / name,
                           shallow=False), f"ps_trainer/v1/{name} is stale: run scripts/gen_protos.sh"


@pytest.mark.parametrize("offset,size", [(0, 0), (0, 1), (5, 127), (128, 128), (1 << 35, 1000),
                                         (3, (1 << 20) + 3)])
def test_hand_encoded_chunks_are_protobufs_bytes_and_decode_both_ways(offset, size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    ours = encode_chunk(offset, memoryview(data))
    for message in (pb.PullResponse, pb.PushRequest):
        theirs = message(chunk=pb.Chunk(offset=offset, data=data)).SerializeToString()
        assert ours == theirs
        assert message.FromString(ours).chunk.data == data
    got_offset, view = decode_chunk_stream(pb.PushHeader)(ours)
    assert got_offset == offset and bytes(view) == data


def test_the_decoder_reads_headers_skips_unknown_fields_and_returns_errors():
    decode = decode_chunk_stream(pb.PushHeader)
    h = pb.PushHeader(shard_id=2, worker_id=9, version_read=4, fingerprint="f",
                      dtype=pb.DTYPE_BFLOAT16, gradient_count=10, batch_norm_count=3)
    assert decode(pb.PushRequest(header=h).SerializeToString()) == h
    assert decode(b"") is None
    # data before offset, an unknown varint field and an unknown fixed64 field: still read
    inner = b"\x12\x03abc" + b"\x08\x07" + b"\x18\x01" + b"\x21" + b"\0" * 8
    assert (lambda o, v: (o, bytes(v)))(*decode(b"\x12" + bytes([len(inner)]) + inner)) == (7, b"abc")
    for bad in (b"\xff\xff\xff", b"\x12\x10abc", b"\x0b"):  # bad varint, short field, group
        err = decode(bad)
        assert isinstance(err, WireError) and err.key == "bad_message"


def test_chunks_cover_the_segments_in_order_and_reassemble_exactly():
    grad = np.arange(1001, dtype=np.uint16)  # bfloat16 bits: 2002 bytes
    bn = np.linspace(0, 1, 7, dtype=np.float32)
    decode = decode_chunk_stream(pb.PushHeader)
    msgs = [decode(m) for m in chunks([grad, bn], chunk_bytes=300)]
    assert [o for o, _ in msgs] == [0, 300, 600, 900, 1200, 1500, 1800, 2002]
    out_g, out_b = np.empty_like(grad), np.empty_like(bn)
    a = Assembler([out_g, out_b])
    for o, v in msgs:
        a.add(o, v)
    a.finish()
    np.testing.assert_array_equal(out_g, grad)
    np.testing.assert_array_equal(out_b, bn)


def test_a_chunk_may_straddle_the_segments():
    payload = np.arange(6, dtype=np.float32).tobytes() + np.arange(3, dtype=np.float32).tobytes()
    g, b = np.empty(6, np.float32), np.empty(3, np.float32)
    a = Assembler([g, b])
    a.add(0, memoryview(payload)[:10])
    a.add(10, memoryview(payload)[10:])
    a.finish()
    np.testing.assert_array_equal(g, np.arange(6))
    np.testing.assert_array_equal(b, np.arange(3))


@pytest.mark.parametrize("steps,key", [
    ([(0, 8), (12, 4)], "chunk_order"),  # a gap
    ([(0, 8), (4, 8)], "chunk_order"),  # an overlap
    ([(0, 8), (8, 12)], "oversize"),  # past the end
    ([(0, 20)], "oversize"),
    ([(0, 8)], "truncated"),
])
def test_the_assembler_refuses_malformed_streams(steps, key):
    target = np.zeros(4, np.float32)  # 16 bytes
    a = Assembler([target])
    with pytest.raises(WireError) as err:
        for offset, size in steps:
            a.add(offset, memoryview(b"\x01" * size))
        a.finish()
    assert err.value.key == key


def test_dtypes_and_outcomes_map_to_the_enums():
    assert wire_dtype(np.zeros(1, np.float32)) == pb.DTYPE_FLOAT32
    assert wire_dtype(np.zeros(1, np.uint16)) == pb.DTYPE_BFLOAT16
    with pytest.raises(ValueError, match="float64"):
        wire_dtype(np.zeros(1, np.float64))
    assert set(OUTCOME_ENUM) == set(OUTCOMES)  # every core outcome has a wire name
    assert len(set(OUTCOME_ENUM.values())) == len(OUTCOMES) and 0 not in OUTCOME_ENUM.values()
    for outcome in OUTCOMES:
        r = PushResult(1, 2, outcome, -1 if outcome == "rejected" else 3, 4, 5, 0.25, "why")
        assert result_from_proto(pb.PushResponse.FromString(
            result_to_proto(r).SerializeToString())) == r


def test_the_server_layout_gives_the_workers_shard_plan():
    torch.manual_seed(0)
    layout = ParamLayout.from_model(build("digits_cnn", width=8))
    specs = layout.shards(3)
    sl = ServerLayout(ModelInfo("digits_cnn", layout.fingerprint(), 10, 1, 8, "async", 1, 1),
                      tuple((s.num_params, s.num_buffers) for s in specs))
    back = ServerLayout.from_proto(pb.GetLayoutResponse.FromString(sl.to_proto().SerializeToString()))
    assert back == sl and back.specs() == specs
