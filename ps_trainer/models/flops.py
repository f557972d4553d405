"""Parameter and multiply-add counts, computed from the module graph rather than typed in.

Convention (the one that reproduces the ResNet paper's FLOPs row and GoogLeNet's Table 1 "ops",
see tests/test_models_papers.py): one multiply-add (MAC) per weight per output position.
A Conv2d costs out_elements * (in_channels / groups) * kH * kW, a Linear in_features * out_features
per row. Biases, BatchNorm, activations, pooling, LRN and residual additions count zero: they are
O(activations), not O(weights x positions), and the papers leave them out. torch's own
`torch.utils.flop_counter` counts 2 FLOPs per MAC, so its figure is exactly twice ours for models made
of convolutions and linear layers (checked in the tests).

Counting runs on the `meta` device when the model lives there (no memory, no arithmetic): the hooks
only read shapes, so the whole zoo is counted in seconds on a laptop CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn


@dataclass
class MacReport:
    total: int  # MACs for one image
    per_module: dict[str, int] = field(default_factory=dict)  # leaf Conv2d/Linear name -> MACs

    def under(self, prefix: str) -> int:
        """MACs of every counted layer inside the submodule `prefix` (e.g. 'inception3a')."""
        return sum(v for k, v in self.per_module.items() if k == prefix or k.startswith(prefix + "."))


def count_params(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_weights(module: nn.Module) -> int:
    """Parameters of the Conv2d/Linear weights only: no biases, no BatchNorm affine terms."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    return output.numel() * module.in_features  # nn.Linear: out_features per row already in numel


def count_macs(model: nn.Module, input_size: int | tuple[int, int], in_channels: int = 3) -> MacReport:
    """Multiply-adds of one eval-mode forward pass (auxiliary heads excluded) on one image."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    report = MacReport(0)
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            def hook(mod, _inputs, output, name=name):
                report.per_module[name] = report.per_module.get(name, 0) + _layer_macs(mod, output)
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, h, w, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    report.total = sum(report.per_module.values())
    return report
