"""The fast engine: tiktoken's Rust BPE, built in-process from our own files.

Nothing is downloaded: the `tiktoken.Encoding` is made from the tokenizer's
vocabulary and merges. tiktoken merges, one occurrence at a time, the
leftmost adjacent pair whose concatenation is a token of lowest rank, and
maps a piece that is itself a token straight to it. (For pieces of 100 bytes
or more, tiktoken >= 0.13 does the same merges with a heap and a linked list;
it never cuts a piece into chunks, so long words get the same ids as short
ones would.) This is the same as classic BPE (`python_engine.bpe_merge`,
which merges every occurrence of the best pair at once) when the merge rules
are *consistent*, which `tiktoken_equivalence()` checks for each vocabulary:
every merge produces a different token, a rule only uses tokens made by
earlier rules (or single bytes), and classic BPE of each merged token's own
bytes gives that token back. (Sketch of the proof: under these conditions,
if classic BPE ever holds two adjacent tokens whose concatenation is a
token, that pair is the token's own rule; ranks grow along merges, so
merging one occurrence at a time as tiktoken does, or all occurrences of a
pair at once, reach the same state.) OpenAI's GPT-2 files, and any prefix of
their merges, pass. A vocabulary that fails uses the Python engine.
"""

import re
import threading

from gpt2_lib.tokenizers.byte_level import BYTE_DECODER
from gpt2_lib.tokenizers.byte_level import BYTE_ENCODER
from gpt2_lib.tokenizers.byte_level import fix_surrogates
from gpt2_lib.tokenizers.python_engine import bpe_merge
from gpt2_lib.tokenizers.split_pattern import FAST_SPLIT_PATTERN

try:  # The fast engine is optional at import time; the Python one is exact.
    import tiktoken
except ImportError:  # pragma: no cover - tiktoken is a core dependency.
    tiktoken = None

# Verdicts of `tiktoken_equivalence()`, keyed by the merges tuple.
_EQUIVALENCE_CACHE = {}
_EQUIVALENCE_CACHE_SIZE = 8
_EQUIVALENCE_LOCK = threading.Lock()


def tiktoken_equivalence(merges, ranks=None):
    """Check that tiktoken-style BPE equals classic BPE for these merges.

    Args:
        merges: list of `(first, second)` pairs in rank order.
        ranks: optional dict `{(first, second): rank}` (built if missing).

    Returns:
        `(True, "")` if the rules are consistent (see the module docstring),
        else `(False, reason)`.

    Example:

    >>> tiktoken_equivalence([("a", "b"), ("ab", "c")])
    (True, '')
    >>> tiktoken_equivalence([("b", "c"), ("a", "b"), ("ab", "c")])[0]
    False
    """
    key = tuple(merges)
    with _EQUIVALENCE_LOCK:
        cached = _EQUIVALENCE_CACHE.get(key)
    if cached is not None:
        return cached
    verdict = _check_equivalence(merges, ranks)
    with _EQUIVALENCE_LOCK:
        if len(_EQUIVALENCE_CACHE) >= _EQUIVALENCE_CACHE_SIZE:
            _EQUIVALENCE_CACHE.clear()
        _EQUIVALENCE_CACHE[key] = verdict
    return verdict


def _check_equivalence(merges, ranks):
    if ranks is None:
        ranks = {pair: i for i, pair in enumerate(merges)}
    made_by = {}
    for i, (first, second) in enumerate(merges):
        merged = first + second
        if merged in made_by:
            return False, f"merge rules {made_by[merged]} and {i} make the same token"
        made_by[merged] = i
    for i, (first, second) in enumerate(merges):
        for part in (first, second):
            if len(part) == 1 and part in BYTE_DECODER:
                continue
            rank = made_by.get(part)
            if rank is None or rank >= i:
                return False, (
                    f"merge rule {i} uses a token that no earlier rule makes"
                )
    for i, (first, second) in enumerate(merges):
        merged = first + second
        if bpe_merge(merged, ranks) != [merged]:
            return False, (
                f"classic BPE of the bytes of the token made by merge rule {i} "
                "does not give the token back"
            )
    return True, ""


