"""Evaluation of the raw and the Polyak-averaged weights on the held-out split.

Averaged weights are a different network from any raw one, so their BatchNorm statistics are
recomputed with a pass over training batches before evaluating (what `torch.optim.swa_utils.update_bn`
does for SWA, Izmailov et al. 2018); the raw weights use the statistics the workers pushed.

`Evaluator` does both on the driver, from the snapshots the shards published, so evaluating never
stops a worker. It works through any PS client: the Ray one of a real run, the in-process one of
the simulator.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import main_logits


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def prepare(x: np.ndarray, in_channels: int, image_size: int, device) -> torch.Tensor:
    t = torch.from_numpy(x).to(device)  # (B, C, H, W)
    if t.shape[1] != in_channels:
        t = t.expand(-1, in_channels, -1, -1)
    if image_size and t.shape[-1] != image_size:
        t = F.interpolate(t, size=image_size, mode="bilinear", align_corners=False)
    return t


@torch.no_grad()
def recompute_bn(model: nn.Module, x: np.ndarray, batch_size: int, batches: int, in_channels: int,
                 image_size: int, seed: int, device="cpu") -> None:
    """Reset BatchNorm running statistics and re-estimate them as a cumulative average over
    `batches` random training batches (momentum=None), as swa_utils.update_bn does."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(batches):
        idx = rng.choice(len(x), size=min(batch_size, len(x)), replace=False)
        model(prepare(x[idx], in_channels, image_size, device))
    for m, mom in zip(bns, saved):
        m.momentum = mom


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, *, in_channels: int, image_size: int,
             batch_size: int = 256, device="cpu") -> dict:
    """Top-1, top-5 accuracy and mean cross-entropy of `model` in eval mode."""
    model.eval()
    correct1 = correct5 = 0
    loss = 0.0
    for i in range(0, len(y), batch_size):
        logits = main_logits(model(prepare(x[i:i + batch_size], in_channels, image_size, device)))
        target = torch.from_numpy(y[i:i + batch_size]).to(logits.device)
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, 5)
        correct1 += int((top[:, 0] == target).sum())
        correct5 += int((top == target[:, None]).any(dim=1).sum())
    n = max(1, len(y))
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss / n}


class Evaluator:
    """Evaluates the weights the shards published, on the driver, while the workers keep going.
    `plan`: the run's `plan.Plan` (its model is loaded with the weights, so none is built here);
    `client` is any PS client; `clock` gives the time (the simulator's is virtual)."""

    def __init__(self, plan, client, clock=time.time):
        self.plan, self.client, self.clock = plan, client, clock
        self.model = plan.model
        self.specs = plan.layout.shards(plan.cfg.ps_shards)
        self.bn = has_batchnorm(self.model)

    def __call__(self, step: int, t0: float) -> list[dict]:
        cfg, data, layout = self.plan.cfg, self.plan.data, self.plan.layout
        rows = []
        for weights in ("raw", "polyak"):
            snaps = self.client.pull(averaged=weights == "polyak")
            params = np.concatenate([a[:s.num_params] for (a, _), s in zip(snaps, self.specs)])
            buffers = np.concatenate([a[s.num_params:] for (a, _), s in zip(snaps, self.specs)])
            layout.load_into(self.model, params, buffers)
            bn = "none"
            if self.bn:
                bn = "pushed"
                if weights == "polyak":
                    recompute_bn(self.model, data.x_train, cfg.batch_size, cfg.bn_batches,
                                 self.plan.in_channels, self.plan.image_size, cfg.seed)
                    bn = f"recomputed ({cfg.bn_batches} batches)"
            m = evaluate(self.model, data.x_test, data.y_test, in_channels=self.plan.in_channels,
                         image_size=self.plan.image_size)
            now = self.clock()
            rows.append({"time": now, "elapsed": now - t0, "step": step,
                         "weights": weights, "bn": bn, **m})
        return rows
