"""One registry for the model zoo (the timm `_registry.py` pattern).

Every model family registers its public factories with `@register_model(...)`, which records a
`ModelSpec`: what input the network expects and what the trainer needs to know about it (auxiliary
heads and their loss weight, label smoothing, default input size). `build(name, ...)` is the only way
the rest of ps-trainer makes a model, so an unknown name fails in one place with the list of known
names. Invariant: every factory takes `num_classes` and `in_channels` keywords plus its own options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[..., nn.Module]
    input_size: int  # pixels, the side of the square input the paper trains on
    min_input_size: int  # pixels, the smallest side an eval-mode forward survives (measured)
    in_channels: int = 3  # channels the first convolution expects by default
    aux_heads: int = 0  # auxiliary classifiers returned in train mode (GoogLeNet: 2, v3: 1)
    paper: str = ""  # short citation, shown by `ps-train models`
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # Added after the first release; keep them last so positional construction still works.
    min_train_input_size: int = 0  # pixels, smallest side with the aux heads too; 0 = min_input_size
    aux_weight: float = 0.3  # weight of each auxiliary loss (GoogLeNet sec. 5: 0.3)
    label_smoothing: float = 0.0  # the paper's training recipe (Inception v3 sec. 7: 0.1)
    reference: str = ""  # the implementation whose state_dict this one loads, if any
    num_classes: int = 1000  # classes of the paper's dataset: what `describe` sizes the head for

    @property
    def min_train_size(self) -> int:
        """Smallest side a train-mode forward survives (aux heads can need more than the trunk)."""
        return self.min_train_input_size or self.min_input_size

    def loss_options(self) -> dict:
        """Keyword arguments for `training_loss` that reproduce the paper's recipe."""
        return {"aux_weight": self.aux_weight, "label_smoothing": self.label_smoothing}


_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}


def register_model(*, input_size: int, min_input_size: int, in_channels: int = 3,
                   aux_heads: int = 0, paper: str = "", aliases: tuple[str, ...] = (),
                   min_train_input_size: int = 0, aux_weight: float = 0.3,
                   label_smoothing: float = 0.0, reference: str = "", num_classes: int = 1000):
    """Decorator: register a factory `fn(num_classes=..., in_channels=..., **options)` under its name."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, fn, input_size, min_input_size, in_channels,
                                    aux_heads, paper, tuple(aliases), min_train_input_size,
                                    aux_weight, label_smoothing, reference, num_classes)
        for alias in aliases:
            _ALIASES[alias] = name
        return fn

    return wrap


def list_models() -> list[str]:
    """Registered model names (aliases excluded), sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[key]


def build(name: str, num_classes: int = 1000, in_channels: int | None = None, **options) -> nn.Module:
    """Build a registered model. `in_channels=None` means the model's default (3 for RGB)."""
    spec = get_spec(name)
    if in_channels is None:
        in_channels = spec.in_channels
    return spec.factory(num_classes=num_classes, in_channels=in_channels, **options)
