"""Shape of a weight distribution: is ``|w|`` lognormal, as multiplicative learning predicts?

Under multiplicative updates ``log|w|`` performs a random walk, so ``|w|`` tends to a
lognormal; additive updates (backprop on a plain weight) keep a roughly normal, zero-centred
distribution.  The test here fits both families to ``|w|`` by maximum likelihood and
compares Kolmogorov–Smirnov distances: the smaller one is the better description.

Statistics are computed on a CPU float64 sample of at most ``max_samples`` finite weights,
drawn with a private, fixed-seed generator: bounded cost, identical indices at every call,
and the global RNG is never touched.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .._validation import check_min_int, check_nonnegative
from .activity import count_nonfinite


class LognormalFit(NamedTuple):
    """KS distances of ``|w|`` to its fitted lognormal and normal, and the lognormal's
    parameters (mean and std of ``log|w|``)."""

    ks_lognormal: float
    ks_normal: float
    mu: float
    sigma: float


def sample_values(x: Tensor, max_samples: int = 100_000, seed: int = 0) -> Tensor:
    """Up to ``max_samples`` finite entries of ``x`` as a flat CPU float64 tensor."""
    check_min_int("max_samples", max_samples)
    flat = x.detach().reshape(-1)
    if flat.numel() > max_samples:
        generator = torch.Generator().manual_seed(seed)
        index = torch.randint(flat.numel(), (max_samples,), generator=generator)
        flat = flat[index.to(flat.device)]
    flat = flat.to("cpu", torch.float64)
    return flat[torch.isfinite(flat)] if count_nonfinite(flat) else flat


def ks_statistic(sorted_sample: Tensor, cdf: Tensor) -> float:
    """Two-sided KS distance between a sorted sample and a model CDF evaluated at it."""
    n = sorted_sample.numel()
    if n == 0:
        return math.nan
    upper = torch.arange(1, n + 1, dtype=cdf.dtype) / n
    return float(torch.maximum((upper - cdf).max(), (cdf - (upper - 1.0 / n)).max()))


def standardized_moments(x: Tensor) -> dict[str, float]:
    """Mean, std, skewness and *excess* kurtosis (0 for a normal) of a 1-D sample."""
    if x.numel() < 2:
        return {"mean": math.nan, "std": math.nan, "skewness": math.nan, "kurtosis": math.nan}
    x = x.double()
    mean = x.mean()
    centred = x - mean
    var = (centred**2).mean()
    if var <= 0:
        return {"mean": float(mean), "std": 0.0, "skewness": math.nan, "kurtosis": math.nan}
    std = var.sqrt()
    z = centred / std
    return {
        "mean": float(mean),
        "std": float(std),
        "skewness": float((z**3).mean()),
        "kurtosis": float((z**4).mean() - 3.0),
    }


def log_magnitude_moments(weight: Tensor, max_samples: int = 100_000) -> dict[str, float]:
    """:func:`standardized_moments` of ``log|w|`` over finite non-zero weights.

    A lognormal ``|w|`` has ``log|w|`` skewness and excess kurtosis near 0.
    """
    magnitude = sample_values(weight, max_samples).abs()
    return standardized_moments(magnitude[magnitude > 0].log())


def lognormal_fit(weight: Tensor, max_samples: int = 100_000) -> LognormalFit:
    """Fit a lognormal and a normal to finite non-zero ``|w|``; return both KS distances.

    KS distance is invariant under the monotone ``log``, so the lognormal test is a
    normality test of ``log|w|``.  Both fits use the same sample, so the two distances are
    directly comparable.  ``nan`` when fewer than two distinct magnitudes exist.
    """
    magnitude = sample_values(weight, max_samples).abs()
    return _fit_sorted(_sorted(magnitude[magnitude > 0]))


def _sorted(x: Tensor) -> Tensor:
    """Ascending sort of a CPU sample (numpy's sort is several times faster than torch's)."""
    return torch.from_numpy(np.sort(x.numpy()))


def _fit_sorted(magnitude: Tensor) -> LognormalFit:
    if magnitude.numel() < 2:
        return LognormalFit(math.nan, math.nan, math.nan, math.nan)
    log_m = magnitude.log()
    mu, sigma = log_m.mean(), log_m.std(unbiased=False)
    mean, std = magnitude.mean(), magnitude.std(unbiased=False)
    if sigma <= 0 or std <= 0:
        return LognormalFit(math.nan, math.nan, float(mu), float(sigma))
    ks_log = ks_statistic(magnitude, torch.special.ndtr((log_m - mu) / sigma))
    ks_norm = ks_statistic(magnitude, torch.special.ndtr((magnitude - mean) / std))
    return LognormalFit(ks_log, ks_norm, float(mu), float(sigma))


def fraction_positive(
    weight: Tensor, max_samples: int = 100_000, tol: float | None = None
) -> float:
    """Fraction of finite weights that are strictly positive (``nan`` if none is finite);
    exact up to ``max_samples`` weights, estimated on that many beyond.

    With ``tol``, only weights with ``|w| > tol`` are counted: under Hebbian decay a weight
    whose input is never active shrinks towards zero but keeps its sign, so a plain count
    also measures how long the decay has run.
    """
    sample = sample_values(weight, max_samples)
    if tol is not None:
        check_nonnegative("tol", tol)
        sample = sample[sample.abs() > tol]
    return float((sample > 0).double().mean()) if sample.numel() else math.nan


def positive_mass_fraction(weight: Tensor) -> float:
    """Share of the total ``|w|`` mass carried by positive weights (``nan`` if all are 0).

    The measure in which positivity *emerges* under Hebbian learning: negative weights decay
    towards zero but keep their sign, so a plain count of positive weights understates it.
    """
    w = weight.detach().double()
    w = torch.where(torch.isfinite(w), w, torch.zeros((), dtype=w.dtype))
    total = w.abs().sum()
    return float(w.clamp_min(0).sum() / total) if total > 0 else math.nan


def weight_distribution(weight: Tensor, max_samples: int = 20_000) -> dict[str, float]:
    """Everything :class:`~bioplausible_lightning.callbacks.WeightDistributionMonitor` logs.

    Keys: ``log_abs_mean``, ``log_abs_std``, ``log_abs_skewness``, ``log_abs_kurtosis``,
    ``positive_fraction``, ``positive_mass``, ``ks_lognormal``, ``ks_normal``, ``nonfinite``.
    """
    magnitude = sample_values(weight, max_samples).abs()
    magnitude = _sorted(magnitude[magnitude > 0])
    moments = standardized_moments(magnitude.log())
    fit = _fit_sorted(magnitude)
    return {
        **{f"log_abs_{k}": v for k, v in moments.items()},
        "positive_fraction": fraction_positive(weight, max_samples),
        "positive_mass": positive_mass_fraction(weight),
        "ks_lognormal": fit.ks_lognormal,
        "ks_normal": fit.ks_normal,
        "nonfinite": float(count_nonfinite(weight.detach())),
    }


__all__ = [
    "LognormalFit",
    "fraction_positive",
    "ks_statistic",
    "log_magnitude_moments",
    "lognormal_fit",
    "positive_mass_fraction",
    "sample_values",
    "standardized_moments",
    "weight_distribution",
]
