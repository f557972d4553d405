"""`ps-train --serve-grpc PORT`: a Ray run's shards, served over gRPC as well, so that workers
outside Ray (`ps-train worker --ps grpc://HOST:PORT`) join the running job.

The server runs in the driver's process over the shard actors (`transport.grpc_backend.
RayBackend`): an outside worker's pull reads the snapshot the shard published, zero-copy from
the object store, and its push goes to the same actor as the Ray workers' pushes. Outside
workers get ids above the run's own (0 .. --workers - 1); every push their shards record
comes back here (`on_push`) and goes into the run's pushes table like any other row.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import grpc_address
from ..transport.grpc_backend import RayBackend
from ..transport.grpc_server import serve
from .grpc_options import ServedPushes, model_info, read_token, server_tls


class GrpcJoin:
    def __init__(self, plan, shards: list, run_dir: str | Path, log=print):
        cfg = plan.cfg
        host, port = grpc_address(cfg.serve_grpc, "--serve-grpc")
        self.cfg, self.pushes = cfg, ServedPushes(cfg)
        try:
            self.server = serve(RayBackend(shards), model_info(plan), port, host,
                                tls=server_tls(cfg), insecure=cfg.insecure, token=read_token(cfg),
                                on_push=self.pushes.on_push, first_worker_id=cfg.workers)
        except (OSError, ValueError) as e:  # the port is taken; no TLS off loopback; ...
            raise ValueError(f"--serve-grpc {cfg.serve_grpc}: {e}") from None
        self.stopped = False
        (Path(run_dir) / "server.json").write_text(json.dumps(
            {"host": host, "port": self.server.port, "tls": bool(cfg.tls_cert)}))
        log(f"serving the shards over gRPC on {host}:{self.server.port}: outside workers join "
            f"with `ps-train worker --ps grpc://{host}:{self.server.port}`")

    def drain(self) -> list[dict]:
        """Rows of the pushes outside workers made since the last drain."""
        return self.pushes.drain()

    def progress(self, shard_stats: list[dict]) -> dict:
        """Each outside worker's totals, as the shards recorded them."""
        return self.pushes.progress(self.server.servicer.registered, shard_stats)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.server.stop(grace=2.0)
