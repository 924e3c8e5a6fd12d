import keras
import numpy as np

from gpt2_lib.layers import causal_attention_mask


def reference_mask(padding_mask, query_start, query_length):
    batch, key_length = padding_mask.shape
    mask = np.zeros((batch, 1, query_length, key_length), bool)
    for b in range(batch):
        for t in range(query_length):
            q = query_start + t
            for s in range(key_length):
                mask[b, 0, t, s] = s <= q and (padding_mask[b, s] == 1 or s == q)
    return mask


def test_full_sequence_mask():
    padding = np.array([[1, 1, 1, 0], [0, 1, 1, 1]])
    actual = keras.ops.convert_to_numpy(causal_attention_mask(padding))
    np.testing.assert_array_equal(actual, reference_mask(padding, 0, 4))


def test_cached_step_mask():
    padding = np.array([[0, 0, 1, 1, 1, 1]])
    actual = keras.ops.convert_to_numpy(
        causal_attention_mask(padding, query_start=3, query_length=2)
    )
    np.testing.assert_array_equal(actual, reference_mask(padding, 3, 2))


def test_no_row_is_fully_masked():
    padding = np.array([[0, 0, 0, 1]])
    actual = keras.ops.convert_to_numpy(causal_attention_mask(padding))
    assert actual.any(axis=-1).all()
