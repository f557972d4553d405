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

    A pulled snapshot that nobody will write again (a sealed object in Ray's object store) need
    not be copied at all on a CPU: `alias(p0, p1, src)` re-points the parameters at views of it.
    `params` then holds only the pieces of tensors a shard boundary cuts; `wire_params()` reads
    the weights the model really has, wherever they live. The gradients stay in `grads`.

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
        self._entries = [(named_p[e.name], e) for e in self.layout.params]  # in the flat order
        for p, e in self._entries:
            p.data, p.grad = (self._view(t, e) for t in (self.params, self.grads))
        self._alias_plans: dict = {}  # (p0, p1) -> (whole tensors, cut pieces), see `alias`
        self.aliased = False  # some parameters are views of a snapshot, not of `params`
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
        if self.aliased:  # back to `params` for the ones `alias` pointed at a snapshot
            for p, e in self._entries:
                if e.offset < p1 and e.offset + e.numel > p0:
                    p.data = self._view(self.params, e)
        if not self.permuted:
            self.params[p0:p1].copy_(src, non_blocking=non_blocking)
            return
        self._wire[p0:p1].copy_(src, non_blocking=non_blocking)
        self.params[p0:p1].copy_(self._wire[p0:p1])  # right for all but the permuted ones
        for e in self.permuted:
            if p0 <= e.offset < p1:
                self._view(self.params, e).copy_(self._wire[e.offset:e.offset + e.numel]
                                                 .view(e.shape))

    def alias(self, p0: int, p1: int, src: torch.Tensor) -> None:
        """Parameters [p0, p1) of the wire order from `src` (CPU, float32, read only), with no
        copy: every tensor wholly inside the range becomes a view of `src`; the pieces of the (at
        most two) tensors the range cuts are copied into `params`, where those stay. Only for a
        snapshot nobody writes again, since the model now reads it in place, and only in the
        wire order (not channels_last, whose layout differs). It saves the landing copy: a pass
        over the model's bytes per pull, 8-9 ms for ResNet-50's 102 MB on one core here."""
        if self.permuted or src.device.type != "cpu" or src.dtype != torch.float32:
            raise ValueError("alias: only for CPU models in the wire order; use load")
        plan = self._alias_plans.get((p0, p1))
        if plan is None:
            plan = self._alias_plans[(p0, p1)] = self._plan_alias(p0, p1)
        whole, cut = plan
        storage, base = src.untyped_storage(), src.storage_offset()
        with torch.no_grad():  # `set_` re-points a tensor in one call, 3x faster than `.data =`
            for p, a, shape in whole:
                p.set_(storage, base + a, shape)  # (contiguous strides)
        for p, e, a, b in cut:
            self.params[a:b].copy_(src[a - p0:b - p0])
            p.data = self._view(self.params, e)  # (already, unless `load` was mixed in)
        self.aliased = True

    def _plan_alias(self, p0: int, p1: int) -> tuple[list, list]:
        whole, cut = [], []
        for p, e in self._entries:
            a, b = max(p0, e.offset), min(p1, e.offset + e.numel)
            if a >= b:
                continue
            if (a, b) == (e.offset, e.offset + e.numel):
                whole.append((p, a - p0, e.shape))
            else:
                cut.append((p, e, a, b))
        return whole, cut

    def wire_grads(self) -> torch.Tensor:
        """The flat gradient in the wire (server) order: `grads` itself, or a permuted copy."""
        if not self.permuted:
            return self.grads
        self._wire.copy_(self.grads)
        for e in self.permuted:
            self._wire[e.offset:e.offset + e.numel].view(e.shape).copy_(self._view(self.grads, e))
        return self._wire

    def wire_params(self) -> torch.Tensor:
        """A copy of the model's parameters in the wire order, read through its own tensors
        (for tests and checks: right whether they live in `params` or in aliased snapshots)."""
        return torch.cat([p.detach().reshape(-1) for p, _ in self._entries])

    def zero_grad(self) -> None:
        self.grads.zero_()

    def grads_are_views(self) -> bool:
        """True while every parameter's .grad still aliases the flat gradient buffer."""
        base = self.grads.data_ptr()
        end = base + self.grads.numel() * self.grads.element_size()
        return all(p.grad is not None and base <= p.grad.data_ptr() < end
                   for p in self.model.parameters() if p.requires_grad)
