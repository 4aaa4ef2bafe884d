"""Per-sample loss functions: perturbation rules need one loss value per example."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from ._validation import check_choice

PerSampleLoss = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy per example, shape ``(N,)``."""
    return F.cross_entropy(logits, targets, reduction="none")


def mse(logits: Tensor, targets: Tensor) -> Tensor:
    """Squared error to one-hot targets, summed over classes, per example."""
    one_hot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
    return (logits - one_hot).pow(2).sum(-1)


LOSSES: dict[str, PerSampleLoss] = {"cross_entropy": cross_entropy, "mse": mse}


def resolve_loss(loss: str | PerSampleLoss) -> PerSampleLoss:
    """Map a loss name to its function; a callable must return one value per example."""
    if callable(loss):
        return loss
    check_choice("loss", loss, sorted(LOSSES), hint="or a callable")
    return LOSSES[loss]
