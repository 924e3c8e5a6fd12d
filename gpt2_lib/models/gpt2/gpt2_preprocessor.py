"""GPT-2 preprocessor: tokenize, add start/end tokens, pad, mask."""

import keras
import numpy as np

from gpt2_lib.models.gpt2.gpt2_backbone import GPT2Backbone
from gpt2_lib.models.preprocessor import PackingPreprocessor
from gpt2_lib.models.preprocessor import check_sequence_length
from gpt2_lib.models.preprocessor import pack_start_end
from gpt2_lib.tokenizers.gpt2_tokenizer import GPT2Tokenizer


@keras.saving.register_keras_serializable(package="gpt2_lib")
class GPT2Preprocessor(PackingPreprocessor):
    """GPT-2 preprocessor: token ids and padding mask for the backbone.

    Tokenizes strings with a `GPT2Tokenizer`, adds `"<|endoftext|>"` as
    start and end token, and pads (with `"<|endoftext|>"`) or truncates to
    `sequence_length`. Returns `{"token_ids": int32, "padding_mask": bool}`,
    packed with `y` and `sample_weight` (passed through unchanged) by
    `keras.utils.pack_x_y_sample_weight`. A single string gives arrays of
    shape `(sequence_length,)`, a batch `(batch, sequence_length)`.

    For next-token training use `GPT2CausalLMPreprocessor`, which also makes
    the labels.

    Args:
        tokenizer: A `gpt2_lib.models.GPT2Tokenizer`.
        sequence_length: int. The length of the packed inputs. Defaults to
            `1024`.
        add_start_token: bool. Whether to prepend the start token. Defaults
            to `True`.
        add_end_token: bool. Whether to append the end token. Defaults to
            `True`.

    Call arguments:
        x: A string or a batch of strings.
        y: Labels, passed through (lists become NumPy arrays).
        sample_weight: Label weights, passed through (lists become NumPy
            arrays).
        sequence_length: int. Overrides the configured `sequence_length`.

    Example:

    >>> from gpt2_lib.models import GPT2Preprocessor
    >>> from gpt2_lib.tokenizers import GPT2Tokenizer
    >>> tokenizer = GPT2Tokenizer.from_preset("gpt2_tiny_shakespeare_en")
    >>> preprocessor = GPT2Preprocessor(tokenizer, sequence_length=8)
    >>> x = preprocessor("To be, or")
    >>> x["token_ids"].tolist()  # 2256 is "<|endoftext|>" in this vocabulary.
    [2256, 51, 78, 307, 11, 393, 2256, 2256]
    >>> x["padding_mask"].tolist()
    [True, True, True, True, True, True, True, False]
    >>> x, y = preprocessor(["Good", "Bad"], [1, 0])
    >>> x["token_ids"].shape, y.tolist()
    ((2, 8), [1, 0])
    """

    backbone_cls = GPT2Backbone
    tokenizer_cls = GPT2Tokenizer

    def call(self, x, y=None, sample_weight=None, sequence_length=None):
        if sequence_length is None:
            sequence_length = self.sequence_length
        sequence_length = check_sequence_length(sequence_length)
        tokenizer = self._require_tokenizer()
        rows, batched = self._tokenize(x)
        token_ids, padding_mask = pack_start_end(
            rows,
            sequence_length,
            start_id=tokenizer.start_token_id,
            end_id=tokenizer.end_token_id,
            pad_id=tokenizer.pad_token_id,
            add_start=self.add_start_token,
            add_end=self.add_end_token,
        )
        if not batched:
            token_ids, padding_mask = token_ids[0], padding_mask[0]
        x = {"token_ids": token_ids, "padding_mask": padding_mask}
        if isinstance(y, (list, tuple)):
            y = np.asarray(y)
        if isinstance(sample_weight, (list, tuple)):
            sample_weight = np.asarray(sample_weight)
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
