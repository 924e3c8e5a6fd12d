"""GPT-2 tokenizer: byte-level BPE with `<|endoftext|>` as special token."""

import keras

from gpt2_lib.tokenizers.byte_pair_tokenizer import BytePairTokenizer
from gpt2_lib.utils.classproperty import classproperty

END_OF_TEXT = "<|endoftext|>"


@keras.saving.register_keras_serializable(package="gpt2_lib")
class GPT2Tokenizer(BytePairTokenizer):
    """A GPT-2 tokenizer using byte-level Byte-Pair Encoding.

    This tokenizer turns raw strings into the ids of OpenAI's GPT-2 encoding
    (the ids `tiktoken`'s `gpt2` encoding and Transformers' GPT-2 tokenizer
    give), and back. It is based on
    `gpt2_lib.tokenizers.BytePairTokenizer`, and checks that the special
    token `"<|endoftext|>"` (id 50256 in OpenAI's vocabulary) is in the
    vocabulary. That token is kept whole wherever it appears in the text and
    serves as start, end and padding token (`start_token_id`,
    `end_token_id`, `pad_token_id`).

    Note: KerasHub's `GPT2Tokenizer` pads with id 0 (`"!"`); this one pads
    with `"<|endoftext|>"`. Padded positions are masked by the preprocessors
    in both libraries, so training and generation are unaffected.

    Inputs and outputs are plain Python/NumPy: one string gives a `list` of
    ids, a batch of strings a `list` of lists; with `sequence_length` set,
    NumPy arrays padded or truncated to that length.

    The class is also available as `gpt2_lib.models.GPT2Tokenizer` (and in
    KerasHub's layout, `gpt2_lib.models.gpt2.gpt2_tokenizer`).

    Args:
        vocabulary: dict mapping tokens to ids, or the path of a JSON
            vocabulary file (OpenAI's `encoder.json`, Transformers'
            `vocab.json`, KerasHub's `vocabulary.json`).
        merges: list of merge rules, or the path of a merges file (OpenAI's
            `vocab.bpe`, Transformers' or KerasHub's `merges.txt`).
        sequence_length: int. If set, outputs are padded or truncated to this
            length. Defaults to `None`.
        add_prefix_space: bool. Whether to add a space before the text, so
            that the first word is tokenized like the following ones.
            Defaults to `False`.
        unsplittable_tokens: list of strings kept whole. Defaults to
            `["<|endoftext|>"]`.
        **kwargs: other `BytePairTokenizer` arguments (`dtype`, `engine`,
            `name`).

    Examples:

    >>> from gpt2_lib.tokenizers import GPT2Tokenizer
    >>> # The small byte-level BPE shipped with the offline preset.
    >>> tokenizer = GPT2Tokenizer.from_preset("gpt2_tiny_shakespeare_en")
    >>> ids = tokenizer("To be, or not to be")
    >>> tokenizer.detokenize(ids)
    'To be, or not to be'
    >>> tokenizer(["Good night", "sweet prince"]) == [
    ...     tokenizer("Good night"), tokenizer("sweet prince")]
    True
    >>> tokenizer("<|endoftext|>") == [tokenizer.end_token_id]
    True

    >>> # A custom vocabulary: the 256 byte tokens, merged tokens, the
    >>> # end-of-text token.
    >>> from gpt2_lib.tokenizers.byte_level import bytes_to_unicode
    >>> vocab = {token: i for i, token in enumerate(bytes_to_unicode().values())}
    >>> merges = ["Ġ q", "u i", "c k", "ui ck", "Ġq uick", "Ġ f", "o x", "Ġf ox"]
    >>> for rule in merges:
    ...     vocab["".join(rule.split())] = len(vocab)
    >>> vocab["<|endoftext|>"] = len(vocab)
    >>> tokenizer = GPT2Tokenizer(vocabulary=vocab, merges=merges)
    >>> tokenizer("a quick fox.")
    [64, 260, 263, 13]
    >>> tokenizer = GPT2Tokenizer(vocab, merges, sequence_length=6)
    >>> tokenizer("a quick fox.").tolist()
    [64, 260, 263, 13, 264, 264]

    With OpenAI's GPT-2 vocabulary (downloaded):

    ```python
    tokenizer = gpt2_lib.models.GPT2Tokenizer.from_preset("gpt2_base_en")
    tokenizer("The quick brown fox.")  # [464, 2068, 7586, 21831, 13]

    # From OpenAI's or Transformers' files.
    tokenizer = gpt2_lib.models.GPT2Tokenizer(
        vocabulary="encoder.json", merges="vocab.bpe"
    )
    ```
    """

    @classproperty
    def backbone_cls(cls):
        """`GPT2Backbone`, looked up in Keras' registry (`None` until the
        models are imported): the tokenizer imports nothing from models."""
        return keras.saving.get_registered_object("gpt2_lib>GPT2Backbone")

    def __init__(self, vocabulary=None, merges=None, **kwargs):
        # GPT-2 uses "<|endoftext|>" as start, end and padding token.
        self._add_special_token(END_OF_TEXT, "end_token")
        self._add_special_token(END_OF_TEXT, "start_token")
        self._add_special_token(END_OF_TEXT, "pad_token")
        super().__init__(vocabulary=vocabulary, merges=merges, **kwargs)
