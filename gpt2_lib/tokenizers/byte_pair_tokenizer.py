"""Byte-level byte-pair encoding (BPE), exact to OpenAI's GPT-2 encoder.

Two engines produce the ids, and they agree on every input:

- The pure-Python engine is the definition. It follows OpenAI's
  `encoder.py`: the GPT-2 pre-tokenization pattern (with the `regex`
  module), the byte-to-unicode mapping, then classic BPE, which merges the
  listed pair of lowest rank until no listed pair is left. Results are kept
  in a per-word cache.
- The fast engine is `tiktoken`, built in-process from the same vocabulary
  and merges (nothing is downloaded). tiktoken merges any adjacent pair whose
  concatenation is a token, by the rank of that token, and maps a
  pre-token that is itself a token straight to it. This is the same as
  classic BPE when the merge rules are *consistent*, which
  `tiktoken_equivalence()` checks for each vocabulary: every merge produces a
  different token, a rule only uses tokens made by earlier rules (or single
  bytes), and classic BPE of each merged token's own bytes gives that token
  back. (Sketch of the proof: under these conditions, if classic BPE ever
  holds two adjacent tokens whose concatenation is a token, that pair is the
  token's own rule; ranks grow along merges, so merging one occurrence at a
  time as tiktoken does, or all occurrences of a pair at once, reach the same
  state.) OpenAI's GPT-2 files, and any prefix of their merges, pass. A
  vocabulary that fails falls back to the pure-Python engine.
"""

import json
import os
import re
import threading

import keras
import numpy as np
import regex

from gpt2_lib.tokenizers.tokenizer import Tokenizer

try:  # The fast engine is optional at import time; the Python one is exact.
    import tiktoken
except ImportError:  # pragma: no cover - tiktoken is a core dependency.
    tiktoken = None

VOCAB_FILENAME = "vocabulary.json"
MERGES_FILENAME = "merges.txt"
MERGES_HEADER = "#version: 0.2"

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

ENGINES = ("auto", "tiktoken", "python")

# Verdicts of `tiktoken_equivalence()`, keyed by the merges tuple.
_EQUIVALENCE_CACHE = {}
_EQUIVALENCE_CACHE_SIZE = 8
_EQUIVALENCE_LOCK = threading.Lock()

# Word cache size of the pure-Python engine (cleared when full).
_WORD_CACHE_SIZE = 200_000


def bytes_to_unicode():
    """Returns OpenAI's mapping from byte values to printable characters.

    Bytes that are printable Latin-1 characters (other than the space) map to
    themselves; the others (control characters, space, `\\xa0`, `\\xad`) map
    to `chr(256 + n)`. Byte-level BPE tokens are strings over this alphabet,
    so that whitespace and control bytes never appear in a token string.

    Returns:
        A dict from `int` byte value to one-character `str`.
    """
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}
# `text.encode("utf-8").decode("latin-1").translate(...)` turns text into its
# byte-level string in one C call.
_LATIN1_TO_BYTE_LEVEL = {b: c for b, c in BYTE_ENCODER.items()}
_BYTE_LEVEL_TO_LATIN1 = {ord(c): b for b, c in BYTE_ENCODER.items()}


def to_byte_level(text):
    """Map a string to its byte-level BPE alphabet form (`" a"` -> `"Ġa"`)."""
    return text.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_BYTE_LEVEL)


