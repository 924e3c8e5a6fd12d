"""`BytePairTokenizer`: byte-level BPE, exact to OpenAI's GPT-2 encoder.

The pieces live in their own modules: the byte-level alphabet
(`byte_level`), the pre-tokenization pattern (`split_pattern`,
`unicode_tables`), special tokens (`special_tokens`), the vocabulary and
merges files (`bpe_files`), the two engines (`python_engine`, the
definition, and `tiktoken_engine`, the fast one) and the tables derived from
one vocabulary (`bpe_state`). Input forms are recognised by
`gpt2_lib.utils.text_inputs`.
"""

import os

import keras
import numpy as np

from gpt2_lib.tokenizers.bpe_files import MERGES_FILENAME
from gpt2_lib.tokenizers.bpe_files import VOCAB_FILENAME
from gpt2_lib.tokenizers.bpe_files import read_merge_rules
from gpt2_lib.tokenizers.bpe_files import read_vocabulary
from gpt2_lib.tokenizers.bpe_files import write_merges
from gpt2_lib.tokenizers.bpe_files import write_vocabulary
from gpt2_lib.tokenizers.bpe_state import ENGINES
from gpt2_lib.tokenizers.bpe_state import BPEState
from gpt2_lib.tokenizers.byte_level import fix_surrogates
from gpt2_lib.tokenizers.special_tokens import split_special
from gpt2_lib.tokenizers.tiktoken_engine import tiktoken
from gpt2_lib.tokenizers.tokenizer import Tokenizer
from gpt2_lib.utils.text_inputs import canonicalize_ids
from gpt2_lib.utils.text_inputs import canonicalize_texts
from gpt2_lib.utils.text_inputs import describe


def _is_integer_dtype(dtype):
    try:
        return np.issubdtype(np.dtype(dtype), np.integer)
    except TypeError:
        return False


def _source(value, what):
    """How error messages name a vocabulary or merges argument."""
    if isinstance(value, (str, os.PathLike)):
        return f"{what} file {os.fspath(value)!r}"
    return what


@keras.saving.register_keras_serializable(package="gpt2_lib")
class BytePairTokenizer(Tokenizer):
    """Byte-level byte-pair encoding tokenizer, exact to OpenAI's GPT-2.

    Given the same vocabulary (token to id) and merge rules, this tokenizer
    produces the ids of OpenAI's `encoder.py`, of `tiktoken` and of
    Hugging Face `tokenizers`: the GPT-2 pre-tokenization pattern, the
    byte-to-unicode mapping, then merges by rank. Unsplittable tokens (such
    as `"<|endoftext|>"`) are kept whole wherever they appear in the text.

    Two engines compute the ids, and they give identical ids. The pure-Python
    engine follows OpenAI's algorithm and is the definition; it runs in
    O(n log n) per word (a 1 MB word takes seconds, not hours). The fast
    engine is tiktoken, built in-process from the same files. With
    `engine="auto"`, the Python engine is used instead of tiktoken when:

    - the `tiktoken` package is not installed;
    - the vocabulary lacks some of the 256 byte tokens;
    - an unsplittable token is a prefix of another one (tiktoken's order of
      matching them is unspecified);
    - the merge rules fail `tiktoken_engine.tiktoken_equivalence()`: two
      rules make the same token, a rule uses a token that only a later rule
      makes, or classic BPE of a merged token's bytes does not give it back
      (then tiktoken's one-merge-at-a-time order could give other ids).

    `engine` and `engine_note` tell which engine is used and why.

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

    >>> from gpt2_lib.tokenizers import BytePairTokenizer
    >>> from gpt2_lib.tokenizers.byte_level import bytes_to_unicode
    >>> # The 256 byte tokens, then one token per merge rule.
    >>> vocab = {token: i for i, token in enumerate(bytes_to_unicode().values())}
    >>> merges = ["b u", "t t", "e r", "bu tt", "butt er", "f l", "fl y"]
    >>> for rule in merges:
    ...     vocab["".join(rule.split())] = len(vocab)
    >>> tokenizer = BytePairTokenizer(vocab, merges)
    >>> tokenizer("butterfly")  # "butter", "fly"
    [260, 262]
    >>> tokenizer(["butterfly", "butter"])
    [[260, 262], [260]]
    >>> tokenizer.detokenize([[260, 262]])
    ['butterfly']
    >>> tokenizer.engine
    'tiktoken'
    >>> padded = BytePairTokenizer(vocab, merges, sequence_length=3)
    >>> padded(["butterfly", "butter"]).tolist()
    [[260, 262, 0], [260, 0, 0]]
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
                f"`engine` must be one of {ENGINES}. Received: engine={engine!r}."
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
                f"{describe(unsplittable_tokens)}."
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
        table = read_vocabulary(vocabulary)
        pairs, merge_lines = read_merge_rules(merges)
        state = BPEState(
            table,
            pairs,
            self.unsplittable_tokens,
            self._engine_request,
            merge_lines=merge_lines,
            merges_source=_source(merges, "merges"),
            vocabulary_source=_source(vocabulary, "vocabulary"),
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
        self._encode = state.make_encode()

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
        if isinstance(id, (bool, np.bool_)) or not isinstance(id, (int, np.integer)):
            raise TypeError(f"`id` must be an integer. Received: {describe(id)}.")
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
                f"No vocabulary has been set; cannot look up token {describe(token)}."
            )
        id = state.vocabulary.get(token) if isinstance(token, str) else None
        if id is None:
            raise ValueError(f"Token {describe(token)} is not in the vocabulary.")
        return id

    def save_assets(self, dir_path):
        """Write `vocabulary.json` and `merges.txt` into `dir_path`.

        Each file is written atomically. The merges file has Transformers'
        `#version: 0.2` header, which KerasHub, Transformers and this
        tokenizer all skip when reading.
        """
        state = self._check_vocabulary()
        os.makedirs(dir_path, exist_ok=True)
        write_vocabulary(os.path.join(dir_path, VOCAB_FILENAME), state.vocabulary)
        write_merges(os.path.join(dir_path, MERGES_FILENAME), state.merges)

    def load_assets(self, dir_path):
        """Read `vocabulary.json` and `merges.txt` from `dir_path`."""
        self.set_vocabulary_and_merges(
            os.path.join(dir_path, VOCAB_FILENAME),
            os.path.join(dir_path, MERGES_FILENAME),
        )

    # ------------------------------------------------------------------
    # Tokenization.

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
        texts, batched = canonicalize_texts(inputs)
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
        texts, batched = canonicalize_texts(inputs)
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
        rows, batched = canonicalize_ids(inputs)
        table = state.id_to_bytes
        size = state.size
        outputs = []
        for row in rows:
            try:
                if row and min(row) < 0:
                    raise IndexError
                text = b"".join([table[i] for i in row])
            except (IndexError, KeyError, TypeError):
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


def _bad_ids_error(row, table, size):
    """The error for the first invalid id of `row`."""
    for id in row:
        if isinstance(id, (bool, np.bool_)) or not isinstance(id, (int, np.integer)):
            return TypeError(
                f"Token ids must be integers. Received {describe(id)} of "
                f"type {type(id).__name__}."
            )
        if (
            not (0 <= id < size)
            or (table.get(id) if isinstance(table, dict) else table[id]) is None
        ):
            return ValueError(
                f"Token id {id} is outside the vocabulary (valid ids: 0 to "
                f"{size - 1}, vocabulary holes excluded). Check the ids or "
                "use the tokenizer of the model that produced them."
            )
    return ValueError(f"Invalid token ids: {describe(row)}.")
