"""Activity sparsity through competition rather than a penalty."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._validation import check_bool, check_fraction, check_positive


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
        check_fraction("sparsity", sparsity)
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
        total_activity: What each example's activity sums to (> 0; default ``k``).  With
            ``sparsity=0`` and ``total_activity=1`` this is a plain softmax over the layer
            (SoftHebb's readout input), which keeps a wide layer's activity bounded.
    """

    def __init__(
        self,
        sparsity: float = 0.95,
        temperature: float = 1.0,
        dim: int = 1,
        total_activity: float | None = None,
    ) -> None:
        super().__init__()
        check_fraction("sparsity", sparsity)
        check_positive("temperature", temperature)
        if total_activity is not None:
            check_positive("total_activity", total_activity)
        self.sparsity = sparsity
        self.temperature = float(temperature)
        self.dim = dim
        self.total_activity = None if total_activity is None else float(total_activity)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[self.dim]
        k = max(1, math.ceil((1.0 - self.sparsity) * n))
        total = k if self.total_activity is None else self.total_activity
        if k >= n:
            return torch.softmax(x / self.temperature, dim=self.dim) * total
        values, indices = x.topk(k, dim=self.dim)
        weights = torch.softmax(values / self.temperature, dim=self.dim) * total
        return torch.zeros_like(x).scatter(self.dim, indices, weights)

    def extra_repr(self) -> str:
        total = "" if self.total_activity is None else f", total_activity={self.total_activity}"
        return f"sparsity={self.sparsity}, temperature={self.temperature}, dim={self.dim}{total}"


class RectifiedPower(nn.Module):
    """``relu(x) ** n``: Krotov & Hopfield's activation between a Hebbian layer and its
    readout; a power ``n > 1`` sharpens the competition the readout sees.

    Args:
        power: The exponent ``n`` (> 0; Krotov & Hopfield use 4.5 on MNIST).
        normalize: Divide each example's activity by its maximum, so the readout sees
            values in [0, 1] whatever the input's scale (a perturbation readout needs a
            bounded input; Krotov's ``tanh(β·)`` top layer does the same job).
    """

    def __init__(self, power: float = 4.5, normalize: bool = True) -> None:
        super().__init__()
        check_positive("power", power)
        check_bool("normalize", normalize)
        self.power = float(power)
        self.normalize = normalize

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(x).pow(self.power)
        if self.normalize:
            peak = y.flatten(1).amax(dim=1).clamp_min(torch.finfo(y.dtype).tiny)
            y = y / peak.view(-1, *([1] * (y.ndim - 1)))
        return y

    def extra_repr(self) -> str:
        return f"power={self.power}, normalize={self.normalize}"


class Triangle(nn.Module):
    """``relu(x − mean_c x) ** power``: SoftHebb's "triangle" activation (Journé et al. 2023).

    Each unit fires by how much it beats the mean of its layer (over channels at every
    position of a feature map): a cheap lateral inhibition that leaves about half the units
    silent.

    Args:
        power: Exponent applied to the rectified difference (> 0).
        dim: The unit (channel) dimension.
    """

    def __init__(self, power: float = 1.0, dim: int = 1) -> None:
        super().__init__()
        check_positive("power", power)
        self.power = float(power)
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(x - x.mean(dim=self.dim, keepdim=True))
        return y if self.power == 1.0 else y.pow(self.power)

    def extra_repr(self) -> str:
        return f"power={self.power}, dim={self.dim}"
