"""`ps-train export RUN_DIR --weights polyak|raw --out FILE`: a plain PyTorch state_dict.

The file loads with `torch.load(FILE, weights_only=True)` into
`ps_trainer.models.build(model, num_classes=...)` with `strict=True`. It is read from the run's
latest checkpoint (verified as every checkpoint is), never from a live cluster:

- `raw`: the shards' weights, with the BatchNorm statistics the workers pushed (their mean);
- `polyak`: the averaged weights. They are a different network from any the workers ran, so
  their BatchNorm statistics are recomputed on training batches first (as
  `torch.optim.swa_utils.update_bn`), exactly as the run's own Polyak evaluation did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..flags import ArgumentParser
from ..core import checkpoint


def served_bn(sd: dict) -> np.ndarray:
    """The BatchNorm statistics a shard serves: the mean of the workers' latest, if any."""
    slots = list(sd["bn_slots"].values())
    return np.mean(np.stack(slots), axis=0, dtype=np.float32) if slots else sd["buffers"]


def export(run_dir: str, weights: str, out: str) -> dict:
    from .evaluate import bn_batches, has_batchnorm, recompute_bn_from
    from .plan import prepare

    if weights not in ("raw", "polyak"):
        raise ValueError(f"--weights {weights!r}: choose raw or polyak")
    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise ValueError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = TrainConfig.from_yaml(config)
    plan = prepare(cfg)
    states, meta = checkpoint.load(cfg.checkpoint_dir or run_dir, model=cfg.model,
                                   fingerprint=plan.layout.fingerprint())
    key = "average" if weights == "polyak" else "params"
    if any(sd[key] is None for sd in states):
        raise ValueError(f"{run_dir}: the checkpoint has no {weights} weights")
    states = sorted(states, key=lambda sd: sd["index"])
    model = plan.model
    plan.layout.load_into(model, np.concatenate([sd[key] for sd in states]),
                          np.concatenate([served_bn(sd) for sd in states]))
    if weights == "polyak" and has_batchnorm(model):
        recompute_bn_from(model, bn_batches(plan), plan.in_channels, plan.image_size)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    return {"model": cfg.model, "num_classes": plan.data.num_classes,
            "in_channels": plan.in_channels, "weights": weights, "out": out,
            "versions": [sd["version"] for sd in states], "checkpoint": meta["sequence"]}


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="ps-train export", description="Write a run's weights as a "
                                "plain PyTorch state_dict (from its latest checkpoint).")
    p.add_argument("run_dir")
    p.add_argument("--weights", default="polyak", help="polyak (default) or raw")
    p.add_argument("--out", required=True, help="output file, e.g. model.pt")
    a = p.parse_args(argv)
    info = export(a.run_dir, a.weights, a.out)
    print(f"wrote {info['out']}: {info['weights']} weights of {info['model']} "
          f"(checkpoint {info['checkpoint']}, shard versions {info['versions']}); load with "
          f"ps_trainer.models.build({info['model']!r}, num_classes={info['num_classes']})"
          f".load_state_dict(torch.load(path, weights_only=True))")
    return 0
