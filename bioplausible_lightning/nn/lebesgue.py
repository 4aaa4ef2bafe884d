"""The Lebesgue-p inner product of Krotov & Hopfield (2019) as a weight parametrisation.

A unit with synapses ``θ_i`` responds to an input ``x`` with
``⟨θ_i, x⟩_p = Σ_j sign(θ_ij) |θ_ij|^(p−1) x_j``.  That is an ordinary linear (or conv)
layer whose *effective* weight is ``sign(θ) |θ|^(p−1)``, so the layer stays an ``nn.Linear``
/ ``nn.Conv2d`` under :func:`torch.nn.utils.parametrize.register_parametrization`, and every
rule, metric and monitor sees it as one.  ``p = 2`` is the ordinary dot product.

The Krotov–Hopfield Hebbian update acts on the synapses ``θ`` themselves (they converge to
the unit p-sphere ``Σ_j |θ_ij|^p = 1``), not on the effective weight: the parametrisation
says so with ``hebbian_space = "original"``, which :class:`CompetitiveHebbian` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatch

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._validation import check_min, check_names
from .parametrization import register_parametrization


class LebesguePower(nn.Module):
    """``weight = sign(θ) |θ|^(p−1)``: the layer computes ``⟨θ, x⟩_p``.

    Args:
        p: The Lebesgue exponent (>= 2; Krotov & Hopfield use 3 on MNIST).
    """

    #: A Hebbian rule updates the synapses ``θ`` (the parametrisation's original), as in
    #: Krotov & Hopfield, rather than mapping an update of the weight through the chain rule.
    hebbian_space = "original"

    def __init__(self, p: float = 3.0) -> None:
        super().__init__()
        check_min("p", p, 2)
        self.p = float(p)

    def forward(self, theta: Tensor) -> Tensor:
        return theta.sign() * theta.abs().pow(self.p - 1)

    def right_inverse(self, weight: Tensor) -> Tensor:
        return weight.sign() * weight.abs().pow(1 / (self.p - 1))

    def weight_grad_to_original(self, original: Tensor, grad_weight: Tensor) -> Tensor:
        """The local chain rule ``dL/dθ = dL/dW ⊙ (p−1) |θ|^(p−2)`` (no autograd)."""
        return grad_weight * (self.p - 1) * original.abs().pow(self.p - 2)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def lebesgue_(
    model: nn.Module,
    p: float = 3.0,
    layers: Sequence[str] | None = None,
) -> nn.Module:
    """Give ``model``'s ``nn.Linear``/``nn.Conv2d`` layers (those matching the ``fnmatch``
    patterns ``layers``, default all) the Lebesgue-p response, in place; returns ``model``.

    The current weights are kept as effective weights (``right_inverse``); re-initialise the
    synapses through ``layer.parametrizations.weight.original`` if you want Krotov's
    ``N(0, 1)`` start.
    """
    layers = check_names("layers", layers)
    chosen = [
        module for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
        and (layers is None or any(fnmatch(name, pattern) for pattern in layers))
    ]  # fmt: skip
    if not chosen:
        raise ValueError(
            f"layers={layers!r} is invalid: no nn.Linear/nn.Conv2d layer of the model matches."
        )
    for module in chosen:
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(f"{module!r} already has a weight parametrisation.")
        with torch.no_grad():
            register_parametrization(module, "weight", LebesguePower(p))  # picklable
    return model
