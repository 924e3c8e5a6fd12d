"""Argument checks shared by every public entry point.

Each check returns the value in its canonical Python type, or raises a
`ValueError` that names the argument, the value received and what is
accepted, so that the message alone tells a user what to change.
"""

import math

import numpy as np

from gpt2_lib.utils.tensors import concrete_numpy


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


def check_ids(ids, name, limit):
    """Raise a ValueError if concrete `ids` are not integers in `[0, limit)`.

    Out-of-range ids are not an error on every backend (JAX gathers
    NaN or clamps, TensorFlow returns garbage on CPU), so every entry
    point checks them here, on NumPy and eager backend tensors alike.
    Symbolic and traced values (inside a compiled function) are checked
    where they enter: `fit()`, `generate()`, `score()` check their data
    before compiling.

    Args:
        ids: ids of any shape (NumPy, list or backend tensor), or None.
        name: the argument's name, for the message.
        limit: the exclusive upper bound (the vocabulary size, or the
            number of positions).
    """
    values = concrete_numpy(ids)
    if values is None or values.size == 0:
        return
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"'{name}' must be integers. Received dtype {values.dtype}.")
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= limit:
        bad = low if low < 0 else high
        if name == "position_ids":
            raise ValueError(
                f"Position id {bad} in 'position_ids' is outside [0, {limit - 1}]: "
                f"this model has {limit} positions (max_sequence_length)."
            )
        raise ValueError(
            f"Token id {bad} in '{name}' is out of range for vocabulary_size={limit}; "
            f"ids must be in [0, {limit - 1}]. Use ids from the model's own tokenizer."
        )
