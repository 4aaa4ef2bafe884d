"""Dale's law as a measurable property: does each presynaptic unit keep one sign?

A unit obeys Dale's law when all its *non-zero* outgoing weights share one sign (a unit
whose outgoing weights are all zero obeys it vacuously).  These functions measure that
on any weight tensor, so a Dale layer (consistent by construction) and a backprop-trained
``nn.Linear`` (about half its units mixed) are compared on the same scale.  Non-finite
weights are ignored by the sign tests and counted by :func:`dale_statistics`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._validation import check_choice
from .activity import count_nonfinite
from .layers import WeightGetter, default_weight_getter, named_weights, presynaptic_layout


def presynaptic_matrix(weight: Tensor, presynaptic_dim: int = 1, groups: int = 1) -> Tensor:
    """View ``weight`` as ``(presynaptic units, outgoing weights)``.

    ``presynaptic_dim=1`` is the torch layout ``(out, in, *kernel)``; a kernel's spatial
    taps are outgoing weights of the same input channel.  With ``groups > 1`` (grouped
    convolution, ``(out, in / groups, *kernel)``) every group's channels are separate units.
    """
    if weight.ndim < 2:
        raise ValueError(f"weight must have >= 2 dimensions, got shape {tuple(weight.shape)}.")
    check_choice("presynaptic_dim", presynaptic_dim, (0, 1))
    if groups < 1 or weight.shape[0] % groups:
        raise ValueError(
            f"groups={groups!r} is invalid for weight shape {tuple(weight.shape)}: "
            "it must be >= 1 and divide dim 0."
        )
    w = weight.detach()
    if presynaptic_dim == 0:
        return w.reshape(w.shape[0], -1)
    if groups == 1:
        return w.transpose(0, 1).reshape(w.shape[1], -1)
    out, per_group = w.shape[0], w.shape[1]
    grouped = w.reshape(groups, out // groups, per_group, -1).transpose(1, 2)
    return grouped.reshape(groups * per_group, -1)


def unit_sign_consistency(matrix: Tensor, tol: float = 0.0) -> Tensor:
    """Boolean per unit (row): are all entries with ``|w| > tol`` of one sign?"""
    has_pos = (matrix > tol).any(dim=1)
    has_neg = (matrix < -tol).any(dim=1)
    return ~(has_pos & has_neg)


def unit_signs(matrix: Tensor) -> Tensor:
    """+1 / -1 / 0 per unit: the sign of its summed (finite) outgoing weight.

    For a Dale unit this is its sign; for a mixed unit, the sign that dominates its output.
    """
    return torch.sign(_finite_or_zero(matrix).sum(dim=1))


def _finite_or_zero(x: Tensor) -> Tensor:
    if not count_nonfinite(x):
        return x
    return torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype))


def ei_ratio(matrix: Tensor) -> float:
    """Number of excitatory over inhibitory units (by :func:`unit_signs`); ``inf`` if none is
    inhibitory, ``nan`` if no unit has a sign."""
    signs = unit_signs(matrix)
    return _ratio(int((signs > 0).sum()), int((signs < 0).sum()))


def _ratio(n_exc: int, n_inh: int) -> float:
    if n_inh == 0:
        return math.inf if n_exc else math.nan
    return n_exc / n_inh


def sign_pattern(weight: Tensor) -> Tensor:
    """``int8`` sign of every weight (non-finite entries 0): the state sign flips compare to."""
    return torch.sign(_finite_or_zero(weight.detach())).to(torch.int8)


def count_sign_flips(previous: Tensor, current: Tensor) -> int:
    """Weights that were strictly positive and are now strictly negative, or vice versa."""
    if previous.shape != current.shape:
        raise ValueError(
            f"sign patterns differ in shape: {tuple(previous.shape)} vs {tuple(current.shape)}."
        )
    return int((previous.to(torch.int16) * current.to(torch.int16) < 0).sum())


def dale_statistics(
    weight: Tensor, presynaptic_dim: int = 1, groups: int = 1, tol: float = 0.0
) -> dict[str, float]:
    """Dale's-law summary of one weight tensor.

    Keys: ``sign_consistency`` (fraction of consistent units), ``consistent_units``,
    ``units``, ``ei_ratio``, ``excitatory_fraction`` (of units with a sign), ``nonfinite``.
    """
    matrix = presynaptic_matrix(weight, presynaptic_dim, groups)
    consistent = unit_sign_consistency(matrix, tol)
    signs = unit_signs(matrix)
    n_exc, n_inh = int((signs > 0).sum()), int((signs < 0).sum())
    return {
        "sign_consistency": float(consistent.float().mean()),
        "consistent_units": float(consistent.sum()),
        "units": float(consistent.numel()),
        "ei_ratio": _ratio(n_exc, n_inh),
        "excitatory_fraction": n_exc / (n_exc + n_inh) if n_exc + n_inh else math.nan,
        "nonfinite": float(count_nonfinite(matrix)),
    }


def sign_consistency(
    x: Tensor | nn.Module, tol: float = 0.0, weight_getter: WeightGetter = default_weight_getter
) -> float:
    """Fraction of presynaptic units whose non-zero outgoing weights share one sign.

    ``x`` is a weight tensor in torch layout ``(out, in, *kernel)`` or a module: then every
    weight layer in it (by ``weight_getter``) is pooled, each unit counting once.
    """
    if isinstance(x, Tensor):
        return float(unit_sign_consistency(presynaptic_matrix(x), tol).float().mean())
    consistent = total = 0
    with torch.no_grad():
        for _, module, weight in named_weights(x, weight_getter):
            dim, groups = presynaptic_layout(module)
            flags = unit_sign_consistency(presynaptic_matrix(weight, dim, groups), tol)
            consistent += int(flags.sum())
            total += flags.numel()
    if not total:
        raise ValueError(
            f"{type(x).__name__} has no weight layer for weight_getter={weight_getter!r}: "
            "pass a module with Linear/Conv layers (parametrised or not) or a weight_getter "
            "that finds its weights."
        )
    return consistent / total


__all__ = [
    "count_sign_flips",
    "dale_statistics",
    "ei_ratio",
    "presynaptic_matrix",
    "sign_consistency",
    "sign_pattern",
    "unit_sign_consistency",
    "unit_signs",
]
