"""Argument checks shared by every public entry point.

Each check returns the value in its canonical Python type, or raises a
`ValueError` that names the argument, the value received and what is
accepted, so that the message alone tells a user what to change.
"""

import math

import numpy as np


def is_integer(value):
    """True for Python and NumPy integers (bools are not integers here)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(name, value, minimum=None, allow_none=False):
    """`value` as an `int`, checked to be an integer `>= minimum`.

    Args:
        name: the argument's name, as the user wrote it.
        value: what the user passed.
        minimum: optional smallest accepted value.
        allow_none: whether `None` is accepted (and returned as is).

    Example:
    >>> check_int("num_beams", 4, minimum=1)
    4
    """
    if value is None and allow_none:
        return None
    if not is_integer(value) or (minimum is not None and value < minimum):
        if minimum == 1:
            expected = "a positive integer"
        elif minimum is not None:
            expected = f"an integer >= {minimum}"
        else:
            expected = "an integer"
        if allow_none:
            expected += " or None"
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return int(value)


def check_positive_int(name, value, allow_none=False):
    """`check_int(name, value, minimum=1)`.

    Example:
    >>> check_positive_int("rank", 8)
    8
    """
    return check_int(name, value, minimum=1, allow_none=allow_none)


def check_number(name, value, low=None, high=None, low_inclusive=True, high_inclusive=True):
    """`value` as a finite `float` within the given bounds.

    Example:
    >>> check_number("dropout", 0.1, low=0.0, high=1.0, high_inclusive=False)
    0.1
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    if ok:
        value = float(value)
        ok = math.isfinite(value)
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high
    if not ok:
        left = "" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
        right = "" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
        if low is not None and high is not None:
            expected = f"a number in {left}, {right}"
        elif low is not None:
            expected = f"a number {'>=' if low_inclusive else '>'} {low:g}"
        elif high is not None:
            expected = f"a number {'<=' if high_inclusive else '<'} {high:g}"
        else:
            expected = "a finite number"
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return value
