"""The exact, pure-Python byte-level BPE engine: OpenAI's algorithm.

This engine is the definition that the fast (tiktoken) engine is checked
against. It follows OpenAI's `encoder.py`: split the text with the GPT-2
pattern (`gpt2_lib.tokenizers.split_pattern`), write each word's UTF-8 bytes
in the byte-level alphabet, then apply classic BPE to each word: repeatedly
take the adjacent pair whose merge rule has the lowest rank and merge *every*
occurrence of it, left to right, until no adjacent pair has a rule.

`bpe_merge()` computes exactly that result in O(n log n) for a word of n
bytes (OpenAI's loop is O(n^2), which made a 1 MB word a denial of service):
the positions of each adjacent pair with a rule are kept in one bucket per
rank, the ranks in a heap, and the word in a linked list. Popping the lowest
rank gives the pair OpenAI's loop picks; its bucket, sorted, lists every
occurrence left to right. Merging cannot create another occurrence of the
same pair (a merged token is longer than either half), so each step merges
exactly the occurrences that OpenAI's left-to-right scan merges, and pairs
formed by a merge go to their own rank's bucket for a later step.
"""

import heapq

from gpt2_lib.tokenizers.byte_level import fix_surrogates
from gpt2_lib.tokenizers.byte_level import to_byte_level
from gpt2_lib.tokenizers.special_tokens import split_special
from gpt2_lib.tokenizers.split_pattern import SplitPatterns
from gpt2_lib.utils.text_inputs import describe

# Word cache of the engine: at most this many words (cleared when full), and
# only words up to this many characters (long words would pin memory).
WORD_CACHE_SIZE = 200_000
MAX_CACHED_WORD_LENGTH = 256


def bpe_merge(word, ranks):
    """Classic (OpenAI) BPE of a byte-level `word`, in O(n log n).

    Args:
        word: a string in the byte-level alphabet (one character per byte).
        ranks: dict `{(first, second): rank}` of the merge rules.

    Returns:
        The list of tokens whose concatenation is `word`.

    Example:

    >>> ranks = {("a", "b"): 0, ("ab", "c"): 1, ("b", "c"): 2}
    >>> bpe_merge("abcabc", ranks)
    ['abc', 'abc']
    >>> bpe_merge("aaa", {("a", "a"): 0})
    ['aa', 'a']
    """
    tokens = list(word)
    n = len(tokens)
    if n < 2:
        return tokens
    get = ranks.get
    # The word as a linked list over the positions of its characters: a
    # merged token stays at the position of its left half, `None` marks the
    # positions merged away.
    following = list(range(1, n + 1))
    following[-1] = -1
    preceding = list(range(-1, n - 1))
    buckets = {}  # rank -> positions of pairs that had this rank when formed
    for position, rank in enumerate(map(get, zip(tokens, tokens[1:]))):
        if rank is not None:
            bucket = buckets.get(rank)
            if bucket is None:
                buckets[rank] = [position]
            else:
                bucket.append(position)
    heap = list(buckets)
    heapq.heapify(heap)

    def add(rank, position):
        bucket = buckets.get(rank)
        if bucket is None:
            buckets[rank] = [position]
            heapq.heappush(heap, rank)
        else:
            bucket.append(position)

    while heap:
        rank = heapq.heappop(heap)
        positions = buckets.pop(rank)
        positions.sort()
        first = second = merged = None
        for p in positions:
            left = tokens[p]
            q = following[p]
            if left is None or q < 0:
                continue
            right = tokens[q]
            # A position is stale if its pair changed since it was recorded.
            if first is None:
                if get((left, right)) != rank:
                    continue
                first, second, merged = left, right, left + right
            elif left != first or right != second:
                continue
            tokens[p] = merged
            tokens[q] = None
            after = following[q]
            following[p] = after
            if after >= 0:
                preceding[after] = p
                new_rank = get((merged, tokens[after]))
                if new_rank is not None:
                    add(new_rank, p)
            before = preceding[p]
            if before >= 0:
                new_rank = get((tokens[before], merged))
                if new_rank is not None:
                    add(new_rank, before)
    return [token for token in tokens if token is not None]


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
        for token in bpe_merge(to_byte_level(word), self.ranks):
            id = vocabulary.get(token)
            if id is None:
                raise ValueError(
                    f"BPE of the text {describe(word)} gives the token "
                    f"{describe(token)}, which is not in the vocabulary. The "
                    "vocabulary must hold all 256 byte tokens and the result "
                    "of every merge rule."
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
                if len(word) <= MAX_CACHED_WORD_LENGTH:
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
