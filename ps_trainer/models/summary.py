"""What `ps-train models` prints: parameters, input size, multiply-adds and aux heads of each model.

Models are built on the `meta` device, which allocates no memory and runs no arithmetic, so
describing the whole zoo (VGG's 138M parameters included) takes seconds. The multiply-add convention
is `flops.count_macs`'s; the figures are for one image at the model's own input size, with the
classifier sized for the paper's dataset (`ModelSpec.num_classes`).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .flops import count_macs, count_params
from .registry import build, get_spec, list_models

COLUMNS = ("name", "params", "input_size", "gmacs", "aux_heads", "paper")


def build_meta(name: str, **options) -> torch.nn.Module:
    """`build(name, **options)` on the meta device: shapes only, for counting."""
    with torch.device("meta"):
        return build(name, **options)


@lru_cache(maxsize=None)
def _describe(name: str) -> dict:
    spec = get_spec(name)
    model = build_meta(spec.name, num_classes=spec.num_classes)
    macs = count_macs(model, spec.input_size, spec.in_channels).total
    return {"name": spec.name, "params": count_params(model), "input_size": spec.input_size,
            "macs": macs, "gmacs": round(macs / 1e9, 3), "aux_heads": spec.aux_heads,
            "min_input_size": spec.min_input_size, "num_classes": spec.num_classes,
            "reference": spec.reference, "paper": spec.paper}


def describe(name: str) -> dict:
    """Parameters, input size, multiply-adds at that size, aux heads, paper, of one model."""
    return dict(_describe(get_spec(name).name))


def model_table() -> list[dict]:
    """`describe` for every registered model, sorted by name."""
    return [describe(name) for name in list_models()]


def format_table(rows: list[dict] | None = None) -> str:
    """A plain-text table of `model_table()` rows, one model a line."""
    rows = model_table() if rows is None else rows
    header = f"{'name':<22}{'params':>14}{'input':>7}{'GMACs':>9}{'aux':>5}  paper"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['name']:<22}{r['params']:>14,}{r['input_size']:>7}{r['gmacs']:>9.3f}"
                     f"{r['aux_heads']:>5}  {r['paper']}")
    return "\n".join(lines)


def survives(name: str, size: int, *, train: bool = False) -> bool:
    """Whether a forward pass at `size`x`size` works (meta device; train mode runs the aux heads).

    Batch 2, because train-mode BatchNorm needs more than one value per channel.
    """
    spec = get_spec(name)
    model = build_meta(spec.name, num_classes=spec.num_classes).train(train)
    try:
        with torch.no_grad():
            model(torch.zeros(2, spec.in_channels, size, size, device="meta"))
    except (RuntimeError, ValueError):
        return False
    return True


def measure_min_input_size(name: str, *, train: bool = False, upper: int | None = None) -> int:
    """The smallest side a forward survives, by bisection (sizes survive monotonically here)."""
    hi = upper or get_spec(name).input_size
    if not survives(name, hi, train=train):
        raise ValueError(f"model {name!r} fails at its own input size {hi}")
    lo = 0  # invariant: lo fails (a 0-pixel image always does), hi survives
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if survives(name, mid, train=train) else (mid, hi)
    return hi
