"""What a model returns, and the training loss built from it.

Models with auxiliary classifiers (GoogLeNet: two heads after 4a and 4d; Inception v3: one) return
`AuxOutputs(logits, aux)` in train mode and plain logits in eval mode, as torchvision does. The
GoogLeNet paper weights each auxiliary loss by 0.3 and drops the heads at inference (Szegedy et al.
2014, sec. 5); Inception v3 adds label smoothing 0.1 (Szegedy et al. 2015, sec. 7).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class AuxOutputs(NamedTuple):
    logits: torch.Tensor  # (B, num_classes), the main classifier
    aux: tuple[torch.Tensor, ...]  # each (B, num_classes), only in train mode


def main_logits(output) -> torch.Tensor:
    """The main classifier's logits, whatever the model returned."""
    return output.logits if isinstance(output, AuxOutputs) else output


def training_loss(output, target: torch.Tensor, *, aux_weight: float = 0.3,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of the main head plus `aux_weight` times each auxiliary head's."""
    if not isinstance(output, AuxOutputs):
        return F.cross_entropy(output, target, label_smoothing=label_smoothing)
    loss = F.cross_entropy(output.logits, target, label_smoothing=label_smoothing)
    for aux in output.aux:
        loss = loss + aux_weight * F.cross_entropy(aux, target, label_smoothing=label_smoothing)
    return loss
