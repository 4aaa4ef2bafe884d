"""Mean ± confidence interval: every few-shot and multi-seed number carries one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .._validation import check_probability


@dataclass
class Estimate:
    """A mean with the half-width of its two-sided confidence interval (Student's t).

    Attributes:
        mean: Sample mean.
        ci: Half-width of the ``confidence`` interval (nan for a single value).
        n: Number of values (seeds or episodes).
        values: The values themselves, for re-analysis.
        confidence: Confidence level of ``ci``.
        std: Sample standard deviation (n - 1 denominator; nan for a single value).
    """

    mean: float
    ci: float
    n: int
    values: list[float]
    confidence: float = 0.95
    std: float = math.nan

    def __str__(self) -> str:
        if math.isnan(self.ci):
            return f"{100 * self.mean:.1f}%"
        return f"{100 * self.mean:.1f} ± {100 * self.ci:.1f}%"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and t-distribution confidence half-width of ``values``.

    Student's t (not 1.96) because the multi-seed protocols use as few as 3-5 seeds.
    """
    check_probability("confidence", confidence)
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("values=[] is invalid: need at least one value.")
    n = len(vals)
    mean = sum(vals) / n
    if n < 2:
        return Estimate(mean, math.nan, n, vals, confidence)
    from scipy.stats import t

    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Estimate(mean, half, n, vals, confidence, std)


__all__ = ["Estimate", "mean_ci"]