class TiktokenEngine:
    """tiktoken's BPE over our vocabulary (see the module docstring).

    Args:
        mergeable_ranks: dict `{token bytes: rank}` for tiktoken.
        special_ranks: dict `{special token: rank}` for tiktoken.
        rank_to_id: list mapping tiktoken's ranks to our ids, or `None` when
            the ranks are our ids.

    Example:

    >>> mergeable = {bytes([b]): b for b in range(256)}
    >>> mergeable[b"ab"] = 256
    >>> TiktokenEngine(mergeable, {}, None).encode_ordinary("abc")
    [256, 99]
    """

    name = "tiktoken"

    def __init__(self, mergeable_ranks, special_ranks, rank_to_id):
        encoding = tiktoken.Encoding(
            name="gpt2_lib_bpe",
            pat_str=FAST_SPLIT_PATTERN,
            mergeable_ranks=mergeable_ranks,
            special_tokens=special_ranks,
        )
        self.encoding = encoding
        self.allowed_special = set(special_ranks)
        self.rank_to_id = rank_to_id
        core = getattr(encoding, "_core_bpe", None)
        if core is not None and hasattr(core, "encode"):
            # Calling the Rust object directly skips the per-call checks of
            # `Encoding.encode` (disallowed special tokens), which we never
            # need: every unsplittable token is allowed.
            self._encode = core.encode
            self._encode_ordinary = core.encode_ordinary
        else:  # pragma: no cover - depends on tiktoken internals.
            self._encode = lambda text, allowed: encoding.encode(
                text, allowed_special=allowed, disallowed_special=()
            )
            self._encode_ordinary = encoding.encode_ordinary

    def make_encode(self):
        """Returns the fastest `str -> list[int]` function for this engine.

        tiktoken's special-token aware `encode` is slower than
        `encode_ordinary`, and both give the same ids on text that holds no
        special token, so a substring test picks the cheaper call.
        """
        encode = self._encode
        encode_ordinary = self._encode_ordinary
        allowed = self.allowed_special
        table = self.rank_to_id

        if not allowed:
            raw = encode_ordinary
        elif len(allowed) == 1:
            (special,) = allowed
            if table is None:
                # The common case (GPT-2): one special token, ids are ranks.
                def encode_text(text):
                    try:
                        if special in text:
                            return encode(text, allowed)
                        return encode_ordinary(text)
                    except UnicodeEncodeError:
                        return encode(fix_surrogates(text), allowed)

                return encode_text

            def raw(text):
                if special in text:
                    return encode(text, allowed)
                return encode_ordinary(text)

        else:
            search = re.compile(
                "|".join(re.escape(t) for t in sorted(allowed, key=len))
            ).search

            def raw(text):
                if search(text) is not None:
                    return encode(text, allowed)
                return encode_ordinary(text)

        if table is None:

            def encode_text(text):
                try:
                    return raw(text)
                except UnicodeEncodeError:
                    return raw(fix_surrogates(text))

        else:

            def encode_text(text):
                try:
                    ranks = raw(text)
                except UnicodeEncodeError:
                    ranks = raw(fix_surrogates(text))
                return [table[r] for r in ranks]

        return encode_text

    def encode_ordinary(self, text):
        """Ids of `text`, with special tokens treated as ordinary text."""
        ranks = self._encode_ordinary(text)
        if self.rank_to_id is None:
            return ranks
        table = self.rank_to_id
        return [table[r] for r in ranks]


def build_tiktoken_engine(vocabulary, merges, ranks, special_ids, id_to_bytes):
    """The tiktoken engine for a vocabulary, if it is exact for it.

    Args:
        vocabulary: dict `{token: id}`.
        merges: list of `(first, second)` pairs in rank order.
        ranks: dict `{(first, second): rank}`.
        special_ids: dict `{special token: id}`.
        id_to_bytes: the bytes of each id (a list or dict indexed by id).

    Returns:
        `(engine, "")`, or `(None, reason)` when tiktoken cannot be exact:
        it is not installed, a byte token is missing, a special token is a
        prefix of another, or the merges fail `tiktoken_equivalence()`.

    Example:

    >>> from gpt2_lib.tokenizers.byte_level import bytes_to_unicode
    >>> from gpt2_lib.tokenizers.byte_level import token_to_bytes
    >>> vocabulary = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    >>> vocabulary["ab"] = 256
    >>> id_to_bytes = [token_to_bytes(token) for token in vocabulary]
    >>> engine, note = build_tiktoken_engine(
    ...     vocabulary, [("a", "b")], {("a", "b"): 0}, {}, id_to_bytes
    ... )
    >>> engine.encode_ordinary("abc")
    [256, 66]
    >>> build_tiktoken_engine({"a": 0}, [], {}, {}, [b"a"])
    (None, '255 of the 256 byte tokens are not in the vocabulary')
    """
    if tiktoken is None:
        return None, "tiktoken is not installed"
    missing = [b for b, c in BYTE_ENCODER.items() if c not in vocabulary]
    if missing:
        return None, (
            f"{len(missing)} of the 256 byte tokens are not in the vocabulary"
        )
    tokens = list(special_ids)
    for a in tokens:
        for b in tokens:
            if a != b and b.startswith(a):
                return None, (f"the unsplittable token {a!r} is a prefix of {b!r}")
    ok, reason = tiktoken_equivalence(merges, ranks)
    if not ok:
        return None, reason

    merged_ids = [vocabulary[a + b] for a, b in merges]
    identity = all(x < y for x, y in zip(merged_ids, merged_ids[1:]))
    mergeable = {}
    if identity:
        # Ranks are our ids: no translation of tiktoken's output needed.
        for b, c in BYTE_ENCODER.items():
            mergeable[bytes([b])] = vocabulary[c]
        for id in merged_ids:
            mergeable[id_to_bytes[id]] = id
        special_ranks = dict(special_ids)
        rank_to_id = None
    else:
        # Ranks in merge order, translated to our ids by a lookup table.
        rank_to_id = []
        for b, c in BYTE_ENCODER.items():
            mergeable[bytes([b])] = len(rank_to_id)
            rank_to_id.append(vocabulary[c])
        for id in merged_ids:
            mergeable[id_to_bytes[id]] = len(rank_to_id)
            rank_to_id.append(id)
        special_ranks = {}
        for token, id in special_ids.items():
            special_ranks[token] = len(rank_to_id)
            rank_to_id.append(id)
    return TiktokenEngine(mergeable, special_ranks, rank_to_id), ""
