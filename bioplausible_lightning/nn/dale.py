"""Sign-constrained (Dale's law) layers with lognormal weights.

Every presynaptic unit (an input feature of a linear layer, an input channel of a
convolution) gets a fixed sign, excitatory (+1) or inhibitory (-1).  With the default
``parametrization="exp"`` the effective weight is ``sign * exp(log_weight)``: Dale's law
then holds by construction for *any* update of ``log_weight`` (no clamp), and additive
updates of ``log_weight`` are multiplicative updates of the weight, which is what drives
weight magnitudes towards a lognormal distribution.  ``parametrization="plain"`` keeps a
free weight with the same initial values so that monitors can show what is lost without
the constraint.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Parametrization = Literal["exp", "plain"]
_PARAMETRIZATIONS = ("exp", "plain")


def _check_config(inhibitory_fraction: float, parametrization: str, init_sigma: float) -> None:
    if not 0.0 <= inhibitory_fraction < 1.0:
        raise ValueError(
            f"inhibitory_fraction={inhibitory_fraction!r} is invalid: allowed is a float in [0, 1) "
            "(0 = purely excitatory)."
        )
    if parametrization not in _PARAMETRIZATIONS:
        raise ValueError(
            f"parametrization={parametrization!r} is invalid: "
            f"allowed values are {_PARAMETRIZATIONS}."
        )
    if not init_sigma > 0:
        raise ValueError(f"init_sigma={init_sigma!r} is invalid: it must be > 0.")


def presynaptic_signs(
    num_units: int, inhibitory_fraction: float, generator: torch.Generator | None = None
) -> Tensor:
    """Return a ±1 vector with ``round(num_units * inhibitory_fraction)`` inhibitory units.

    The inhibitory units are chosen at random (not the last ones), so that a layer's
    input ordering carries no E/I structure.
    """
    num_inhibitory = int(round(num_units * inhibitory_fraction))
    signs = torch.ones(num_units)
    if num_inhibitory:
        order = torch.randperm(num_units, generator=generator)
        signs[order[:num_inhibitory]] = -1.0
    return signs


def lognormal_log_magnitudes(
    shape: tuple[int, ...],
    signs: Tensor,
    fan_in: int,
    init_sigma: float,
    init_mu: float | None,
    balanced: bool,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``log|w| ~ N(mu, sigma^2)`` per weight; ``signs`` broadcasts along dim 1.

    With ``balanced=True`` (and both E and I units present) every postsynaptic unit's
    inhibitory weights are scaled so that its excitatory and inhibitory weights sum to the
    same total: a uniform (common-mode) input then drives it not at all.  Without this
    detailed E/I balance, all-positive ReLU activity pushes every unit by a random offset
    that grows layer after layer until deep networks map every input to the same output.
    The default ``mu`` then sets the *fluctuating* part of the weights to He scale,
    ``Var[w | presynaptic unit] * fan_in = 2``: with one sign per presynaptic unit, a
    lognormal weight's mean carries ``exp(-sigma^2)`` of its second moment, and that part
    only moves the common mode, which the balance cancels.  ReLU activity then keeps its
    scale with depth.  The magnitudes stay lognormal within each E/I group of a unit (a
    per-unit shift of ``log|w|``).
    """
    default_scale = init_mu is None
    target = 2.0 / (fan_in * -math.expm1(-(init_sigma**2)))  # E[w^2] giving He-scaled Var
    if default_scale:
        init_mu = 0.5 * math.log(target) - init_sigma**2
    log_w = torch.randn(shape, generator=generator) * init_sigma + init_mu
    inh = (signs < 0).view(1, -1, *([1] * (len(shape) - 2))).expand(shape)
    if balanced and inh.any() and not inh.all():
        magnitudes = log_w.exp()
        dims = tuple(range(1, len(shape)))
        excitation = magnitudes.masked_fill(inh, 0).sum(dims)
        inhibition = magnitudes.masked_fill(~inh, 0).sum(dims)
        shift = (excitation / inhibition).log().view(-1, *([1] * (len(shape) - 1)))
        log_w = torch.where(inh, log_w + shift, log_w)
        if default_scale:
            second_moment = (2 * log_w).exp().mean()
            log_w = log_w + 0.5 * (math.log(target) - second_moment.log())
    return log_w


