"""Evaluation of the raw and the Polyak-averaged weights on the held-out split.

Averaged weights are a different network from any raw one, so their BatchNorm statistics are
recomputed with a pass over training batches before evaluating (what `torch.optim.swa_utils.update_bn`
does for SWA, Izmailov et al. 2018); the raw weights use the statistics the workers pushed.
"""

from __future__ import annotations

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
