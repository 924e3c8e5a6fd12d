"""Base class for causal language modeling preprocessors."""

import keras
import numpy as np

from gpt2_lib.models.preprocessor import PackingPreprocessor
from gpt2_lib.models.preprocessor import check_sequence_length
from gpt2_lib.models.preprocessor import pack_start_end
from gpt2_lib.utils.text_inputs import to_numpy


@keras.saving.register_keras_serializable(package="gpt2_lib")
class CausalLMPreprocessor(PackingPreprocessor):
    """Base class for causal language modeling preprocessors.

    Takes a string or a batch of strings, tokenizes them, adds the start and
    end tokens, and pads or truncates to `sequence_length`. Returns
    `(x, y, sample_weight)` for next-token training: `x` is a dict with
    `"token_ids"` (int32) and `"padding_mask"` (bool), `y` holds the token
    ids shifted left by one (the token to predict at each position) and
    `sample_weight` (bool) is `False` where `y` is padding. To get
    `sequence_length` inputs and labels, the text is packed to
    `sequence_length + 1` tokens, then shifted.

    A single string gives arrays without a batch axis; a batch gives arrays
    of shape `(batch, sequence_length)`. All outputs are NumPy arrays.

    `generate_preprocess()` and `generate_postprocess()` serve a causal LM's
    `generate()`: the first packs prompts without the end token, the second
    turns generated ids back into strings.

    Args:
        tokenizer: A `gpt2_lib.tokenizers.Tokenizer` with `start_token_id`,
            `end_token_id` and `pad_token_id`.
        sequence_length: int. The length of the packed inputs. Defaults to
            `1024`.
        add_start_token: bool. Whether to prepend the start token. Also
            applies to `generate_preprocess()`. Defaults to `True`.
        add_end_token: bool. Whether to append the end token. Defaults to
            `True`.

    Call arguments:
        x: A string or a batch of strings (list, 1-D NumPy array, TensorFlow
            string tensor).
        y: Must be `None`: the labels are made from `x`.
        sample_weight: Must be `None`: the weights are made from `x`.
        sequence_length: int. Overrides the configured `sequence_length`.

    Example:

    >>> from gpt2_lib.models import GPT2CausalLMPreprocessor
    >>> preprocessor = GPT2CausalLMPreprocessor.from_preset(
    ...     "gpt2_tiny_shakespeare_en", sequence_length=8
    ... )
    >>> x, y, sample_weight = preprocessor("To be, or not")
    >>> x["token_ids"].tolist()  # 2256 is "<|endoftext|>" in this vocabulary.
    [2256, 51, 78, 307, 11, 393, 407, 2256]
    >>> y.tolist()
    [51, 78, 307, 11, 393, 407, 2256, 2256]
    >>> sample_weight.tolist()
    [True, True, True, True, True, True, True, False]
    >>> prompts = preprocessor.generate_preprocess(["To be"])
    >>> prompts["token_ids"].tolist()
    [[2256, 51, 78, 307, 2256, 2256, 2256, 2256]]
    >>> preprocessor.generate_postprocess(prompts)
    ['To be']
    """

    def _pack(self, rows, sequence_length, add_start, add_end):
        tokenizer = self._require_tokenizer()
        return pack_start_end(
            rows,
            sequence_length,
            start_id=getattr(tokenizer, "start_token_id", None),
            end_id=getattr(tokenizer, "end_token_id", None),
            pad_id=getattr(tokenizer, "pad_token_id", None),
            add_start=add_start,
            add_end=add_end,
        )

    def call(self, x, y=None, sample_weight=None, sequence_length=None):
        if y is not None or sample_weight is not None:
            raise ValueError(
                f"{self.__class__.__name__} makes the labels and sample "
                "weights from `x` (each token's label is the next token), so "
                "`y` and `sample_weight` must be `None`. Received: "
                f"y={y!r}, sample_weight={sample_weight!r}."
            )
        if sequence_length is None:
            sequence_length = self.sequence_length
        sequence_length = check_sequence_length(sequence_length)
        rows, batched = self._tokenize(x)
        # Pack one token more than needed, then shift for the labels.
        token_ids, padding_mask = self._pack(
            rows, sequence_length + 1, self.add_start_token, self.add_end_token
        )
        x = {
            "token_ids": np.ascontiguousarray(token_ids[:, :-1]),
            "padding_mask": np.ascontiguousarray(padding_mask[:, :-1]),
        }
        y = np.ascontiguousarray(token_ids[:, 1:])
        sample_weight = np.ascontiguousarray(padding_mask[:, 1:])
        if not batched:
            x = {key: value[0] for key, value in x.items()}
            y, sample_weight = y[0], sample_weight[0]
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    def generate_preprocess(self, x, sequence_length=None):
        """Convert strings to padded token ids for generation.

        Like calling the preprocessor, but returns only the inputs dict
        (`"token_ids"`, `"padding_mask"`) and never appends the end token,
        as generation continues after the prompt.

        Args:
            x: A string or a batch of strings.
            sequence_length: int. Overrides the configured `sequence_length`.
        """
        if sequence_length is None:
            sequence_length = self.sequence_length
        sequence_length = check_sequence_length(sequence_length)
        rows, batched = self._tokenize(x)
        token_ids, padding_mask = self._pack(
            rows, sequence_length, self.add_start_token, False
        )
        if not batched:
            token_ids, padding_mask = token_ids[0], padding_mask[0]
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def generate_postprocess(self, x):
        """Convert generated token ids back to strings.

        Drops the positions where `padding_mask` is `False` and the
        tokenizer's special tokens (start, end, padding), then detokenizes.

        Args:
            x: A dict with `"token_ids"` and `"padding_mask"`, as NumPy
                arrays, lists or backend tensors, of shape `(sequence_length,)`
                or `(batch, sequence_length)`.

        Returns:
            A string for unbatched inputs, a list of strings for a batch.
        """
        if not isinstance(x, dict) or not {"token_ids", "padding_mask"} <= set(x):
            raise ValueError(
                "`generate_postprocess()` takes a dict with the keys "
                "'token_ids' and 'padding_mask', as returned by "
                f"`generate_preprocess()`. Received: {type(x).__name__}"
                + (f" with keys {sorted(x)}" if isinstance(x, dict) else "")
                + "."
            )
        tokenizer = self._require_tokenizer()
        token_ids = to_numpy(x["token_ids"])
        padding_mask = to_numpy(x["padding_mask"]).astype(bool)
        if token_ids.shape != padding_mask.shape or token_ids.ndim not in (1, 2):
            raise ValueError(
                "`token_ids` and `padding_mask` must have the same 1-D or 2-D "
                f"shape. Received: {token_ids.shape} and "
                f"{padding_mask.shape}."
            )
        keep = padding_mask
        special_ids = getattr(tokenizer, "special_token_ids", [])
        if special_ids:
            keep = keep & ~np.isin(token_ids, special_ids)
        if token_ids.ndim == 1:
            return tokenizer.detokenize(token_ids[keep].tolist())
        rows = [row[mask].tolist() for row, mask in zip(token_ids, keep)]
        if not rows:
            return []
        return tokenizer.detokenize(rows)
