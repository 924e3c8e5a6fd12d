"""Checks and padding of `CausalLM.generate()`'s inputs (NumPy, before compiling)."""

import numpy as np

from gpt2_lib.utils.text_inputs import to_numpy
from gpt2_lib.utils.validation import check_ids


def check_stop_token_ids(stop_token_ids, vocabulary_size):
    """None or a tuple of ints in the vocabulary."""
    if stop_token_ids is None:
        return None
    if isinstance(stop_token_ids, (int, np.integer)) and not isinstance(stop_token_ids, bool):
        stop_token_ids = [stop_token_ids]
    if not isinstance(stop_token_ids, (list, tuple)) or not all(
        isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in stop_token_ids
    ):
        raise ValueError(
            '`stop_token_ids` must be "auto", None, or a list of token ids. '
            f"Received: stop_token_ids={stop_token_ids!r}"
        )
    bad = [int(i) for i in stop_token_ids if not 0 <= i < vocabulary_size]
    if bad:
        raise ValueError(
            f"`stop_token_ids` {bad} are outside the vocabulary [0, {vocabulary_size - 1}]."
        )
    return tuple(int(i) for i in stop_token_ids) or None


def check_max_length(max_length, limit):
    """None, or `max_length` as an int in [2, limit]."""
    if max_length is None:
        return None
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 2:
        raise ValueError(
            f"`max_length` must be an integer >= 2. Received: max_length={max_length!r}"
        )
    if max_length > limit:
        raise ValueError(
            f"max_length={max_length} is longer than this model's "
            f"max_sequence_length={limit}. Pass max_length <= {limit}."
        )
    return int(max_length)


def token_inputs(inputs, max_length, vocabulary_size, limit):
    """Check and batch a token-id dict; pad on the right to `max_length`."""
    unknown = sorted(set(inputs) - {"token_ids", "padding_mask"})
    if "token_ids" not in inputs or unknown:
        raise ValueError(
            "Token inputs to `generate()` must be a dict with 'token_ids' and "
            f"'padding_mask'. Received keys: {sorted(inputs)}."
        )
    token_ids = to_numpy(inputs["token_ids"])
    padding_mask = to_numpy(inputs.get("padding_mask", np.ones_like(token_ids)))
    is_scalar = token_ids.ndim == 1
    if is_scalar:
        token_ids, padding_mask = token_ids[None], padding_mask[None]
    if token_ids.ndim != 2 or token_ids.shape != padding_mask.shape:
        raise ValueError(
            "'token_ids' and 'padding_mask' must have the same shape, (batch, "
            f"length) or (length,). Received {token_ids.shape} and {padding_mask.shape}."
        )
    check_ids(token_ids, "token_ids", vocabulary_size)
    if token_ids.shape[0] == 0:
        raise ValueError("`generate()` got an empty batch of prompts.")
    padding_mask = padding_mask.astype(bool)
    length = token_ids.shape[1]
    if max_length is not None:
        if max_length < length:
            raise ValueError(
                f"max_length={max_length} cannot apply to token inputs of length "
                f"{length}: without a preprocessor, `max_length` only pads the "
                "inputs on the right (room for new tokens). Truncate or re-pad "
                "your inputs, or leave `max_length=None` to fill the given length."
            )
        extra = max_length - length
        token_ids = np.pad(token_ids, [(0, 0), (0, extra)])
        padding_mask = np.pad(padding_mask, [(0, 0), (0, extra)])
        length = max_length
    if length > limit:
        raise ValueError(
            f"Token inputs have length {length}, longer than this model's "
            f"max_sequence_length={limit}."
        )
    lengths = padding_mask.sum(axis=1)
    if (lengths == 0).any():
        row = int(np.argmin(lengths))
        raise ValueError(
            f"Prompt {row} is empty (its padding_mask has no real token). Every "
            "prompt needs at least one token, e.g. the start token."
        )
    row_end = length - np.argmax(padding_mask[:, ::-1], axis=1)
    if (row_end >= length).any():
        row = int(np.argmax(row_end))
        raise ValueError(
            f"Prompt {row} fills the whole length {length}, leaving no room to "
            "generate. Pad the inputs on the right or pass a larger `max_length`."
        )
    return {"token_ids": token_ids.astype("int32"), "padding_mask": padding_mask}, is_scalar


# Compiled generation pads lengths to a multiple of this. Smaller than
# `attention.CACHE_WINDOW`: a short generation keeps a short cache (its
# bytes, and the slots a step attends over while there is one window).
LENGTH_BUCKET = 128


def padded_to_bucket(batch, limit):
    """`batch` padded on the right to a multiple of `LENGTH_BUCKET`, with its `"end"`.

    A compiled generation (JAX, TensorFlow) is a program per input
    shape: padded, every `max_length` in a bucket shares one (GPT-2
    base to 1023 after 1024: 17-21 s of compiling saved). The padded
    slots cost nothing: cached steps attend only over the keys written
    (`backends.attention.windowed_attention`) and generation stops at
    `"end"`.

    Args:
        batch: dict of `"token_ids"` and `"padding_mask"`, `(batch, length)`.
        limit: the model's `max_sequence_length` (no padding past it).

    Returns:
        The dict padded to `(batch, bucket)`, plus `"end"`: `length`.

    Example:
    >>> batch = {"token_ids": np.ones((1, 130), "int32"), "padding_mask": np.ones((1, 130), bool)}
    >>> padded = padded_to_bucket(batch, limit=1024)
    >>> padded["token_ids"].shape, int(padded["end"])
    ((1, 256), 130)
    """
    length = batch["token_ids"].shape[1]
    step = LENGTH_BUCKET  # read per call: tests shrink it
    limit = max(limit, length)
    bucket = min(-(-length // step) * step, limit)
    extra = [[0, 0], [0, bucket - length]]
    return {
        "token_ids": np.pad(to_numpy(batch["token_ids"]), extra),
        "padding_mask": np.pad(to_numpy(batch["padding_mask"]), extra),
        "end": np.array(length, "int32"),
    }
