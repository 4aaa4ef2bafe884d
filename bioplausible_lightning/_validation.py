"""Config checks shared across the package: each error names the parameter, the value and
what is allowed.  Types are checked too: a ``bool`` is not a number, a string is not a
sequence of names."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def is_number(value: Any) -> bool:
    """A real ``int``/``float`` (``bool`` excluded), finite."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def check_positive(name: str, value: float) -> None:
    if not (is_number(value) and value > 0):
        raise ValueError(f"{name}={value!r} is invalid: it must be a finite number > 0.")


def check_nonnegative(name: str, value: float) -> None:
    if not (is_number(value) and value >= 0):
        raise ValueError(f"{name}={value!r} is invalid: it must be a finite number >= 0.")


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if not any(isinstance(value, type(a)) and value == a for a in allowed):
        raise ValueError(f"{name}={value!r} is invalid: allowed values are {tuple(allowed)}.")


def check_min_int(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid: it must be an int >= {minimum}.")


def check_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is invalid: it must be an int.")


def check_bool(name: str, value: bool) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is invalid: it must be True or False.")


def check_names(name: str, value: Sequence[str] | None) -> list[str] | None:
    """``None`` or a non-empty list/tuple of strings (a bare string is refused, not split)."""
    if value is None:
        return None
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(v, str) for v in value)
    ):
        hint = f", e.g. [{value!r}]" if isinstance(value, str) else ""
        raise ValueError(
            f"{name}={value!r} is invalid: allowed is None or a non-empty list of name "
            f"patterns (strings){hint}."
        )
    return list(value)


def check_callable(name: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not callable(value):
        allowed = "a callable" + (" or None" if optional else "")
        raise ValueError(f"{name}={value!r} is invalid: it must be {allowed}.")


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
