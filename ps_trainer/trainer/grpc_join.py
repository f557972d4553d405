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
import time
from collections import Counter, deque
from pathlib import Path

from ..config import grpc_address
from ..transport.grpc_backend import RayBackend
from ..transport.grpc_server import serve
from .grpc_options import model_info, push_row, read_token, server_tls


class GrpcJoin:
    def __init__(self, plan, shards: list, run_dir: str | Path, log=print):
        cfg = plan.cfg
        host, port = grpc_address(cfg.serve_grpc, "--serve-grpc")
        self.cfg, self.rows, self.sent = cfg, deque(), Counter()
        try:
            self.server = serve(RayBackend(shards), model_info(plan), port, host,
                                tls=server_tls(cfg), insecure=cfg.insecure, token=read_token(cfg),
                                on_push=self.rows.append, first_worker_id=cfg.workers)
        except (OSError, ValueError) as e:  # the port is taken; no TLS off loopback; ...
            raise ValueError(f"--serve-grpc {cfg.serve_grpc}: {e}") from None
        self.stopped = False
        (Path(run_dir) / "server.json").write_text(json.dumps(
            {"host": host, "port": self.server.port, "tls": bool(cfg.tls_cert)}))
        log(f"serving the shards over gRPC on {host}:{self.server.port}: outside workers join "
            f"with `ps-train worker --ps grpc://{host}:{self.server.port}`")

    def drain(self) -> list[dict]:
        """Rows of the pushes outside workers made since the last drain."""
        rows = [push_row(self.rows.popleft(), time.time()) for _ in range(len(self.rows))]
        self.sent.update(r["worker"] for r in rows)
        return rows

    def progress(self, shard_stats: list[dict]) -> dict:
        """Each outside worker's totals, as the shards recorded them (its loss, step and images
        stay in its own process: steps are those whose pushes reached every shard)."""
        out = {}
        for w in sorted(set(self.sent) | set(self.server.servicer.registered)):
            per_shard = [sum(s["worker_counters"].get(w, {}).values()) for s in shard_stats]
            steps = min(per_shard) * self.cfg.push_every
            out[w] = {"worker": w, "loss": float("nan"), "steps": steps,
                      "images": steps * self.cfg.batch_size, "pushes_sent": self.sent[w]}
        return out

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.server.stop(grace=2.0)