def token_to_bytes(token):
    """The bytes a byte-level token stands for (`"Ġa"` -> `b" a"`).

    Characters outside the byte-level alphabet (as in added tokens like
    `"<|endoftext|>"`, which are plain ASCII and map to themselves anyway)
    stand for their own UTF-8 encoding.
    """
    try:
        return token.translate(_BYTE_LEVEL_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        return b"".join(
            bytes([BYTE_DECODER[c]]) if c in BYTE_DECODER else c.encode("utf-8")
            for c in token
        )


def fix_surrogates(text):
    """Replace lone surrogates (not encodable as UTF-8) like tiktoken does."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _describe(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_path_readable(path, what):
    if not os.path.isfile(path):
        raise ValueError(
            f"Could not read the {what} file {path!r}: no such file. Pass an "
            f"existing file path or the {what} itself as a Python object."
        )


def read_vocabulary(vocabulary):
    """Read a vocabulary from a dict or a JSON file path.

    Both OpenAI's `encoder.json` and Transformers' `vocab.json` are a JSON
    object mapping token strings to integer ids.

    Returns:
        A new dict mapping `str` tokens to `int` ids.
    """
    if isinstance(vocabulary, (str, os.PathLike)):
        path = os.fspath(vocabulary)
        _check_path_readable(path, "vocabulary")
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(
                f"Could not read the vocabulary file {path!r}: {e}. It must be "
                "a UTF-8 JSON object mapping tokens to integer ids, like "
                "OpenAI's `encoder.json` or Transformers' `vocab.json`."
            ) from e
        source = f"vocabulary file {path!r}"
    elif isinstance(vocabulary, dict):
        data = vocabulary
        source = "vocabulary"
    else:
        raise TypeError(
            "`vocabulary` must be a dict mapping string tokens to integer ids, "
            "or the path of a JSON file holding one. Received: "
            f"type(vocabulary)={type(vocabulary).__name__}."
        )
    if not isinstance(data, dict):
        raise ValueError(
            f"The {source} must hold a JSON object mapping tokens to ids. "
            f"Received a {type(data).__name__}."
        )
    values = list(data.values())
    if (
        all(type(t) is str for t in data)
        and all(type(v) is int for v in values)
        and min(values, default=0) >= 0
        and len(set(values)) == len(values)
    ):
        return dict(data)  # The common, valid case, checked in C loops.
    result = {}
    seen = {}
    for token, id in data.items():
        if not isinstance(token, str):
            raise TypeError(
                f"Vocabulary tokens must be strings. Received the key "
                f"{_describe(token)} in the {source}."
            )
        if isinstance(id, (bool, np.bool_)) or not isinstance(
            id, (int, np.integer)
        ):
            raise TypeError(
                f"Vocabulary ids must be integers. Received {_describe(id)} "
                f"for token {_describe(token)} in the {source}."
            )
        id = int(id)
        if id < 0:
            raise ValueError(
                f"Vocabulary ids must be non-negative. Received {id} for "
                f"token {_describe(token)} in the {source}."
            )
        if id in seen:
            raise ValueError(
                f"Vocabulary id {id} is used by two tokens, "
                f"{_describe(seen[id])} and {_describe(token)}, in the "
                f"{source}. Each id must name one token."
            )
        seen[id] = token
        result[token] = id
    return result


def read_merges(merges):
    """Read merge rules from a list or a merges file path.

    Accepts OpenAI's `vocab.bpe` and Transformers' `merges.txt` (one rule
    `"first second"` per line, an optional `#version` header), or a list of
    `"first second"` strings or `(first, second)` pairs.

    Returns:
        A list of `(first, second)` string pairs in rank order.
    """
    if isinstance(merges, (str, os.PathLike)):
        path = os.fspath(merges)
        _check_path_readable(path, "merges")
        try:
            with open(path, "r", encoding="utf-8", newline="") as f:
                lines = f.read().split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(
                f"Could not read the merges file {path!r}: {e}. It must be a "
                "UTF-8 text file with one merge rule `first second` per line, "
                "like OpenAI's `vocab.bpe` or Transformers' `merges.txt`."
            ) from e
        source = f"merges file {path!r}"
    elif isinstance(merges, (list, tuple)):
        lines = merges
        source = "merges"
    else:
        raise TypeError(
            "`merges` must be a list of merge rules (`'first second'` "
            "strings or `(first, second)` pairs) or the path of a merges "
            f"file. Received: type(merges)={type(merges).__name__}."
        )
    if all(type(line) is str for line in lines):
        # Fast path for well-formed files and lists (checked in C loops).
        split = [parts for parts in (line.split() for line in lines) if parts]
        if split and split[0][0].startswith("#version"):
            split = split[1:]
        if all(len(parts) == 2 for parts in split) and not any(
            parts[0].startswith("#version") for parts in split
        ):
            return [(parts[0], parts[1]) for parts in split]
    pairs = []
    for index, line in enumerate(lines):
        if isinstance(line, (tuple, list)):
            parts = list(line)
        elif isinstance(line, str):
            stripped = line.strip("\r\n")
            if not stripped.strip() or stripped.lstrip().startswith("#version"):
                continue
            parts = stripped.split()
        else:
            raise TypeError(
                f"Merge rule {index} in the {source} must be a string "
                f"`'first second'` or a pair. Received {_describe(line)}."
            )
        if len(parts) != 2 or not all(
            isinstance(p, str) and p for p in parts
        ):
            raise ValueError(
                f"Merge rule {index} in the {source} is malformed: "
                f"{_describe(line)}. Each rule is two tokens separated by one "
                "space, e.g. 'Ġ t'."
            )
        pairs.append((parts[0], parts[1]))
    return pairs


def _classic_bpe(word, ranks):
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


def tiktoken_equivalence(merges, ranks=None):
    """Check that tiktoken-style BPE equals classic BPE for these merges.

    Args:
        merges: list of `(first, second)` pairs in rank order.
        ranks: optional dict `{(first, second): rank}` (built if missing).

    Returns:
        `(True, "")` if the rules are consistent (see the module docstring),
        else `(False, reason)`.
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
            return (
                False,
                f"merge rules {made_by[merged]} and {i} both make "
                f"{merged!r}",
            )
        made_by[merged] = i
    for i, (first, second) in enumerate(merges):
        for part in (first, second):
            if len(part) == 1 and part in BYTE_DECODER:
                continue
            rank = made_by.get(part)
            if rank is None or rank >= i:
                return (
                    False,
                    f"merge rule {i} ({first} {second}) uses {part!r}, which "
                    "no earlier rule makes",
                )
    for i, (first, second) in enumerate(merges):
        merged = first + second
        if _classic_bpe(merged, ranks) != [merged]:
            return (
                False,
                f"classic BPE of the bytes of {merged!r} (rule {i}) does not "
                "give the token back",
            )
    return True, ""


class _PythonEngine:
    """The exact, pure-Python byte-level BPE engine (the definition)."""

    name = "python"

    def __init__(self, vocabulary, ranks, special_ids, special_pattern):
        self.vocabulary = vocabulary
        self.ranks = ranks
        self.special_ids = special_ids
        self.special_pattern = special_pattern
        self.split_pattern = regex.compile(GPT2_SPLIT_PATTERN)
        self.cache = {}

    def _bpe_word(self, word):
        vocabulary = self.vocabulary
        ids = []
        for token in _classic_bpe(to_byte_level(word), self.ranks):
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
        cache = self.cache
        ids = []
        for word in self.split_pattern.findall(text):
            word_ids = cache.get(word)
            if word_ids is None:
                word_ids = self._bpe_word(word)
                if len(cache) >= _WORD_CACHE_SIZE:
                    cache.clear()
                cache[word] = word_ids
            ids.extend(word_ids)
        return ids

    def encode_segments(self, segments):
        ids = []
        special_ids = self.special_ids
        for is_special, segment in segments:
            if is_special:
                ids.append(special_ids[segment])
            else:
                ids.extend(self.encode_ordinary(segment))
        return ids

    def _encode(self, text):
        if self.special_pattern is None:
            return self.encode_ordinary(text)
        return self.encode_segments(split_special(text, self.special_pattern))

    def encode(self, text):
        try:
            return self._encode(text)
        except UnicodeEncodeError:
            return self._encode(fix_surrogates(text))


class _TiktokenEngine:
    """The fast engine: tiktoken's Rust BPE built from our own files."""

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
        ranks = self._encode_ordinary(text)
        if self.rank_to_id is None:
            return ranks
        table = self.rank_to_id
        return [table[r] for r in ranks]


def split_special(text, special_pattern):
    """Split `text` into `(is_special, segment)` pairs around special tokens."""
    pieces = special_pattern.split(text)
    segments = []
    for i, piece in enumerate(pieces):
        if i % 2:
            segments.append((True, piece))
        elif piece:
            segments.append((False, piece))
    return segments


class _State:
    """Everything derived from one vocabulary and merges, swapped atomically."""

    def __init__(self, vocabulary, merges, unsplittable_tokens, engine):
        self.vocabulary = vocabulary
        self.merges = merges
        self.id_to_token = {id: token for token, id in vocabulary.items()}
        self.sorted_tokens = None
        self.size = max(vocabulary.values(), default=-1) + 1
        for i, (first, second) in enumerate(merges):
            for token in (first, second, first + second):
                if token not in vocabulary:
                    raise ValueError(
                        f"The vocabulary and merges do not match: merge rule "
                        f"{i} ({first} {second}) uses or makes the token "
                        f"{token!r}, which is not in the vocabulary. Load the "
                        "vocabulary and merges files of the same model."
                    )
        self.ranks = {pair: i for i, pair in enumerate(merges)}

        self.unsplittable_tokens = list(unsplittable_tokens)
        special_ids = {}
        for token in self.unsplittable_tokens:
            if not isinstance(token, str) or not token:
                raise ValueError(
                    "Unsplittable tokens must be non-empty strings. Received: "
                    f"{_describe(token)}."
                )
            if token not in vocabulary:
                raise ValueError(
                    f"The unsplittable token {token!r} is not in the "
                    "vocabulary. Add it to the vocabulary or remove it from "
                    "`unsplittable_tokens`."
                )
            special_ids[token] = vocabulary[token]
        self.special_ids = special_ids
        if special_ids:
            # Longest first, so that the longest token matching at a position
            # wins (as in Hugging Face `tokenizers`).
            alternatives = sorted(special_ids, key=len, reverse=True)
            self.special_pattern = regex.compile(
                "(" + "|".join(regex.escape(t) for t in alternatives) + ")"
            )
        else:
            self.special_pattern = None

        # Bytes of each id, for detokenization; `None` marks unused ids.
        special_set = set(special_ids)
        id_to_bytes = [None] * self.size
        for token, id in vocabulary.items():
            if token in special_set:
                id_to_bytes[id] = token.encode("utf-8")
            else:
                id_to_bytes[id] = token_to_bytes(token)
        self.id_to_bytes = id_to_bytes

        self.python_engine = _PythonEngine(
            vocabulary, self.ranks, special_ids, self.special_pattern
        )
        self.fast_engine = None
        self.engine_note = ""
        if engine != "python":
            self.fast_engine, self.engine_note = self._build_fast_engine()
            if self.fast_engine is None and engine == "tiktoken":
                raise ValueError(
                    "`engine='tiktoken'` was requested but cannot be used "
                    f"exactly with this vocabulary: {self.engine_note}. Use "
                    "`engine='auto'` to fall back to the exact Python engine."
                )
        self.engine = self.fast_engine or self.python_engine

    def _build_fast_engine(self):
        if tiktoken is None:
            return None, "tiktoken is not installed"
        vocabulary = self.vocabulary
        missing = [b for b, c in BYTE_ENCODER.items() if c not in vocabulary]
        if missing:
            return None, (
                f"{len(missing)} of the 256 byte tokens are not in the "
                "vocabulary"
            )
        tokens = list(self.special_ids)
        for a in tokens:
            for b in tokens:
                if a != b and b.startswith(a):
                    return None, (
                        f"the unsplittable token {a!r} is a prefix of {b!r}"
                    )
        ok, reason = tiktoken_equivalence(self.merges, self.ranks)
        if not ok:
            return None, reason

        merged_ids = [vocabulary[a + b] for a, b in self.merges]
        identity = all(x < y for x, y in zip(merged_ids, merged_ids[1:]))
        mergeable = {}
        if identity:
            # Ranks are our ids: no translation of tiktoken's output needed.
            for b, c in BYTE_ENCODER.items():
                mergeable[bytes([b])] = vocabulary[c]
            for id in merged_ids:
                mergeable[self.id_to_bytes[id]] = id
            special_ranks = dict(self.special_ids)
            rank_to_id = None
        else:
            # Ranks in merge order, translated to our ids by a lookup table.
            rank_to_id = []
            for b, c in BYTE_ENCODER.items():
                mergeable[bytes([b])] = len(rank_to_id)
                rank_to_id.append(vocabulary[c])
            for id in merged_ids:
                mergeable[self.id_to_bytes[id]] = len(rank_to_id)
                rank_to_id.append(id)
            special_ranks = {}
            for token, id in self.special_ids.items():
                special_ranks[token] = len(rank_to_id)
                rank_to_id.append(id)
        return _TiktokenEngine(mergeable, special_ranks, rank_to_id), ""


def _is_integer_dtype(dtype):
    try:
        return np.issubdtype(np.dtype(dtype), np.integer)
    except TypeError:
        return False


@keras.saving.register_keras_serializable(package="gpt2_lib")
class BytePairTokenizer(Tokenizer):
    """Byte-level byte-pair encoding tokenizer, exact to OpenAI's GPT-2.

    Given the same vocabulary (token to id) and merge rules, this tokenizer
    produces the ids of OpenAI's `encoder.py`, of `tiktoken` and of
    Hugging Face `tokenizers`: the GPT-2 pre-tokenization pattern, the
    byte-to-unicode mapping, then merges by rank. Unsplittable tokens (such
    as `"<|endoftext|>"`) are kept whole wherever they appear in the text.

    Two engines compute the ids: `tiktoken` (fast, used when it is installed
    and proven equivalent for the vocabulary, see `tiktoken_equivalence()`)
    and a pure-Python engine that follows OpenAI's algorithm (used
    otherwise). Both give identical ids.

    Inputs are a string (or UTF-8 bytes), or a batch: a list or tuple of
    strings, a 1-D NumPy array of `str`/`bytes` (what `tf.numpy_function`
    passes), or a TensorFlow string tensor. Outputs are plain Python/NumPy:

    - Without `sequence_length`: a `list` of ids for one string, a `list` of
      such lists for a batch.
    - With `sequence_length`: a NumPy array of `dtype`, shape
      `(sequence_length,)` for one string and `(batch, sequence_length)` for a
      batch, truncated or padded on the right with `pad_token_id` (`0` if the
      tokenizer defines none, as KerasHub's `BytePairTokenizer` does).

    The tokenizer is thread-safe and holds no backend tensors.

    Args:
        vocabulary: dict mapping string tokens to integer ids, or the path of
            a JSON file holding one (OpenAI's `encoder.json`, Transformers'
            `vocab.json`, KerasHub's `vocabulary.json`).
        merges: list of merge rules (`"first second"` strings or
            `(first, second)` pairs, in rank order), or the path of a merges
            file (OpenAI's `vocab.bpe`, Transformers' or KerasHub's
            `merges.txt`).
        sequence_length: int. If set, outputs are padded or truncated to this
            length and returned as NumPy arrays. Defaults to `None`.
        add_prefix_space: bool. Whether to add a space before the text (each
            piece of text between unsplittable tokens that does not already
            start with a space, as Transformers' GPT-2 tokenizer does), so
            that the first word is tokenized like the following ones.
            Defaults to `False`.
        unsplittable_tokens: list of strings that are never split and map to
            their own id (they must be in the vocabulary). Defaults to the
            tokenizer's special tokens.
        dtype: string. Integer dtype of the dense outputs. Defaults to
            `"int32"`.
        engine: string. `"auto"` (default) uses tiktoken when it is exact
            for the vocabulary, else the Python engine; `"python"` forces the
            pure-Python engine; `"tiktoken"` requires tiktoken and raises if
            it cannot be exact. Not saved in the config.
        **kwargs: `name` and `config_file`, and config keys written by
            KerasHub that have no effect here (`trainable`, ...).

    Example:

    ```python
    merges = ["b u", "t t", "e r", "bu tt", "butt er", "f l", "fl y"]
    vocab = {}
    for byte_token in gpt2_lib.tokenizers.byte_pair_tokenizer.BYTE_ENCODER.values():
        vocab[byte_token] = len(vocab)
    for rule in merges:
        vocab["".join(rule.split())] = len(vocab)
    tokenizer = gpt2_lib.tokenizers.BytePairTokenizer(vocab, merges)
    tokenizer("butterfly")  # [262, 263]: "butter", "fly"
    tokenizer(["butterfly", "butter"])  # [[262, 263], [262]]
    tokenizer.detokenize([[262, 263]])  # ["butterfly"]
    ```
    """

    def __init__(
        self,
        vocabulary=None,
        merges=None,
        sequence_length=None,
        add_prefix_space=False,
        unsplittable_tokens=None,
        dtype="int32",
        engine="auto",
        **kwargs,
    ):
        super().__init__(dtype=dtype, **kwargs)
        if not _is_integer_dtype(self.dtype):
            raise ValueError(
                "`dtype` must be an integer dtype such as 'int32'. String "
                "outputs are not supported; use `id_to_token()` to read "
                f"tokens. Received: dtype={dtype!r}."
            )
        if engine not in ENGINES:
            raise ValueError(
                f"`engine` must be one of {ENGINES}. Received: "
                f"engine={engine!r}."
            )
        if engine == "tiktoken" and tiktoken is None:
            raise ValueError(
                "`engine='tiktoken'` requires the `tiktoken` package: "
                "`pip install tiktoken`."
            )
        self._engine_request = engine
        self.sequence_length = sequence_length
        if not isinstance(add_prefix_space, (bool, np.bool_)):
            raise TypeError(
                "`add_prefix_space` must be a bool. Received: "
                f"add_prefix_space={add_prefix_space!r}."
            )
        self.add_prefix_space = bool(add_prefix_space)
        if unsplittable_tokens is None:
            unsplittable_tokens = self.special_tokens
        elif isinstance(unsplittable_tokens, str) or not isinstance(
            unsplittable_tokens, (list, tuple)
        ):
            raise TypeError(
                "`unsplittable_tokens` must be a list of strings. Received: "
                f"{_describe(unsplittable_tokens)}."
            )
        self.unsplittable_tokens = list(unsplittable_tokens)
        self.file_assets = [VOCAB_FILENAME, MERGES_FILENAME]
        self._state = None
        self._encode = None
        self.set_vocabulary_and_merges(vocabulary, merges)

    # ------------------------------------------------------------------
    # Vocabulary.

    @property
    def sequence_length(self):
        """The padded length of outputs, or `None` for unpadded lists."""
        return self._sequence_length

    @sequence_length.setter
    def sequence_length(self, value):
        if value is not None and (
            isinstance(value, (bool, np.bool_))
            or not isinstance(value, (int, np.integer))
            or value < 1
        ):
            raise ValueError(
                "`sequence_length` must be a positive integer or `None`. "
                f"Received: sequence_length={value!r}."
            )
        self._sequence_length = None if value is None else int(value)

    def set_vocabulary_and_merges(self, vocabulary, merges):
        """Set the vocabulary and merge rules from Python objects or files.

        Args:
            vocabulary: dict or JSON file path (see the class docstring).
            merges: list or merges file path (see the class docstring).
        """
        if vocabulary is None and merges is None:
            self._state = None
            self._encode = None
            self.vocabulary = None
            self.merges = None
            return
        if vocabulary is None or merges is None:
            missing = "vocabulary" if vocabulary is None else "merges"
            raise ValueError(
                f"`{missing}` is missing: pass both `vocabulary` and `merges` "
                "(or neither, and load them later with `load_assets()`)."
            )
        vocabulary = read_vocabulary(vocabulary)
        pairs = read_merges(merges)
        state = _State(
            vocabulary, pairs, self.unsplittable_tokens, self._engine_request
        )
        # Check special tokens before publishing the new state.
        previous = self._state
        self._state = state
        try:
            self._update_special_token_ids()
        except ValueError:
            self._state = previous
            raise
        self.vocabulary = state.vocabulary
        self.merges = [f"{a} {b}" for a, b in pairs]
        self._encode = (
            state.fast_engine.make_encode()
            if state.fast_engine is not None
            else state.python_engine.encode
        )

    def _check_vocabulary(self):
        state = self._state
        if state is None:
            raise ValueError(
                f"No vocabulary has been set for {self.__class__.__name__}. "
                "Pass `vocabulary` and `merges` when creating the tokenizer, "
                "or call `load_assets()` / `from_preset()`."
            )
        return state

    @property
    def engine(self):
        """The engine in use: `"tiktoken"` or `"python"` (`None` if unset)."""
        state = self._state
        return None if state is None else state.engine.name

    @property
    def engine_note(self):
        """Why the fast engine is not used (empty when it is)."""
        state = self._state
        return "" if state is None else state.engine_note

    def get_vocabulary(self):
        """Get the vocabulary as a list of string tokens, ordered by id."""
        state = self._check_vocabulary()
        if state.sorted_tokens is None:
            state.sorted_tokens = [
                token for _, token in sorted(state.id_to_token.items())
            ]
        return list(state.sorted_tokens)

    def vocabulary_size(self):
        """The size of the id space: the largest id plus one."""
        return self._check_vocabulary().size

    def id_to_token(self, id):
        """Convert an integer id to a string token."""
        state = self._check_vocabulary()
        if isinstance(id, (bool, np.bool_)) or not isinstance(
            id, (int, np.integer)
        ):
            raise TypeError(
                f"`id` must be an integer. Received: {_describe(id)}."
            )
        token = state.id_to_token.get(int(id))
        if token is None:
            raise ValueError(
                f"Id {id} is not in the vocabulary (ids run from 0 to "
                f"{state.size - 1})."
            )
        return token

    def token_to_id(self, token):
        """Convert a string token to an integer id."""
        state = self._state
        if state is None:
            raise ValueError(
                "No vocabulary has been set; cannot look up "
                f"token {_describe(token)}."
            )
        id = state.vocabulary.get(token) if isinstance(token, str) else None
        if id is None:
            raise ValueError(
                f"Token {_describe(token)} is not in the vocabulary."
            )
        return id

    def save_assets(self, dir_path):
        """Write `vocabulary.json` and `merges.txt` into `dir_path`.

        The merges file has Transformers' `#version: 0.2` header, which
        KerasHub, Transformers and this tokenizer all skip when reading.
        """
        state = self._check_vocabulary()
        os.makedirs(dir_path, exist_ok=True)
        vocab_path = os.path.join(dir_path, VOCAB_FILENAME)
        merges_path = os.path.join(dir_path, MERGES_FILENAME)
        with open(vocab_path, "w", encoding="utf-8") as f:
            f.write(json.dumps(state.vocabulary, ensure_ascii=False))
        with open(merges_path, "w", encoding="utf-8", newline="\n") as f:
            f.write(MERGES_HEADER + "\n")
            for first, second in state.merges:
                f.write(f"{first} {second}\n")

    def load_assets(self, dir_path):
        """Read `vocabulary.json` and `merges.txt` from `dir_path`."""
        self.set_vocabulary_and_merges(
            os.path.join(dir_path, VOCAB_FILENAME),
            os.path.join(dir_path, MERGES_FILENAME),
        )

    # ------------------------------------------------------------------
    # Tokenization.

    def _canonicalize(self, inputs):
        """Returns `(list of str, batched)` for any accepted input."""
        cls = inputs.__class__
        if cls is str:
            return [inputs], False
        if cls is list or cls is tuple:
            texts = list(inputs)
            for i, item in enumerate(texts):
                if item.__class__ is not str:
                    texts[i] = _to_text(item, i)
            return texts, True
        if isinstance(inputs, str):
            return [str(inputs)], False
        if isinstance(inputs, (bytes, bytearray)):
            return [_to_text(inputs, None)], False
        if not isinstance(inputs, np.ndarray) and _is_tf_tensor(inputs):
            if hasattr(inputs, "to_list"):  # tf.RaggedTensor
                raise ValueError(
                    "`tokenize()` takes a string or a 1-D batch of strings. "
                    "Received a ragged tensor of rank "
                    f"{inputs.shape.rank}; flatten it first."
                )
            inputs = inputs.numpy()
        if isinstance(inputs, np.ndarray):
            if inputs.ndim == 0:
                return [_to_text(inputs.item(), None)], False
            if inputs.ndim == 1:
                return [_to_text(item, i) for i, item in enumerate(inputs.tolist())], True
            raise ValueError(
                "`tokenize()` takes a string or a 1-D batch of strings. "
                f"Received an array of shape {inputs.shape}; reshape it to "
                "1-D (e.g. `x.reshape(-1)`) first."
            )
        if isinstance(inputs, np.generic):
            return [_to_text(inputs.item(), None)], False
        raise TypeError(
            "`tokenize()` takes a string, bytes, or a batch of them (list, "
            "tuple, 1-D NumPy array, TensorFlow string tensor). Received: "
            f"{_describe(inputs)} of type {type(inputs).__name__}."
        )

    def _encode_texts(self, texts):
        encode = self._encode
        if self.add_prefix_space:
            encode = self._encode_with_prefix_space
        return [encode(text) for text in texts]

    def _encode_with_prefix_space(self, text):
        state = self._state
        engine = state.engine
        if state.special_pattern is None:
            segments = [(False, text)] if text else []
        else:
            segments = split_special(text, state.special_pattern)
        ids = []
        for is_special, segment in segments:
            if is_special:
                ids.append(state.special_ids[segment])
                continue
            if not segment.startswith(" "):
                segment = " " + segment
            try:
                ids.extend(engine.encode_ordinary(segment))
            except UnicodeEncodeError:
                ids.extend(engine.encode_ordinary(fix_surrogates(segment)))
        return ids

    def _tokenize_unpadded(self, inputs):
        self._check_vocabulary()
        texts, batched = self._canonicalize(inputs)
        return self._encode_texts(texts), batched

    def tokenize(self, inputs):
        """Tokenize a string or a batch of strings into token ids.

        Args:
            inputs: a `str` (or UTF-8 `bytes`), or a batch: list/tuple of
                strings, 1-D NumPy array of `str`/`bytes`, or a TensorFlow
                string tensor of rank 0 or 1.

        Returns:
            Without `sequence_length`: `list[int]` for one string,
            `list[list[int]]` for a batch. With `sequence_length`: a NumPy
            array of shape `(sequence_length,)` or `(batch, sequence_length)`.
        """
        # Fast path: one Python string, the most common call.
        if (
            inputs.__class__ is str
            and self._sequence_length is None
            and not self.add_prefix_space
        ):
            encode = self._encode
            if encode is not None:
                return encode(inputs)
        self._check_vocabulary()
        texts, batched = self._canonicalize(inputs)
        outputs = self._encode_texts(texts)
        if self._sequence_length is not None:
            dense = self._to_dense(outputs, self._sequence_length)
            return dense if batched else dense[0]
        return outputs if batched else outputs[0]

    def _to_dense(self, rows, length):
        pad = getattr(self, "pad_token_id", None)
        pad = 0 if pad is None else pad
        out = np.full((len(rows), length), pad, dtype=self.dtype)
        for i, row in enumerate(rows):
            row = row[:length]
            out[i, : len(row)] = row
        return out

    def detokenize(self, inputs):
        """Convert token ids back to strings.

        Bytes that do not form valid UTF-8 (e.g. a partial multi-byte
        character at the end of a truncated sequence) are replaced by
        U+FFFD, as OpenAI's decoder does.

        Args:
            inputs: a sequence of ids (`list`, 1-D NumPy array or backend
                tensor) or a batch of them (`list` of lists, 2-D array or
                tensor, `tf.RaggedTensor`), or a single id.

        Returns:
            A `str` for a sequence (or a single id), a `list[str]` for a
            batch.
        """
        state = self._check_vocabulary()
        rows, batched = _canonicalize_ids(inputs)
        table = state.id_to_bytes
        size = state.size
        outputs = []
        for row in rows:
            try:
                if row and min(row) < 0:
                    raise IndexError
                pieces = [table[i] for i in row]
                text = b"".join(pieces)
            except (IndexError, TypeError):
                raise _bad_ids_error(row, table, size) from None
            outputs.append(text.decode("utf-8", "replace"))
        return outputs if batched else outputs[0]

    # `__call__` is `tokenize` itself: one call frame less per string.
    __call__ = tokenize

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "tokenize" in cls.__dict__ and "__call__" not in cls.__dict__:
            # A subclass that overrides `tokenize` is called through it.
            cls.__call__ = Tokenizer.__call__

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "add_prefix_space": self.add_prefix_space,
                "unsplittable_tokens": list(self.unsplittable_tokens),
            }
        )
        return config


