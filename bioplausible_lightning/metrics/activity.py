"""Activity sparseness: how few units carry a layer's response.

All measures take an activity matrix ``(samples, units)`` (see :func:`activity_matrix`)
and use magnitudes ``|r|``, so that they also apply to signed pre-activations.  The
neuroscience measures follow Treves & Rolls (1991) in the normalised form of Vinje &
Gallant (2000): ``S = (1 - a) / (1 - 1/n)`` with ``a = (mean r)^2 / mean(r^2)``; 0 for a
uniform response, 1 when a single unit (population) or a single stimulus (lifetime)
carries all activity.  A completely silent vector has no activity to spread and counts
as maximally sparse (1).  Rows with a non-finite entry are left out and counted.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def activity_matrix(activity: Tensor, unit_dim: int = 1) -> Tensor:
    """Reshape a layer output to ``(samples, units)``, units taken from ``unit_dim``.

    ``(N, C, H, W)`` feature maps become ``(N * H * W, C)``: a "sample" is one position of
    one image and the population is the channels there, the convention k-WTA uses.
    """
    if activity.ndim == 0:
        raise ValueError("activity must have at least one dimension, got a scalar.")
    if activity.ndim == 1:
        return activity.unsqueeze(0)
    return activity.movedim(unit_dim, -1).reshape(-1, activity.shape[unit_dim])


def count_nonfinite(x: Tensor) -> int:
    """Number of NaN or infinite entries.

    Fast path: a finite sum proves every entry finite (one reduction instead of an
    elementwise test); only a non-finite sum, or an overflow, pays for the exact count.
    """
    if x.is_floating_point() and x.numel() and bool(torch.isfinite(x.sum(dtype=torch.float64))):
        return 0
    return int((~torch.isfinite(x)).sum()) if x.is_floating_point() else 0


def _finite_rows(matrix: Tensor) -> Tensor:
    return matrix[torch.isfinite(matrix).all(dim=1)]


def _treves_rolls(r: Tensor, dim: int) -> Tensor:
    """Per-vector Treves–Rolls sparseness of non-negative ``r`` along ``dim``."""
    n = r.shape[dim]
    if n < 2:
        return torch.full_like(r.sum(dim), math.nan)
    mean = r.mean(dim)
    mean_sq = (r * r).mean(dim)
    a = torch.where(mean_sq > 0, mean * mean / mean_sq.clamp_min(1e-30), torch.ones_like(mean))
    s = (1.0 - a) / (1.0 - 1.0 / n)
    return torch.where(mean_sq > 0, s, torch.ones_like(s)).clamp(0.0, 1.0)


def _mean(x: Tensor) -> float:
    return float(x.mean()) if x.numel() else math.nan


def fraction_near_zero(activity: Tensor, tol: float = 1e-6) -> float:
    """Fraction of finite entries with ``|x| <= tol`` (``nan`` if none is finite)."""
    finite = activity[torch.isfinite(activity)]
    return float((finite.abs() <= tol).float().mean()) if finite.numel() else math.nan


def hoyer_sparseness(matrix: Tensor) -> float:
    """Mean over samples of Hoyer's ``(sqrt(n) - |r|_1 / |r|_2) / (sqrt(n) - 1)``.

    0 when all ``n`` units respond equally, 1 for a single active unit (Hoyer 2004).
    """
    m = _finite_rows(matrix).abs().float()
    n = m.shape[1]
    if n < 2 or not m.shape[0]:
        return math.nan
    l1, l2 = m.sum(1), m.norm(dim=1)
    ratio = torch.where(l2 > 0, l1 / l2.clamp_min(1e-30), torch.ones_like(l1))
    h = (math.sqrt(n) - ratio) / (math.sqrt(n) - 1.0)
    return _mean(h.clamp(0.0, 1.0))


def population_sparseness(matrix: Tensor) -> float:
    """Treves–Rolls sparseness across units, averaged over samples."""
    m = _finite_rows(matrix).abs().float()
    return _mean(_treves_rolls(m, dim=1)) if m.shape[0] else math.nan


def lifetime_sparseness(matrix: Tensor) -> float:
    """Treves–Rolls sparseness of each unit across samples, averaged over units."""
    m = _finite_rows(matrix).abs().float()
    return _mean(_treves_rolls(m, dim=0)) if m.shape[0] else math.nan


def dead_fraction(matrix: Tensor, tol: float = 1e-6) -> float:
    """Fraction of units with ``|r| <= tol`` on every (finite) sample."""
    m = _finite_rows(matrix)
    return float((m.abs() <= tol).all(0).float().mean()) if m.shape[0] else math.nan


def activity_sparsity(activity: Tensor, unit_dim: int = 1, tol: float = 1e-6) -> dict[str, float]:
    """All activity measures of one layer output in one pass, plus its non-finite count.

    Keys: ``zero_fraction``, ``hoyer``, ``population_sparseness``, ``lifetime_sparseness``,
    ``dead_fraction``, ``nonfinite``.  Equal to the single-measure functions above; shares
    the row and column sums between them and synchronises with the device once.
    """
    matrix = activity_matrix(activity.detach(), unit_dim).float()
    nonfinite = count_nonfinite(matrix)
    m = (matrix[torch.isfinite(matrix).all(dim=1)] if nonfinite else matrix).abs()
    rows, n = m.shape
    if rows == 0:
        values = [math.nan] * 5
        return {**dict(zip(_KEYS, values, strict=True)), "nonfinite": float(nonfinite)}
    silent = m <= tol
    sq = m * m
    row_l1, row_sq = m.sum(1), sq.sum(1)
    col_l1, col_sq = m.sum(0), sq.sum(0)
    if n >= 2:
        ratio = torch.where(row_sq > 0, row_l1 / row_sq.clamp_min(1e-30).sqrt(), 1.0)
        hoyer = ((math.sqrt(n) - ratio) / (math.sqrt(n) - 1.0)).clamp(0.0, 1.0).mean()
        population = _tr_from_sums(row_l1, row_sq, n).mean()
    else:
        hoyer = population = torch.tensor(math.nan)
    lifetime = _tr_from_sums(col_l1, col_sq, rows).mean() if rows >= 2 else torch.tensor(math.nan)
    values = torch.stack(
        [silent.float().mean(), hoyer.to(m), population.to(m), lifetime.to(m),
         silent.all(0).float().mean()]
    ).tolist()  # fmt: skip
    return {**dict(zip(_KEYS, values, strict=True)), "nonfinite": float(nonfinite)}


_KEYS = ("zero_fraction", "hoyer", "population_sparseness", "lifetime_sparseness", "dead_fraction")


def _tr_from_sums(l1: Tensor, sq: Tensor, n: int) -> Tensor:
    """Treves–Rolls sparseness from per-vector ``sum |r|`` and ``sum r^2`` over ``n`` entries."""
    a = l1 * l1 / (n * sq.clamp_min(1e-30))
    return torch.where(sq > 0, (1.0 - a) / (1.0 - 1.0 / n), 1.0).clamp(0.0, 1.0)


def weight_sparsity(weight: Tensor, rel_threshold: float = 1e-2) -> float:
    """Fraction of finite weights with ``|w| < rel_threshold * max|w|``.

    Relative, so that it means the same for any weight scale; an all-zero tensor is fully
    sparse (1.0), one with no finite entry gives ``nan``.
    """
    if rel_threshold < 0:
        raise ValueError(f"rel_threshold={rel_threshold!r} is invalid: it must be >= 0.")
    w = weight.detach()
    magnitude = (w[torch.isfinite(w)] if count_nonfinite(w) else w).abs()
    if not magnitude.numel():
        return math.nan
    peak = magnitude.max()
    return float((magnitude < rel_threshold * peak).float().mean()) if peak > 0 else 1.0


__all__ = [
    "activity_matrix",
    "activity_sparsity",
    "count_nonfinite",
    "dead_fraction",
    "fraction_near_zero",
    "hoyer_sparseness",
    "lifetime_sparseness",
    "population_sparseness",
    "weight_sparsity",
]
