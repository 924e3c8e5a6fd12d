"""Everything a byte-pair tokenizer derives from one vocabulary and merges.

A `BPEState` is built in full, then published by the tokenizer in one
assignment, so that a thread tokenizing while the vocabulary is replaced sees
either the old state or the new one. It holds the lookup tables (token to
id, id to token, id to bytes), the special tokens, and the engine that
computes ids: tiktoken when it is exact for the vocabulary
(`tiktoken_engine.build_tiktoken_engine()`), else the Python engine.
"""

from gpt2_lib.tokenizers.byte_level import token_to_bytes
from gpt2_lib.tokenizers.python_engine import PythonEngine
from gpt2_lib.tokenizers.special_tokens import special_token_pattern
from gpt2_lib.tokenizers.tiktoken_engine import build_tiktoken_engine
from gpt2_lib.utils.text_inputs import describe

ENGINES = ("auto", "tiktoken", "python")


class BPEState:
    """Lookup tables and engine for one vocabulary and merges.

    Args:
        vocabulary: dict `{token: id}` (as read by `bpe_files`).
        merges: list of `(first, second)` pairs in rank order.
        unsplittable_tokens: list of tokens kept whole (in the vocabulary).
        engine: `"auto"`, `"tiktoken"` or `"python"` (see
            `BytePairTokenizer`).
        merge_lines: for merges read from a file, the line of each rule,
            and `merges_source`, `vocabulary_source`: how to name the files
            in error messages (which then never quote the files' content).

    Example:

    >>> from gpt2_lib.tokenizers.byte_level import bytes_to_unicode
    >>> vocabulary = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    >>> vocabulary.update({"ab": 256, "<|endoftext|>": 257})
    >>> state = BPEState(vocabulary, [("a", "b")], ["<|endoftext|>"], "auto")
    >>> state.engine.name, state.make_encode()("abc<|endoftext|>")
    ('tiktoken', [256, 66, 257])
    """

    def __init__(
        self,
        vocabulary,
        merges,
        unsplittable_tokens,
        engine,
        merge_lines=None,
        merges_source="merges",
        vocabulary_source="vocabulary",
    ):
        self.vocabulary = vocabulary
        self.merges = merges
        self.id_to_token = {id: token for token, id in vocabulary.items()}
        self.sorted_tokens = None
        self.size = max(vocabulary.values(), default=-1) + 1
        for i, (first, second) in enumerate(merges):
            for token in (first, second, first + second):
                if token not in vocabulary:
                    where = _mismatch(
                        i, first, second, token, merge_lines, merges_source
                    )
                    raise ValueError(
                        f"The vocabulary and merges do not match: {where}, "
                        f"which is not in the {vocabulary_source}. Load the "
                        "vocabulary and merges files of the same model."
                    )
        self.ranks = {pair: i for i, pair in enumerate(merges)}

        self.unsplittable_tokens = list(unsplittable_tokens)
        special_ids = {}
        for token in self.unsplittable_tokens:
            if not isinstance(token, str) or not token:
                raise ValueError(
                    "Unsplittable tokens must be non-empty strings. Received: "
                    f"{describe(token)}."
                )
            if token not in vocabulary:
                raise ValueError(
                    f"The unsplittable token {token!r} is not in the "
                    f"{vocabulary_source}. Add it to the vocabulary or remove "
                    "it from `unsplittable_tokens`."
                )
            special_ids[token] = vocabulary[token]
        self.special_ids = special_ids
        self.special_pattern = special_token_pattern(list(special_ids))

        # Bytes of each id, for detokenization; `None` marks unused ids. A
        # list indexed by id, or a dict if the ids are very sparse.
        if self.size <= 2 * len(vocabulary) + 1024:
            id_to_bytes = [None] * self.size
        else:
            id_to_bytes = {}
        for token, id in vocabulary.items():
            if token in special_ids:
                id_to_bytes[id] = token.encode("utf-8")
            else:
                id_to_bytes[id] = token_to_bytes(token)
        self.id_to_bytes = id_to_bytes

        self._python_engine = None
        self.fast_engine = None
        self.engine_note = ""
        if engine != "python":
            self.fast_engine, self.engine_note = build_tiktoken_engine(
                vocabulary, merges, self.ranks, special_ids, id_to_bytes
            )
            if self.fast_engine is None and engine == "tiktoken":
                raise ValueError(
                    "`engine='tiktoken'` was requested but cannot be used "
                    f"exactly with this vocabulary: {self.engine_note}. Use "
                    "`engine='auto'` to fall back to the exact Python engine."
                )
        self.engine = self.fast_engine or self.python_engine

    @property
    def python_engine(self):
        """The exact engine, built on first use (a race builds it twice)."""
        if self._python_engine is None:
            self._python_engine = PythonEngine(
                self.vocabulary, self.ranks, self.special_ids, self.special_pattern
            )
        return self._python_engine

    def make_encode(self):
        """The fastest `str -> list[int]` function of the engine in use."""
        if self.fast_engine is not None:
            return self.fast_engine.make_encode()
        return self.python_engine.encode


def _mismatch(i, first, second, token, lines, merges_source):
    """Which merge rule needs a missing token (quoting it only for a list)."""
    uses = "makes" if token == first + second else "uses"
    if lines is None:
        return f"merge rule {i} ({first} {second}) {uses} the token {token!r}"
    return f"line {lines[i]} of the {merges_source} {uses} a token"
