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


class SoftWinnerTakeAll(nn.Module):
    """Divisive competition: ``k`` × a softmax over the ``k`` strongest units, zeros elsewhere.

    Lateral inhibition that *normalises* the population (each example's activity sums to
    ``k``, one per winner on average, whatever the input's scale) instead of only silencing
    it: the activity a Hebbian layer's readout sees.  Soft winner-take-all features are what
    makes SoftHebb-type networks robust to small input perturbations; the top-k cut makes a
    ``sparsity`` fraction of them exactly zero.

    Args:
        sparsity: Fraction of units silenced, in [0, 1); ``k = ceil((1 - sparsity) * n)``.
        temperature: Softmax temperature (> 0) on the units' input.
        dim: The unit dimension (1 for both ``(N, C)`` and ``(N, C, H, W)`` inputs).
    """

    def __init__(self, sparsity: float = 0.95, temperature: float = 1.0, dim: int = 1) -> None:
        super().__init__()
        if isinstance(sparsity, bool) or not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity={sparsity!r} is invalid: allowed is a float in [0, 1).")
        if isinstance(temperature, bool) or not (
            isinstance(temperature, (int, float)) and 0 < temperature < math.inf
        ):
            raise ValueError(f"temperature={temperature!r} is invalid: it must be a number > 0.")
        self.sparsity = sparsity
        self.temperature = float(temperature)
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[self.dim]
        k = max(1, math.ceil((1.0 - self.sparsity) * n))
        if k >= n:
            return torch.softmax(x / self.temperature, dim=self.dim) * k
        values, indices = x.topk(k, dim=self.dim)
        weights = torch.softmax(values / self.temperature, dim=self.dim) * k
        return torch.zeros_like(x).scatter(self.dim, indices, weights)

    def extra_repr(self) -> str:
        return f"sparsity={self.sparsity}, temperature={self.temperature}, dim={self.dim}"
