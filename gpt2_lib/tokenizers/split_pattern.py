r"""GPT-2's pre-tokenization: the pattern that splits text into words.

Byte-level BPE never merges across the pieces of OpenAI's split pattern
(`GPT2_SPLIT_PATTERN`): contractions, runs of letters or of numbers with an
optional leading space, runs of other symbols, and whitespace. The fast
engine gives tiktoken the same split written with possessive quantifiers
(`FAST_SPLIT_PATTERN`); the Python engine uses `SplitPatterns`, whose
character classes are pinned to tiktoken's Unicode tables
(`gpt2_lib.tokenizers.unicode_tables`).
"""

import threading

import numpy as np
import regex

from gpt2_lib.tokenizers.unicode_tables import UNICODE_LETTER_RANGES
from gpt2_lib.tokenizers.unicode_tables import UNICODE_NUMBER_RANGES
from gpt2_lib.tokenizers.unicode_tables import UNICODE_SPACE_RANGES

# OpenAI's GPT-2 pre-tokenization pattern (gpt-2/src/encoder.py). This is the
# definition used by the pure-Python engine.
GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
    r"""|\s+(?!\S)|\s+"""
)
# The same split written with possessive quantifiers, as tiktoken writes it
# for speed. `\s+` in the last branch of the pattern above can only ever match
# one character (a longer run would have matched `\s+(?!\S)`), and a run of
# whitespace that ends the text is what `\s++$` takes.
FAST_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++"""
    r"""|\s++$|\s+(?!\S)|\s"""
)


def _char_class(ranges):
    parts = []
    for item in ranges.split():
        first, _, last = item.partition("-")
        part = "\\U%08x" % int(first, 16)
        if last:
            part += "-\\U%08x" % int(last, 16)
        parts.append(part)
    return "".join(parts)


def expand_ranges(ranges):
    """Yield the code points of a `"41-5a 61-7a aa"` range string.

    Example:

    >>> list(expand_ranges("41-43 61"))
    [65, 66, 67, 97]
    """
    for item in ranges.split():
        first, _, last = item.partition("-")
        yield from range(int(first, 16), int(last or first, 16) + 1)


def pinned_split_pattern():
    """OpenAI's GPT-2 pattern with the classes spelled out from the tables.

    Example:

    >>> import regex
    >>> pattern = regex.compile(pinned_split_pattern())
    >>> pattern.findall("I'm  here")
    ['I', "'m", ' ', ' here']
    """
    letters = _char_class(UNICODE_LETTER_RANGES)
    numbers = _char_class(UNICODE_NUMBER_RANGES)
    spaces = _char_class(UNICODE_SPACE_RANGES)
    return (
        rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[{letters}]+| ?[{numbers}]+"""
        rf"""| ?[^{spaces}{letters}{numbers}]+|[{spaces}]+(?![^{spaces}])"""
        rf"""|[{spaces}]+"""
    )


class SplitPatterns:
    r"""The Python engine's pre-tokenizer, built once per process (`get()`).

    `pinned` (the pattern with the classes spelled out) is exact but slow in
    the `regex` module, so `fast` (the same pattern with `regex`'s own
    `\p{L}`, `\p{N}`, `\s`) is used on every text that holds none of the
    characters (`diff`) on which the two sets of tables disagree: on such a
    text, both patterns match the same pieces.

    Example:

    >>> SplitPatterns.get().split("Hello world's 42!")
    ['Hello', ' world', "'s", ' 42', '!']
    """

    _instance = None
    _lock = threading.Lock()

    def __init__(self):
        self.fast = regex.compile(GPT2_SPLIT_PATTERN)
        self._pinned = None
        codepoints = np.concatenate(
            [np.arange(0xD800), np.arange(0xE000, 0x110000)]
        ).astype("<u4")
        every_char = codepoints.tobytes().decode("utf-32-le")
        diff = set()
        for prop, ranges in (
            (r"\p{L}", UNICODE_LETTER_RANGES),
            (r"\p{N}", UNICODE_NUMBER_RANGES),
            (r"\s", UNICODE_SPACE_RANGES),
        ):
            theirs = set(regex.findall(prop, every_char))
            diff |= theirs.symmetric_difference(map(chr, expand_ranges(ranges)))
        self.diff = frozenset(diff)

    @classmethod
    def get(cls):
        """The process-wide instance (built on first use, thread-safe)."""
        if cls._instance is None:
            with cls._lock:
                if cls._instance is None:
                    cls._instance = cls()
        return cls._instance

    def pinned(self):
        """The compiled pattern with the pinned classes (built on first use)."""
        if self._pinned is None:
            self._pinned = regex.compile(pinned_split_pattern())
        return self._pinned

    def split(self, text):
        """Split `text` into the words that BPE encodes one by one."""
        if text.isascii() or self.diff.isdisjoint(text):
            return self.fast.findall(text)
        return self.pinned().findall(text)