class _DaleMixin(nn.Module):
    """Shared parametrisation logic of :class:`DaleLinear` and :class:`DaleConv2d`."""

    sign: Tensor
    parametrization: str

    def _init_dale(
        self,
        weight_shape: tuple[int, ...],
        num_presynaptic: int,
        fan_in: int,
        bias: bool,
        inhibitory_fraction: float,
        parametrization: str,
        init_mu: float | None,
        init_sigma: float,
        balanced: bool,
        generator: torch.Generator | None,
    ) -> None:
        _check_config(inhibitory_fraction, parametrization, init_sigma)
        self.parametrization = parametrization
        self.inhibitory_fraction = inhibitory_fraction
        signs = presynaptic_signs(num_presynaptic, inhibitory_fraction, generator)
        self.register_buffer("sign", signs)
        log_w = lognormal_log_magnitudes(
            weight_shape, signs, fan_in, init_sigma, init_mu, balanced, generator
        )
        if parametrization == "exp":
            self.log_weight = nn.Parameter(log_w)
        else:
            self.weight_raw = nn.Parameter(self._expand_sign(len(weight_shape)) * log_w.exp())
        self.bias = nn.Parameter(torch.zeros(weight_shape[0])) if bias else None

    def _expand_sign(self, ndim: int) -> Tensor:
        return self.sign.view(1, -1, *([1] * (ndim - 2)))

    @property
    def weight(self) -> Tensor:
        """The effective weight used in the forward pass (``sign * exp(log_weight)``)."""
        if self.parametrization == "exp":
            return self._expand_sign(self.log_weight.ndim) * self.log_weight.exp()
        return self.weight_raw

    def accumulate_weight_grad(self, grad_weight: Tensor) -> None:
        """Add a gradient w.r.t. the *effective* weight into the underlying parameter's grad.

        For the exp parametrisation this is the local chain rule ``dL/dθ = dL/dW ⊙ W``:
        a rule that estimates ``dL/dW`` needs no knowledge of the parametrisation.
        """
        if self.parametrization == "exp":
            _accumulate(self.log_weight, grad_weight * self.weight)
        else:
            _accumulate(self.weight_raw, grad_weight)

    @property
    def weight_parameter(self) -> nn.Parameter:
        """The trainable tensor behind :attr:`weight`."""
        return self.log_weight if self.parametrization == "exp" else self.weight_raw


def _accumulate(param: Tensor, grad: Tensor) -> None:
    """``param.grad += grad``, like autograd does; ``grad`` must be a fresh tensor (it is
    adopted without a copy when ``param.grad`` is None)."""
    if param.grad is None:
        param.grad = grad.detach().to(param.dtype).view(param.shape)
    else:
        param.grad.add_(grad.view(param.shape).to(param.grad.dtype))


class DaleLinear(_DaleMixin):
    """A linear layer obeying Dale's law, with lognormally distributed weight magnitudes.

    Args:
        in_features: Number of presynaptic units.
        out_features: Number of postsynaptic units.
        bias: Whether to learn an additive bias.
        inhibitory_fraction: Fraction of presynaptic units that are inhibitory, in [0, 1).
        parametrization: ``"exp"`` (sign by construction) or ``"plain"`` (free weight).
        init_mu: Mean of ``log|w|``; default gives He scaling.
        init_sigma: Standard deviation of ``log|w|`` (> 0).
        balanced: Scale inhibitory weights so excitation and inhibition cancel on average.
        generator: Optional generator for reproducible signs and weights.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        inhibitory_fraction: float = 0.2,
        parametrization: Parametrization = "exp",
        init_mu: float | None = None,
        init_sigma: float = 0.5,
        balanced: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self._init_dale(
            (out_features, in_features), in_features, in_features, bias,
            inhibitory_fraction, parametrization, init_mu, init_sigma, balanced, generator,
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expected input of shape (..., {self.in_features}), "
                f"got {tuple(x.shape)}."
            )
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, inhibitory_fraction={self.inhibitory_fraction}, "
            f"parametrization={self.parametrization!r}"
        )


class DaleConv2d(_DaleMixin):
    """A 2-D convolution obeying Dale's law: one sign per *input channel*.

    Args:
        in_channels: Number of presynaptic channels.
        out_channels: Number of postsynaptic channels.
        kernel_size: Square kernel size.
        stride: Convolution stride.
        padding: Zero padding.
        bias: Whether to learn an additive bias.
        inhibitory_fraction: Fraction of input channels that are inhibitory, in [0, 1).
        parametrization: ``"exp"`` (sign by construction) or ``"plain"`` (free weight).
        init_mu: Mean of ``log|w|``; default gives He scaling.
        init_sigma: Standard deviation of ``log|w|`` (> 0).
        balanced: Scale inhibitory weights so excitation and inhibition cancel on average.
        generator: Optional generator for reproducible signs and weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        bias: bool = True,
        inhibitory_fraction: float = 0.2,
        parametrization: Parametrization = "exp",
        init_mu: float | None = None,
        init_sigma: float = 0.5,
        balanced: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kernel_size, kernel_size)
        self.stride = (stride, stride)
        self.padding = (padding, padding)
        self.dilation = (1, 1)
        self.groups = 1
        self._init_dale(
            (out_channels, in_channels, kernel_size, kernel_size), in_channels,
            in_channels * kernel_size * kernel_size, bias,
            inhibitory_fraction, parametrization, init_mu, init_sigma, balanced, generator,
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expected input of shape (N, {self.in_channels}, H, W), "
                f"got {tuple(x.shape)}."
            )
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, "
            f"inhibitory_fraction={self.inhibitory_fraction}, "
            f"parametrization={self.parametrization!r}"
        )
