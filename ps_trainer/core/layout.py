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

    With `channels_last` (fast convolutions on GPUs), every 4-D weight is a channels_last view of
    its region, which then holds the weight in (out, kH, kW, in) order; the parameter server's
    layout (`ParamLayout`, checkpoints, the wire) stays (out, in, kH, kW). `load(p0, p1, src)`
    and `wire_grads()` convert at that boundary, so the parameters stay aliased to the flat
    buffers either way (`model.to(memory_format=...)` would re-allocate them and break that).
    """

    def __init__(self, model: nn.Module, layout: ParamLayout | None = None, device="cpu",
                 channels_last: bool = False):
        self.model = model
        self.layout = layout or ParamLayout.from_model(model)
        init_p, init_b = self.layout.flatten(model)
        self.params = torch.from_numpy(init_p).to(device)  # (P,) float32
        self.grads = torch.zeros_like(self.params)  # (P,)
        self.buffers = torch.from_numpy(init_b).to(device)  # (Bf,)
        # The 4-D weights stored in (out, kH, kW, in) order, and their wire-order staging.
        self.permuted = [e for e in self.layout.params if channels_last and len(e.shape) == 4]
        self._permuted_names = {e.name for e in self.permuted}
        self._wire = torch.empty_like(self.params) if self.permuted else None
        named_p = dict(model.named_parameters())
        for e in self.layout.params:
            p = named_p[e.name]
            p.data, p.grad = (self._view(t, e) for t in (self.params, self.grads))
        modules = dict(model.named_modules())
        for e in self.layout.buffers:
            owner, _, attr = e.name.rpartition(".")
            modules[owner]._buffers[attr] = self.buffers[e.offset:e.offset + e.numel].view(e.shape)
        model.to(device)  # moves integer buffers (num_batches_tracked); floats are already there
        if self.permuted:  # the initial weights, into the permuted order
            self.load(0, self.layout.num_params, torch.from_numpy(init_p))

    def _view(self, flat: torch.Tensor, e: Entry) -> torch.Tensor:
        region = flat[e.offset:e.offset + e.numel]
        if e.name in self._permuted_names:
            o, i, h, w = e.shape
            return region.view(o, h, w, i).permute(0, 3, 1, 2)  # (O, I, H, W), channels_last
        return region.view(e.shape)

    def load(self, p0: int, p1: int, src: torch.Tensor, non_blocking: bool = False) -> None:
        """Parameters [p0, p1) of the wire (server) order from `src` (any device, read only;
        `non_blocking` from pinned host memory: the copy is queued, the host goes on)."""
        if not self.permuted:
            self.params[p0:p1].copy_(src, non_blocking=non_blocking)
            return
        self._wire[p0:p1].copy_(src, non_blocking=non_blocking)
        self.params[p0:p1].copy_(self._wire[p0:p1])  # right for all but the permuted ones
        for e in self.permuted:
            if p0 <= e.offset < p1:
                self._view(self.params, e).copy_(self._wire[e.offset:e.offset + e.numel]
                                                 .view(e.shape))

    def wire_grads(self) -> torch.Tensor:
        """The flat gradient in the wire (server) order: `grads` itself, or a permuted copy."""
        if not self.permuted:
            return self.grads
        self._wire.copy_(self.grads)
        for e in self.permuted:
            self._wire[e.offset:e.offset + e.numel].view(e.shape).copy_(self._view(self.grads, e))
        return self._wire

    def wire_params(self) -> torch.Tensor:
        """The flat parameters in the wire order (for tests and checks)."""
        if not self.permuted:
            return self.params
        out = self.params.clone()
        for e in self.permuted:
            out[e.offset:e.offset + e.numel].view(e.shape).copy_(self._view(self.params, e))
        return out

    def zero_grad(self) -> None:
        self.grads.zero_()

    def grads_are_views(self) -> bool:
        """True while every parameter's .grad still aliases the flat gradient buffer."""
        base = self.grads.data_ptr()
        end = base + self.grads.numel() * self.grads.element_size()
        return all(p.grad is not None and base <= p.grad.data_ptr() < end
                   for p in self.model.parameters() if p.requires_grad)
