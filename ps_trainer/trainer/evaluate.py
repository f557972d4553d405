"""Evaluation of the raw and the Polyak-averaged weights on the held-out split.

Averaged weights are a different network from any raw one, so their BatchNorm statistics are
recomputed with a pass over training batches before evaluating (what `torch.optim.swa_utils.update_bn`
does for SWA, Izmailov et al. 2018); the raw weights use the statistics the workers pushed.

`Evaluator` does both on the driver, from the snapshots the shards published, so evaluating never
stops a worker. It works through any PS client: the Ray one of a real run, the in-process one of
the simulator.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import main_logits


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def prepare(x, in_channels: int, image_size: int, device) -> torch.Tensor:
    t = torch.as_tensor(x).to(device)  # (B, C, H, W), from numpy or a stream's tensor
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
    recompute_bn_from(model, random_batches(x, batch_size, batches, seed), in_channels,
                      image_size, device)


def random_batches(x: np.ndarray, batch_size: int, batches: int, seed: int):
    """`batches` batches of images drawn at random (without replacement within one) from `x`."""
    rng = np.random.default_rng(seed)
    return (x[rng.choice(len(x), size=min(batch_size, len(x)), replace=False)]
            for _ in range(batches))


def array_batches(x: np.ndarray, y: np.ndarray, batch_size: int = 256):
    """(x, y) batches of arrays, in order."""
    return ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size))


@torch.no_grad()
def recompute_bn_from(model: nn.Module, xs, in_channels: int, image_size: int, device="cpu") -> None:
    """`recompute_bn` over the image batches `xs` (arrays or tensors): a stream's, or random ones."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x in xs:
        model(prepare(x, in_channels, image_size, device))
    for m, mom in zip(bns, saved):
        m.momentum = mom


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, *, in_channels: int, image_size: int,
             batch_size: int = 256, device="cpu") -> dict:
    """Top-1, top-5 accuracy and mean cross-entropy of `model` in eval mode, on arrays."""
    return evaluate_batches(model, array_batches(x, y, batch_size), in_channels=in_channels,
                            image_size=image_size, device=device)


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches, *, in_channels: int, image_size: int,
                     views: int = 1, device="cpu") -> dict:
    """`evaluate` over (x (b * views, C, H, W), y (b,)) batches: with several views (crops) of
    each image, its prediction is the mean of their softmaxes (multi-crop evaluation, Krizhevsky
    et al. 2012, Szegedy et al. 2014 sec. 7), and the loss that of the mean."""
    model.eval()
    correct1 = correct5 = n = 0
    loss = 0.0
    for x, y in batches:
        logits = main_logits(model(prepare(x, in_channels, image_size, device)))
        target = torch.as_tensor(y).to(logits.device)
        if views == 1:  # the cross-entropy of the logits (exact, no softmax rounding)
            probs = logits
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
        else:
            probs = F.softmax(logits.float(), dim=1).view(len(target), views, -1).mean(dim=1)
            loss += float(F.nll_loss(probs.clamp_min(1e-12).log(), target, reduction="sum"))
        top = probs.topk(min(5, probs.shape[1]), dim=1).indices  # (B, 5)
        correct1 += int((top[:, 0] == target).sum())
        correct5 += int((top == target[:, None]).any(dim=1).sum())
        n += len(target)
    n = max(1, n)
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss / n}


def bn_batches(plan):
    """Training image batches to re-estimate BatchNorm statistics from (`plan`: the run's
    `plan.Plan`): random ones of the arrays, or the first of a stream over the training split."""
    cfg, data = plan.cfg, plan.data
    if not data.streamed:
        return random_batches(data.x_train, cfg.batch_size, cfg.bn_batches, cfg.seed)
    from ..data.stream import PartitionStream, StreamBatches

    stream = StreamBatches(PartitionStream(data.root, data.pieces("train"), 0, 1, cfg.seed,
                                           cfg.batch_size, plan.transforms[0]))
    return (next(stream)[0] for _ in range(cfg.bn_batches))


class Evaluator:
    """Evaluates the weights the shards published, on the driver, while the workers keep going.
    `plan`: the run's `plan.Plan` (its model is loaded with the weights, so none is built here);
    `client` is any PS client; `clock` gives the time (the simulator's is virtual)."""

    def __init__(self, plan, client, clock=time.time, device="cpu"):
        self.plan, self.client, self.clock, self.device = plan, client, clock, device
        self.model = plan.model.to(device)
        self.specs = plan.layout.shards(plan.cfg.ps_shards)
        self.bn = has_batchnorm(self.model)

    def __call__(self, step: int, t0: float, final: bool = False) -> list[dict]:
        """Rows of the raw and the Polyak weights' accuracy at `step`; on a streamed data set the
        `final` one uses the whole held-out split and --eval-crops views, the others
        --eval-images images and one central crop."""
        cfg, layout = self.plan.cfg, self.plan.layout
        rows = []
        for weights in ("raw", "polyak"):
            snaps = self.client.pull(averaged=weights == "polyak")
            # A row's time is when its weights were read, not when their evaluation ended: the
            # accuracy belongs to those weights, and on a busy machine the evaluation can take
            # longer than the interval between two (time to an accuracy would be overstated).
            now = self.clock()
            params = np.concatenate([a[:s.num_params] for (a, _), s in zip(snaps, self.specs)])
            buffers = np.concatenate([a[s.num_params:] for (a, _), s in zip(snaps, self.specs)])
            layout.load_into(self.model, params, buffers)
            bn = "none"
            if self.bn:
                bn = "pushed"
                if weights == "polyak":
                    recompute_bn_from(self.model, bn_batches(self.plan), self.plan.in_channels,
                                      self.plan.image_size, self.device)
                    bn = f"recomputed ({cfg.bn_batches} batches)"
            batches, views = self.held_out(final)
            m = evaluate_batches(self.model, batches, in_channels=self.plan.in_channels,
                                 image_size=self.plan.image_size, views=views, device=self.device)
            rows.append({"time": now, "elapsed": now - t0, "step": step,
                         "weights": weights, "bn": bn, **m})
        return rows

    def held_out(self, final: bool):
        """(batches of (x, y), views per image) of the held-out split."""
        cfg, data = self.plan.cfg, self.plan.data
        if not data.streamed:
            return array_batches(data.x_test, data.y_test), 1
        from ..data.stream import held_out

        transform = self.plan.transforms[1]
        if not final and transform.crops != 1:
            transform = dataclasses.replace(transform, crops=1)
        limit = None if final else cfg.eval_images
        return held_out(data.pieces("val"), transform, max(1, 256 // transform.crops), limit), \
            transform.crops


class EvaluatorActor:
    """The `Evaluator` in a Ray actor of its own, for a prepared data set: decoding and
    evaluating a held-out split of 50,000 images is no work for the driver's process, and on a
    GPU cluster it takes a GPU when one is free (`trainer.actors.make_evaluator`)."""

    def __init__(self, plan, shards: list, device: str = "cpu", threads: int = 1):
        from ..transport.ray_shard import RayClient

        torch.set_num_threads(threads)
        self.evaluator = Evaluator(plan, RayClient(shards), device=device)

    def evaluate(self, step: int, t0: float, final: bool = False) -> list[dict]:
        return self.evaluator(step, t0, final)

