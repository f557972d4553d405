"""Flat parameter layout and shard plan (DistBelief, Dean et al. 2012, sec. 4.1: the model is
partitioned across parameter-server shards, each holding a contiguous piece).

Invariants:
- A model's trainable parameters are laid out once, in `named_parameters()` order, into one
  contiguous float32 vector; `ParamLayout` records each tensor's name, shape and offset.
- Floating-point buffers (BatchNorm running mean/variance) get a second flat vector of their own:
  they are state, not gradients, but they travel with pushes and are averaged on the server.
- `shards(S)` cuts both vectors into S contiguous pieces of near-equal bytes. A shard is a pair of
  half-open ranges, so a shard's weights are one slice of the flat vector: no gather, no dict.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    offset: int  # elements from the start of the flat vector
    numel: int


@dataclass(frozen=True)
class ShardSpec:
    """One shard's share of the two flat vectors, as half-open element ranges."""

    index: int
    params: tuple[int, int]  # [start, stop) into the parameter vector
    buffers: tuple[int, int]  # [start, stop) into the buffer vector

    @property
    def num_params(self) -> int:
        return self.params[1] - self.params[0]

    @property
    def num_buffers(self) -> int:
        return self.buffers[1] - self.buffers[0]


def _entries(named) -> tuple[tuple[Entry, ...], int]:
    out, offset = [], 0
    for name, t in named:
        out.append(Entry(name, tuple(t.shape), offset, t.numel()))
        offset += t.numel()
    return tuple(out), offset


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    """Cut [0, total) into `parts` contiguous ranges whose sizes differ by at most one element."""
    bounds = [total * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


@dataclass(frozen=True)
class ParamLayout:
    params: tuple[Entry, ...]
    buffers: tuple[Entry, ...]  # floating-point buffers only (running_mean, running_var)
    num_params: int
    num_buffers: int

    @classmethod
    def from_model(cls, model: nn.Module) -> "ParamLayout":
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        floating = [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
        params, num_params = _entries(trainable)
        buffers, num_buffers = _entries(floating)
        return cls(params, buffers, num_params, num_buffers)

    def shards(self, num_shards: int) -> list[ShardSpec]:
        """Near-equal contiguous pieces: an element boundary may fall inside a tensor, which is
        fine because a shard never needs to know which tensors it holds."""
        if num_shards < 1:
            raise ValueError(f"--ps-shards must be >= 1, got {num_shards}")
        if num_shards > self.num_params:
            raise ValueError(f"--ps-shards {num_shards} is more than the model's {self.num_params} "
                             f"parameters; choose 1..{self.num_params}")
        p = _split(self.num_params, num_shards)
        b = _split(self.num_buffers, num_shards)
        return [ShardSpec(i, p[i], b[i]) for i in range(num_shards)]

    def fingerprint(self) -> str:
        """A short hash of names and shapes: two runs can exchange state only if these agree."""
        h = hashlib.sha256()
        for e in self.params + self.buffers:
            h.update(f"{e.name}:{e.shape};".encode())
        return h.hexdigest()[:16]

    def flatten(self, model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        """Copy the model's parameters and float buffers into two new flat float32 arrays."""
        return (_gather(model.named_parameters(), self.params, self.num_params),
                _gather(model.named_buffers(), self.buffers, self.num_buffers))

    def load_into(self, model: nn.Module, params: np.ndarray, buffers: np.ndarray | None = None) -> None:
        """Copy flat arrays back into a model's tensors (for evaluation and export)."""
        _scatter(model.named_parameters(), self.params, params)
        if buffers is not None:
            _scatter(model.named_buffers(), self.buffers, buffers)


def _gather(named, entries: tuple[Entry, ...], total: int) -> np.ndarray:
    tensors = dict(named)
    flat = np.empty(total, dtype=np.float32)
    for e in entries:
        flat[e.offset:e.offset + e.numel] = tensors[e.name].detach().reshape(-1).float().cpu().numpy()
    return flat


def _scatter(named, entries: tuple[Entry, ...], flat: np.ndarray) -> None:
    tensors = dict(named)
    src = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
    with torch.no_grad():
        for e in entries:
            t = tensors[e.name]
            t.copy_(src[e.offset:e.offset + e.numel].view(e.shape))


class FlatModel:
    """Re-points a model's parameters, gradients and float buffers at views of three flat tensors.

    After this, loading a pull is one `copy_` per shard into `self.params`, and a push reads a
    slice of `self.grads` with no gather: autograd accumulates into the views in place (we never
    set grads to None, only zero them).
    """

    def __init__(self, model: nn.Module, layout: ParamLayout | None = None, device="cpu"):
        self.model = model
        self.layout = layout or ParamLayout.from_model(model)
        init_p, init_b = self.layout.flatten(model)
        self.params = torch.from_numpy(init_p).to(device)  # (P,) float32
        self.grads = torch.zeros_like(self.params)  # (P,)
        self.buffers = torch.from_numpy(init_b).to(device)  # (Bf,)
        named_p = dict(model.named_parameters())
        for e in self.layout.params:
            p = named_p[e.name]
            p.data = self.params[e.offset:e.offset + e.numel].view(e.shape)
            p.grad = self.grads[e.offset:e.offset + e.numel].view(e.shape)
        modules = dict(model.named_modules())
        for e in self.layout.buffers:
            owner, _, attr = e.name.rpartition(".")
            modules[owner]._buffers[attr] = self.buffers[e.offset:e.offset + e.numel].view(e.shape)
        model.to(device)  # moves integer buffers (num_batches_tracked); floats are already there

    def zero_grad(self) -> None:
        self.grads.zero_()

    def grads_are_views(self) -> bool:
        """True while every parameter's .grad still aliases the flat gradient buffer."""
        base = self.grads.data_ptr()
        end = base + self.grads.numel() * self.grads.element_size()
        return all(p.grad is not None and base <= p.grad.data_ptr() < end
                   for p in self.model.parameters() if p.requires_grad)