def _to_text(item, index):
    """Convert one input item to `str`, or raise a clear error."""
    if isinstance(item, str):
        return str(item)
    where = "The input" if index is None else f"Item {index} of the batch"
    if isinstance(item, (bytes, bytearray)):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{where} is bytes that are not valid UTF-8 ({e}). Decode it "
                "first, e.g. `data.decode('utf-8', errors='replace')`."
            ) from None
    raise TypeError(
        f"{where} must be a string or UTF-8 bytes. Received: "
        f"{_describe(item)} of type {type(item).__name__}."
    )


def _is_tf_tensor(value):
    module = type(value).__module__
    return module.startswith("tensorflow") and hasattr(value, "numpy")


def _canonicalize_ids(inputs):
    """Returns `(list of id lists, batched)` for any accepted id input."""
    if isinstance(inputs, (bool, np.bool_)):
        raise TypeError(f"Token ids must be integers. Received: {inputs!r}.")
    if isinstance(inputs, (int, np.integer)):
        return [[int(inputs)]], False
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            return [[]], False
        first = inputs[0]
        if isinstance(first, (list, tuple, np.ndarray)) or _is_tensor(first):
            return [_row_to_list(row, i) for i, row in enumerate(inputs)], True
        return [_row_to_list(inputs, None)], False
    if _is_tf_tensor(inputs):
        if hasattr(inputs, "to_list"):  # tf.RaggedTensor
            rows = inputs.to_list()
            if rows and not isinstance(rows[0], list):
                return [_row_to_list(rows, None)], False
            return [_row_to_list(row, i) for i, row in enumerate(rows)], True
        inputs = inputs.numpy()
    if not isinstance(inputs, np.ndarray):
        if _is_tensor(inputs):
            inputs = keras.ops.convert_to_numpy(inputs)
        else:
            raise TypeError(
                "`detokenize()` takes token ids: an int, a list of ints, a "
                "list of lists of ints, a NumPy array or a backend tensor. "
                f"Received: {_describe(inputs)} of type "
                f"{type(inputs).__name__}."
            )
    array = _check_int_array(inputs)
    if array.ndim == 0:
        return [[int(array)]], False
    if array.ndim == 1:
        return [array.tolist()], False
    if array.ndim == 2:
        return array.tolist(), True
    raise ValueError(
        "`detokenize()` takes a 1-D sequence or a 2-D batch of ids. Received "
        f"an array of shape {array.shape}."
    )


