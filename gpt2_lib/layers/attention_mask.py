"""The causal + padding attention mask shared by every decoder block."""

import keras
from keras import ops


def causal_attention_mask(padding_mask, query_start=0, query_length=None):
    """Boolean `(batch, 1, query, key)` mask for causal self-attention.

    Query `t` (absolute position `query_start + t` in the key sequence) may
    attend to key `s` when `s <= query_start + t` and key `s` is a real token.
    Every query may always attend to itself, so a padding query never has an
    all-masked row (which would produce NaN in the softmax and leak into the
    real tokens through the next layer's values).

    Args:
        padding_mask: `(batch, key_length)` mask of real tokens.
        query_start: int or scalar tensor, the position of the first query
            (nonzero when decoding with a key/value cache).
        query_length: number of queries; defaults to `key_length`.

    Returns:
        A `(batch, 1, query_length, key_length)` boolean tensor.
    """
    key_length = ops.shape(padding_mask)[1]
    if query_length is None:
        query_length = key_length
    query_index = ops.arange(query_length, dtype="int32") + ops.cast(query_start, "int32")
    key_index = ops.arange(key_length, dtype="int32")
    causal = key_index[None, :] <= query_index[:, None]  # (query, key)
    itself = key_index[None, :] == query_index[:, None]  # (query, key)
    key_is_token = ops.cast(padding_mask, "bool")[:, None, None, :]  # (batch, 1, 1, key)
    return ops.logical_and(
        causal[None, None, :, :], ops.logical_or(key_is_token, itself[None, None, :, :])
    )


class CausalAttentionMask(keras.layers.Layer):
    """`causal_attention_mask` as a layer, for use in a functional graph.

    Example:
    >>> tuple(CausalAttentionMask()(np.array([[1, 1, 0]])).shape)
    (1, 1, 3, 3)
    """

    def call(self, padding_mask):
        return causal_attention_mask(padding_mask)

    def compute_output_spec(self, padding_mask):
        batch, length = padding_mask.shape
        return keras.KerasTensor((batch, 1, length, length), dtype="bool")
