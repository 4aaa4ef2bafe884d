"""Activity sparsity through competition rather than a penalty."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class KWinnersTakeAll(nn.Module):
    """Keep the ``k`` largest activations per sample (per position for feature maps), zero the rest.

    A stand-in for lateral inhibition: sparsity is a property of the circuit, not of a loss
    term.  Winners pass through a ReLU, so a sample with fewer than ``k`` positive units is
    sparser still.  Under perturbation learning no gradient flows through the selection, so
    its non-differentiability costs nothing.

    Args:
        sparsity: Fraction of units *silenced*, in [0, 1); ``k = ceil((1 - sparsity) * n)``.
        dim: The unit dimension (1 for both ``(N, C)`` and ``(N, C, H, W)`` inputs).
    """

    def __init__(self, sparsity: float = 0.8, dim: int = 1) -> None:
        super().__init__()
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity={sparsity!r} is invalid: allowed is a float in [0, 1).")
        self.sparsity = sparsity
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[self.dim]
        k = max(1, math.ceil((1.0 - self.sparsity) * n))
        if k >= n:
            return torch.relu(x)
        threshold = x.topk(k, dim=self.dim).values.narrow(self.dim, k - 1, 1)
        return torch.where(x >= threshold, torch.relu(x), torch.zeros((), dtype=x.dtype))

    def extra_repr(self) -> str:
        return f"sparsity={self.sparsity}, dim={self.dim}"
