"""The exact, pure-Python byte-level BPE engine: OpenAI's algorithm.

This engine is the definition that the fast (tiktoken) engine is checked
against. It follows OpenAI's `encoder.py`: split the text with the GPT-2
pattern (`gpt2_lib.tokenizers.split_pattern`), write each word's UTF-8 bytes
in the byte-level alphabet, then apply classic BPE to each word: repeatedly
take the adjacent pair whose merge rule has the lowest rank and merge *every*
occurrence of it, left to right, until no adjacent pair has a rule. Results
are kept in a per-word cache.
"""

from gpt2_lib.tokenizers.byte_level import fix_surrogates
from gpt2_lib.tokenizers.byte_level import to_byte_level
from gpt2_lib.tokenizers.special_tokens import split_special
from gpt2_lib.tokenizers.split_pattern import SplitPatterns

# Word cache size of the engine (cleared when full).
WORD_CACHE_SIZE = 200_000


def classic_bpe(word, ranks):
    """Classic BPE of a byte-level `word` string: OpenAI's algorithm.

    Repeatedly merges, everywhere from left to right, the adjacent pair whose
    merge rule has the lowest rank, until no adjacent pair has a rule.
    """
    parts = list(word)
    get = ranks.get
    while len(parts) > 1:
        best_rank = None
        best_index = -1
        for i in range(len(parts) - 1):
            rank = get((parts[i], parts[i + 1]))
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank = rank
                best_index = i
        if best_index < 0:
            break
        first = parts[best_index]
        second = parts[best_index + 1]
        merged = first + second
        new_parts = parts[:best_index]
        i = best_index
        n = len(parts)
        while i < n:
            if i < n - 1 and parts[i] == first and parts[i + 1] == second:
                new_parts.append(merged)
                i += 2
            else:
                new_parts.append(parts[i])
                i += 1
        parts = new_parts
    return parts


class PythonEngine:
    """The exact, pure-Python byte-level BPE engine (the definition).

    Args:
        vocabulary: dict `{token: id}`.
        ranks: dict `{(first, second): rank}` of the merge rules.
        special_ids: dict `{special token: id}`.
        special_pattern: compiled pattern of the special tokens, or `None`
            (see `gpt2_lib.tokenizers.special_tokens`).

    Example:

    >>> from gpt2_lib.tokenizers.byte_level import bytes_to_unicode
    >>> vocabulary = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    >>> vocabulary["ab"] = 256
    >>> engine = PythonEngine(vocabulary, {("a", "b"): 0}, {}, None)
    >>> engine.encode("abc ab")
    [256, 66, 220, 256]
    """

    name = "python"

    def __init__(self, vocabulary, ranks, special_ids, special_pattern):
        self.vocabulary = vocabulary
        self.ranks = ranks
        self.special_ids = special_ids
        self.special_pattern = special_pattern
        self.split = SplitPatterns.get().split
        self.cache = {}

    def _bpe_word(self, word):
        vocabulary = self.vocabulary
        ids = []
        for token in classic_bpe(to_byte_level(word), self.ranks):
            id = vocabulary.get(token)
            if id is None:
                raise ValueError(
                    f"BPE of the text {word!r} gives the token {token!r}, "
                    "which is not in the vocabulary. The vocabulary must hold "
                    "all 256 byte tokens and the result of every merge rule."
                )
            ids.append(id)
        return ids

    def encode_ordinary(self, text):
        """Ids of `text`, with special tokens treated as ordinary text."""
        cache = self.cache
        ids = []
        for word in self.split(text):
            word_ids = cache.get(word)
            if word_ids is None:
                word_ids = self._bpe_word(word)
                if len(cache) >= WORD_CACHE_SIZE:
                    cache.clear()
                cache[word] = word_ids
            ids.extend(word_ids)
        return ids

    def _encode(self, text):
        if self.special_pattern is None:
            return self.encode_ordinary(text)
        ids = []
        special_ids = self.special_ids
        for is_special, segment in split_special(text, self.special_pattern):
            if is_special:
                ids.append(special_ids[segment])
            else:
                ids.extend(self.encode_ordinary(segment))
        return ids

    def encode(self, text):
        """Ids of `text`, special tokens kept whole."""
        try:
            return self._encode(text)
        except UnicodeEncodeError:
            return self._encode(fix_surrogates(text))
