"""`return_freed_memory`: glibc's heap trimmed where there is one."""

import ctypes
import sys

from gpt2_lib.utils import memory


def test_trims_the_heap_with_glibc_and_does_nothing_without(monkeypatch):
    try:
        has_glibc = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "malloc_trim")
    except OSError:
        has_glibc = False
    assert memory.return_freed_memory() is has_glibc
    memory._malloc_trim.cache_clear()
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: object())  # a C library without it
    try:
        assert memory.return_freed_memory() is False
    finally:
        memory._malloc_trim.cache_clear()