def _is_tensor(value):
    if isinstance(value, np.ndarray):
        return False
    if _is_tf_tensor(value):
        return True
    try:
        return keras.ops.is_tensor(value)
    except Exception:
        return False


def _check_int_array(array):
    array = np.asarray(array)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            "Token ids must be integers. Received an array of dtype "
            f"{array.dtype}; cast it with `.astype('int32')` if it holds ids."
        )
    return array


def _row_to_list(row, index):
    if isinstance(row, np.ndarray) or _is_tensor(row):
        if not isinstance(row, np.ndarray):
            row = keras.ops.convert_to_numpy(row)
        row = _check_int_array(row)
        if row.ndim != 1:
            raise ValueError(
                f"Row {index} of the batch must be a 1-D sequence of ids. "
                f"Received shape {row.shape}."
            )
        return row.tolist()
    if not isinstance(row, (list, tuple)):
        where = "The input" if index is None else f"Row {index} of the batch"
        raise TypeError(
            f"{where} must be a sequence of integer ids. Received: "
            f"{_describe(row)}."
        )
    for i in row:
        if isinstance(i, (bool, np.bool_)) or not isinstance(
            i, (int, np.integer)
        ):
            where = "" if index is None else f" in row {index}"
            raise TypeError(
                f"Token ids must be integers. Received {_describe(i)}{where}."
            )
    return list(row)


def _bad_ids_error(row, table, size):
    for id in row:
        if not (0 <= id < size) or table[id] is None:
            return ValueError(
                f"Token id {id} is outside the vocabulary (valid ids: 0 to "
                f"{size - 1}, vocabulary holes excluded). Check the ids or "
                "use the tokenizer of the model that produced them."
            )
    return ValueError(f"Invalid token ids: {_describe(row)}.")
