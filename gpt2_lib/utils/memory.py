"""Handing memory the process has freed back to the operating system."""

import ctypes
import functools


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (macOS, musl, Windows)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return None


def return_freed_memory():
    """Returns the C heap's free pages to the operating system, where glibc allows it.

    glibc keeps memory freed in the middle of its heap resident until it is
    reused; `malloc_trim(0)` releases those pages (~1 ms). Used after
    replacing many mid-sized buffers at once, e.g. when torch generation
    re-lays a model's kernels.

    Returns:
        bool: whether the heap was trimmed (False without glibc).

    Example:
    >>> return_freed_memory() in (True, False)
    True
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
