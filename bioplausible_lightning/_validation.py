"""Config checks shared across the package: each error names the parameter, the value and
what is allowed.  Types are checked too: a ``bool`` is not a number, a string is not a
sequence of names.  ``hint=`` adds a short reason or example to a message, in parentheses."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any, NoReturn


def _invalid(name: str, value: Any, allowed: str, hint: str | None = None) -> NoReturn:
    extra = f" ({hint})" if hint else ""
    raise ValueError(f"{name}={value!r} is invalid: {allowed}{extra}.")


def is_number(value: Any) -> bool:
    """A real ``int``/``float`` (``bool`` excluded), finite."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _is_real(value: Any) -> bool:
    """A real ``int``/``float`` (``bool`` excluded), possibly infinite or NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive(name: str, value: float) -> None:
    if not (is_number(value) and value > 0):
        _invalid(name, value, "it must be a finite number > 0")


def check_nonnegative(name: str, value: float) -> None:
    if not (is_number(value) and value >= 0):
        _invalid(name, value, "it must be a finite number >= 0")


def check_finite(
    name: str, value: float | None, *, optional: bool = False, nonzero: bool = False
) -> None:
    """A finite number (``!= 0`` with ``nonzero``; ``None`` too with ``optional``)."""
    if value is None and optional:
        return
    if not (is_number(value) and (value != 0 or not nonzero)):
        allowed = "it must be a finite number" + (" != 0" if nonzero else "")
        _invalid(name, value, allowed + (" or None" if optional else ""))


def check_min(name: str, value: float, minimum: float, *, finite: bool = True) -> None:
    """``value >= minimum``; ``finite=False`` admits ``inf`` (e.g. "no upper bound")."""
    ok = (is_number(value) if finite else _is_real(value)) and value >= minimum
    if not ok:
        _invalid(name, value, f"it must be a {'finite ' if finite else ''}number >= {minimum}")


def check_choice(
    name: str, value: Any, allowed: Sequence[Any], *, hint: str | None = None
) -> None:
    """One of ``allowed``, of the same type (``True`` is not the choice ``1``)."""
    if not any(
        isinstance(value, type(a)) and isinstance(value, bool) == isinstance(a, bool)
        and value == a
        for a in allowed
    ):  # fmt: skip
        _invalid(name, value, f"allowed values are {tuple(allowed)}", hint)


def check_min_int(
    name: str, value: int | None, minimum: int = 1, *, optional: bool = False,
    hint: str | None = None,
) -> None:  # fmt: skip
    """An ``int >= minimum`` (numpy integers too; ``bool`` excluded; ``None`` too with
    ``optional``)."""
    if value is None and optional:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        allowed = f"it must be an int >= {minimum}" + (" or None" if optional else "")
        _invalid(name, value, allowed, hint)


def check_int(name: str, value: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        _invalid(name, value, "it must be an int")


def check_bool(name: str, value: bool) -> None:
    if not isinstance(value, bool):
        _invalid(name, value, "it must be True or False")


def check_positive_ints(
    name: str, values: Sequence[int], *, length: int | None = None, hint: str | None = None
) -> tuple[int, ...]:
    """A list/tuple of ints >= 1 (numpy / torch integers too; ``bool`` and floats are
    refused), of ``length`` entries when given; returned as a tuple of Python ints."""
    ok = isinstance(values, Sequence) and not isinstance(values, (str, bytes))
    ints: list[int] = []
    if ok:
        for v in values:
            try:
                i = operator.index(v)
            except TypeError:
                ok = False
                break
            if isinstance(v, bool) or i < 1:
                ok = False
                break
            ints.append(i)
    if ok and length is not None and len(ints) != length:
        ok = False
    if not ok:
        count = f"{length} " if length is not None else ""
        _invalid(name, values, f"it must be a sequence of {count}ints >= 1", hint)
    return tuple(ints)


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
        _invalid(
            name, value, f"allowed is None or a non-empty list of name patterns (strings){hint}"
        )
    return list(value)


def check_callable(
    name: str, value: Any, optional: bool = False, *, hint: str | None = None
) -> None:
    if value is None and optional:
        return
    if not callable(value):
        _invalid(name, value, "it must be a callable" + (" or None" if optional else ""), hint)


def check_instance(
    name: str, value: Any, types: type | tuple[type, ...], *, optional: bool = False,
    what: str | None = None,
) -> None:  # fmt: skip
    """An instance of ``types`` (``None`` too with ``optional``); ``what`` describes it in
    the message (default: the type names)."""
    if value is None and optional:
        return
    if not isinstance(value, types):
        classes = types if isinstance(types, tuple) else (types,)
        what = what or " or ".join(_with_article(_type_name(t)) for t in classes)
        _invalid(name, value, f"it must be {what}" + (" or None" if optional else ""))


def _with_article(noun: str) -> str:
    vowel_sound = noun[0].lower() in "aeiou" or noun.startswith("nn.")
    return f"{'an' if vowel_sound else 'a'} {noun}"


def _type_name(t: type) -> str:
    module = t.__module__
    if module == "builtins":
        return t.__qualname__
    if module.startswith("torch."):  # torch.nn.modules.module.Module -> nn.Module
        public = {"torch.nn": "nn", "torch.optim": "torch.optim"}
        for prefix, short in public.items():
            if module.startswith(prefix):
                return f"{short}.{t.__qualname__}"
    return t.__qualname__


def check_in_range(
    name: str, value: float, low: float, high: float, *, low_open: bool = False,
    high_open: bool = False, hint: str | None = None,
) -> None:  # fmt: skip
    """``low <= value <= high`` (``<`` on an open end); the message spells out the interval."""
    ok = _is_real(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        _invalid(name, value, f"it must be a number in {interval}", hint)


def check_fraction(name: str, value: float, *, hint: str | None = None) -> None:
    """A fraction in ``[0, 1)`` (a dropout rate, a held-out share, a sparsity level)."""
    check_in_range(name, value, 0, 1, high_open=True, hint=hint)


def check_probability(name: str, value: float, *, hint: str | None = None) -> None:
    """A number strictly between 0 and 1 (a confidence level, a threshold, a split share)."""
    check_in_range(name, value, 0, 1, low_open=True, high_open=True, hint=hint)
