"""Argument checks of the public entry points: a bad value is refused before any work, by name.

Each check raises :class:`~geolearn.errors.InvalidArgumentError` (a ``ValueError``) whose message is
``<name>=<value>: <what it must be>`` and, where there is one, an example, so that the analyst
reads which argument to change and to what. ``bool`` is refused where a number is meant:
``True`` is an ``int`` to Python but never a chip size.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from geolearn.errors import InvalidArgumentError

__all__ = ["whole_number", "positive_number", "fraction", "learning_rate"]


def whole_number(name: str, value: object, *, minimum: int = 1, example: str | None = None) -> int:
    """``value`` as an ``int`` when it is a whole number >= ``minimum``.

    Examples:
        >>> whole_number("batch_size", 8)
        8
        >>> whole_number("batch_size", 0, example="8")
        Traceback (most recent call last):
        ...
        geolearn.errors.InvalidArgumentError: batch_size=0: give a whole number >= 1, e.g. 8.
    """
    hint = f", e.g. {example}" if example else ""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InvalidArgumentError(f"{name}={value!r}: give a whole number >= {minimum}{hint}.")
    if value < minimum:
        raise InvalidArgumentError(f"{name}={value!r}: give a whole number >= {minimum}{hint}.")
    return int(value)


def positive_number(name: str, value: object, *, example: str | None = None) -> float:
    """``value`` as a ``float`` when it is a finite number > 0.

    Examples:
        >>> positive_number("lr", 1e-3)
        0.001
        >>> positive_number("lr", float("nan"), example="1e-3")
        Traceback (most recent call last):
        ...
        geolearn.errors.InvalidArgumentError: lr=nan: give a finite number > 0, e.g. 1e-3.
    """
    hint = f", e.g. {example}" if example else ""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidArgumentError(f"{name}={value!r}: give a finite number > 0{hint}.")
    if not (math.isfinite(value) and value > 0):
        raise InvalidArgumentError(f"{name}={value!r}: give a finite number > 0{hint}.")
    return float(value)


def fraction(name: str, value: object, *, include_one: bool = True, example: str | None = None) -> float:
    """``value`` as a ``float`` when it lies in [0, 1] (or [0, 1) with ``include_one=False``).

    Examples:
        >>> fraction("threshold", 0.3)
        0.3
        >>> fraction("val_split_pct", 1.0, include_one=False, example="0.1")
        Traceback (most recent call last):
        ...
        geolearn.errors.InvalidArgumentError: val_split_pct=1.0: give a number from 0 to less than 1, e.g. 0.1.
    """
    span = "from 0 to 1" if include_one else "from 0 to less than 1"
    hint = f", e.g. {example}" if example else ""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidArgumentError(f"{name}={value!r}: give a number {span}{hint}.")
    if not (0 <= value <= 1) or (value == 1 and not include_one):
        raise InvalidArgumentError(f"{name}={value!r}: give a number {span}{hint}.")
    return float(value)


def learning_rate(lr: object) -> None:
    """Refuses a learning rate ``fit`` cannot use; None (lr_find chooses), a finite number > 0 or a slice of them pass.

    Examples:
        >>> learning_rate(slice(1e-4, 1e-3))
        >>> learning_rate(slice(0, 1e-3))
        Traceback (most recent call last):
        ...
        geolearn.errors.InvalidArgumentError: lr=0: give a finite number > 0, e.g. slice(1e-4, 1e-3).
    """
    if isinstance(lr, slice):
        for part in (lr.start, lr.stop):
            if part is not None:
                positive_number("lr", part, example="slice(1e-4, 1e-3)")
    elif lr is not None:
        positive_number("lr", lr, example="1e-3")
