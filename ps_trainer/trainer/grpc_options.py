"""The gRPC server's and client's security settings, read from the run's settings.

The shared token is a secret: it comes from a file (`--token-file`) or the PS_TRAIN_TOKEN
environment variable, never from a flag's value (which `ps` shows to every user of the machine),
and it is never printed. TLS material comes from PEM files.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from pathlib import Path

from ..config import TrainConfig
from ..transport.grpc_server import TLS
from ..transport.grpc_wire import ModelInfo

TOKEN_ENV = "PS_TRAIN_TOKEN"


def read_token(cfg: TrainConfig) -> str | None:
    """The shared token, or None when neither --token-file nor PS_TRAIN_TOKEN gives one."""
    if cfg.token_file:
        token = Path(cfg.token_file).read_text().strip()
        if not token:
            raise ValueError(f"--token-file {cfg.token_file}: the file is empty; put the shared "
                             f"token in it (one line)")
        return token
    return os.environ.get(TOKEN_ENV) or None


def server_tls(cfg: TrainConfig) -> TLS | None:
    """The server's certificate and key, and the client CA for mutual TLS; None without TLS."""
    if not cfg.tls_cert:
        if cfg.tls_ca:
            raise ValueError(f"--tls-ca {cfg.tls_ca}: a server checks client certificates only "
                             f"over TLS; add --tls-cert FILE --tls-key FILE")
        return None
    return TLS.from_files(cfg.tls_cert, cfg.tls_key, cfg.tls_ca or None)


def client_tls(cfg: TrainConfig) -> dict:
    """GrpcClient's TLS arguments: the CA that signed the server's certificate, and this
    worker's own certificate and key for mutual TLS."""
    read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
    return {"root_certificates": read(cfg.tls_ca), "certificate_chain": read(cfg.tls_cert),
            "private_key": read(cfg.tls_key)}


class ServedPushes:
    """The pushes a gRPC server's shards recorded (its `on_push`), turned into pushes.parquet rows
    (the worker's own step, loss and timings stay in the worker's process: NaN / -1 here), and
    each worker's totals as the shards saw them. `sent`: rows a resumed run already has."""

    def __init__(self, cfg: TrainConfig, sent: Counter | None = None):
        self.cfg, self.results, self.sent = cfg, deque(), Counter(sent or {})

    def on_push(self, result) -> None:  # called from the server's threads
        self.results.append(result)

    def drain(self) -> list[dict]:
        """Rows of the pushes recorded since the last drain."""
        nan, now = float("nan"), time.time()
        rows = [{"time": now, "worker": r.worker, "shard": r.shard, "step": -1,
                 "version_read": r.version_read, "staleness": r.staleness, "outcome": r.outcome,
                 "lr": r.lr, "loss": nan, "version": r.version, "reason": r.reason,
                 "compute": nan, "delay": nan, "wait": nan}
                for r in (self.results.popleft() for _ in range(len(self.results)))]
        self.sent.update(r["worker"] for r in rows)
        return rows

    def progress(self, workers, shard_stats: list[dict]) -> dict:
        """Totals of `workers` and of every worker with rows: its steps are those whose pushes
        reached every shard; images at this run's --batch-size (the workers may use another)."""
        out = {}
        for w in sorted(set(workers) | set(self.sent)):
            per_shard = [sum(s["worker_counters"].get(w, {}).values()) for s in shard_stats]
            steps = min(per_shard) * self.cfg.push_every
            out[w] = {"worker": w, "loss": float("nan"), "steps": steps,
                      "images": steps * self.cfg.batch_size, "pushes_sent": self.sent[w]}
        return out


def model_info(plan) -> ModelInfo:
    """What GetLayout tells a worker about the run's model."""
    cfg = plan.cfg
    return ModelInfo(model=cfg.model, fingerprint=plan.layout.fingerprint(),
                     num_classes=plan.data.num_classes, in_channels=plan.in_channels,
                     image_size=plan.image_size, policy=cfg.policy, push_every=cfg.push_every,
                     fetch_every=cfg.fetch_every)
