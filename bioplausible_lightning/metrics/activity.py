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
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .._validation import check_nonnegative


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


class _Sums(NamedTuple):
    row_l1: np.ndarray  # sum |r| of each sample
    row_sq: np.ndarray  # sum r^2 of each sample
    col_l1: np.ndarray  # sum |r| of each unit
    col_sq: np.ndarray  # sum r^2 of each unit
    silent: float  # entries with |r| <= tol
    dead: float  # units with |r| <= tol on every sample
    nonfinite: float  # NaN / inf entries (their rows are left out of everything else)


def _reduce(matrix: Tensor, tol: float = 0.0, host: bool | None = None) -> _Sums:
    """Every sum the measures need, from an activity matrix ``(samples, units)``.

    Sampling cost on small networks is per-operation overhead, not arithmetic, so CPU
    tensors are reduced in float64 numpy (``host=True``: ~2 µs per op instead of torch's
    ~5-20); tensors on other devices are reduced in torch where they live and only the
    O(samples + units) sums are copied back.
    """
    matrix = matrix.detach()
    n = matrix.shape[1]
    if host if host is not None else matrix.device.type == "cpu":
        a = matrix.float().cpu().numpy().astype(np.float64)
        nonfinite = 0 if np.isfinite(a.sum()) else a.size - np.count_nonzero(np.isfinite(a))
        if nonfinite:
            a = a[np.isfinite(a).all(axis=1)]
        a = np.abs(a, out=a)
        sq, silent = a * a, a <= tol
        return _Sums(
            a.sum(1), sq.sum(1), a.sum(0), sq.sum(0), float(np.count_nonzero(silent)),
            float(np.count_nonzero(silent.all(0))) if len(a) else 0.0, float(nonfinite),
        )  # fmt: skip
    nonfinite = count_nonfinite(matrix)
    m = (matrix[torch.isfinite(matrix).all(dim=1)] if nonfinite else matrix).abs().float()
    rows = m.shape[0]
    sq, silent = m * m, m <= tol
    counts = torch.stack([silent.sum(), silent.all(0).sum() if rows else silent.sum()]).float()
    flat = torch.cat([m.sum(1), sq.sum(1), m.sum(0), sq.sum(0), counts]).double().cpu().numpy()
    row_l1, row_sq, col_l1, col_sq, c = np.split(flat, np.cumsum([rows, rows, n, n]))
    return _Sums(row_l1, row_sq, col_l1, col_sq, float(c[0]), float(c[1]), float(nonfinite))


def _hoyer(l1: np.ndarray, sq: np.ndarray, n: int) -> float:
    if n < 2 or not l1.size:
        return math.nan
    # |r|_1 / |r|_2 per sample; a silent sample gets 1 (Hoyer = 1)
    ratio = np.divide(l1, np.sqrt(sq), out=np.ones_like(l1), where=sq > 0)
    root = math.sqrt(n)
    return float(np.clip((root - ratio) / (root - 1.0), 0.0, 1.0).mean())


def _treves_rolls(l1: np.ndarray, sq: np.ndarray, n: int) -> float:
    """Mean Treves–Rolls sparseness of vectors given their ``sum |r|`` and ``sum r^2``."""
    if n < 2 or not l1.size:
        return math.nan
    # a = (mean r)^2 / mean(r^2); a silent vector gets a = 1/n, i.e. S = 1
    a = np.divide(l1 * l1, n * sq, out=np.full_like(l1, 1.0 / n), where=sq > 0)
    return float(np.clip((1.0 - a) / (1.0 - 1.0 / n), 0.0, 1.0).mean())


def fraction_near_zero(activity: Tensor, tol: float = 1e-6) -> float:
    """Fraction of finite entries with ``|x| <= tol`` (``nan`` if none is finite)."""
    finite = activity[torch.isfinite(activity)]
    return float((finite.abs() <= tol).float().mean()) if finite.numel() else math.nan


def hoyer_sparseness(matrix: Tensor) -> float:
    """Mean over samples of Hoyer's ``(sqrt(n) - |r|_1 / |r|_2) / (sqrt(n) - 1)``.

    0 when all ``n`` units respond equally, 1 for a single active unit (Hoyer 2004).
    """
    sums = _reduce(matrix)
    return _hoyer(sums.row_l1, sums.row_sq, matrix.shape[1])


def population_sparseness(matrix: Tensor) -> float:
    """Treves–Rolls sparseness across units, averaged over samples."""
    sums = _reduce(matrix)
    return _treves_rolls(sums.row_l1, sums.row_sq, matrix.shape[1])


def lifetime_sparseness(matrix: Tensor) -> float:
    """Treves–Rolls sparseness of each unit across samples, averaged over units."""
    sums = _reduce(matrix)
    return (
        _treves_rolls(sums.col_l1, sums.col_sq, len(sums.row_l1)) if len(sums.row_l1) else math.nan
    )


def dead_fraction(matrix: Tensor, tol: float = 1e-6) -> float:
    """Fraction of units with ``|r| <= tol`` on every (finite) sample."""
    sums = _reduce(matrix, tol)
    return sums.dead / matrix.shape[1] if len(sums.row_l1) else math.nan


def activity_sparsity(activity: Tensor, unit_dim: int = 1, tol: float = 1e-6) -> dict[str, float]:
    """All activity measures of one layer output from one reduction, plus its non-finite count.

    Keys: ``zero_fraction``, ``hoyer``, ``population_sparseness``, ``lifetime_sparseness``,
    ``dead_fraction``, ``nonfinite``.  Equal to the single-measure functions above (except
    that ``zero_fraction`` counts only rows without non-finite entries).
    """
    matrix = activity_matrix(activity, unit_dim)
    sums = _reduce(matrix, tol)
    rows, n = len(sums.row_l1), matrix.shape[1]
    if rows == 0:
        return {**dict.fromkeys(_KEYS, math.nan), "nonfinite": sums.nonfinite}
    return {
        "zero_fraction": sums.silent / (rows * n),
        "hoyer": _hoyer(sums.row_l1, sums.row_sq, n),
        "population_sparseness": _treves_rolls(sums.row_l1, sums.row_sq, n),
        "lifetime_sparseness": _treves_rolls(sums.col_l1, sums.col_sq, rows),
        "dead_fraction": sums.dead / n,
        "nonfinite": sums.nonfinite,
    }


_KEYS = ("zero_fraction", "hoyer", "population_sparseness", "lifetime_sparseness", "dead_fraction")


def weight_sparsity(weight: Tensor, rel_threshold: float = 1e-2) -> float:
    """Fraction of finite weights with ``|w| < rel_threshold * max|w|``.

    Relative, so that it means the same for any weight scale; an all-zero tensor is fully
    sparse (1.0), one with no finite entry gives ``nan``.
    """
    check_nonnegative("rel_threshold", rel_threshold)
    magnitude = weight.detach().abs()
    if not magnitude.numel():
        return math.nan
    peak = float(magnitude.max())
    if not math.isfinite(peak):  # max propagates NaN and inf: only then filter
        magnitude = magnitude[torch.isfinite(magnitude)]
        if not magnitude.numel():
            return math.nan
        peak = float(magnitude.max())
    if peak == 0:
        return 1.0
    return float((magnitude < rel_threshold * peak).sum()) / magnitude.numel()


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
