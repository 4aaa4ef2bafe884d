"""Config checks shared across the package: each error names the parameter, the value and
what is allowed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value > 0):
        raise ValueError(f"{name}={value!r} is invalid: it must be a number > 0.")


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is invalid: allowed values are {tuple(allowed)}.")


def check_min_int(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid: it must be an int >= {minimum}.")


def check_in_range(
    name: str, value: float, low: float, high: float, *, low_open: bool = False,
    high_open: bool = False,
) -> None:  # fmt: skip
    """``low <= value <= high`` (``<`` on an open end); the message spells out the interval."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name}={value!r} is invalid: it must be a number in {interval}.")
