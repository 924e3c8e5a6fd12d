"""CachedMultiHeadAttention against a NumPy reference, cached and compiled."""

import keras
import numpy as np
import pytest

from gpt2_lib.layers import CachedMultiHeadAttention
from gpt2_lib.backends import attention as attention_kernel
from gpt2_lib.layers import causal_attention_mask

HEADS, HEAD_DIM, HIDDEN = 2, 4, 8


def make_layer(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM, **kwargs)
    layer.build((None, None, HIDDEN))
    rng = np.random.default_rng(seed)
    for weight in layer.weights:  # random biases too, so a wrong mapping shows
        weight.assign(rng.standard_normal(tuple(weight.shape)).astype("float32") * 0.5)
    return layer


def reference(layer, x, mask):
    """Multi-head causal attention written out in NumPy (float64)."""
    w = {d: [np.asarray(keras.ops.convert_to_numpy(v), "float64") for v in d.weights]
         for d in (layer.query_dense, layer.key_dense, layer.value_dense, layer.output_dense)}
    x = np.asarray(x, "float64")
    q, k, v = (np.einsum("btd,dnh->btnh", x, w[d][0]) + w[d][1]
               for d in (layer.query_dense, layer.key_dense, layer.value_dense))
    logits = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(HEAD_DIM)
    seq = x.shape[1]
    allowed = np.asarray(mask, bool) & np.tril(np.ones((seq, seq), bool))
    logits = np.where(allowed, logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attended = np.einsum("bnqk,bknh->bqnh", probs, v)
    kernel, bias = w[layer.output_dense]
    return np.einsum("bqnh,nhd->bqd", attended, kernel) + bias


def inputs(batch=2, seq=10, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, seq, HIDDEN)).astype("float32")


def test_weight_layout_and_names():
    layer = make_layer()
    assert [layer.query_dense.name, layer.key_dense.name, layer.value_dense.name,
            layer.output_dense.name] == ["query", "key", "value", "attention_output"]
    assert tuple(layer.query_dense.kernel.shape) == (HIDDEN, HEADS, HEAD_DIM)
    assert tuple(layer.output_dense.kernel.shape) == (HEADS, HEAD_DIM, HIDDEN)


@pytest.mark.parametrize("block_size", [None, 4])
def test_matches_reference_with_padding(block_size, monkeypatch):
    if block_size:  # 10 tokens in blocks of 4: the blocked causal path
        monkeypatch.setattr(attention_kernel, "CAUSAL_BLOCK_SIZE", block_size)
    layer = make_layer()
    x = inputs()
    mask = causal_attention_mask(np.array([[1] * 10, [0] * 3 + [1] * 7]))
    actual = keras.ops.convert_to_numpy(layer(x, mask))
    np.testing.assert_allclose(actual, reference(layer, x, mask), atol=1e-4)


def test_causal_without_cache_even_if_mask_allows_future():
    layer = make_layer()
    x = inputs()
    mask = np.ones((2, 1, 10, 10), bool)
    actual = keras.ops.convert_to_numpy(layer(x, mask))
    np.testing.assert_allclose(actual, reference(layer, x, mask), atol=1e-4)
    changed = x.copy()
    changed[:, 6:] += 1.0  # the future must not move earlier outputs
    moved = keras.ops.convert_to_numpy(layer(changed, mask))
    np.testing.assert_allclose(moved[:, :6], actual[:, :6], atol=1e-5)


def test_bfloat16_path_is_causal_too():
    layer = make_layer(dtype="bfloat16")
    x = inputs()
    mask = np.ones((2, 1, 10, 10), bool)
    actual = keras.ops.convert_to_numpy(keras.ops.cast(layer(x, mask), "float32"))
    expected = reference(layer, x, mask)
    np.testing.assert_allclose(actual, expected, atol=0.15 * np.abs(expected).max())


@pytest.mark.parametrize("window", [None, 2], ids=["one_window", "windows_of_2"])
def test_cached_decoding_equals_full_forward(window, monkeypatch):
    """Prefill then one token at a time; with windows of 2, each step attends
    over the cache up to its window (`windowed_attention`)."""
    if window is not None:
        monkeypatch.setattr(attention_kernel, "CACHE_WINDOW", window)
    layer = make_layer()
    x = inputs(seq=7)
    padding = np.array([[1] * 7, [0, 0] + [1] * 5])
    full = keras.ops.convert_to_numpy(layer(x, causal_attention_mask(padding)))
    cache = np.zeros((2, 2, HEADS, 7, HEAD_DIM), "float32")
    out, cache = layer(
        x[:, :4], causal_attention_mask(padding, 0, 4), cache=cache, cache_update_index=0
    )
    outputs = [keras.ops.convert_to_numpy(out)]
    for index in range(4, 7):
        out, cache = layer(
            x[:, index : index + 1],
            causal_attention_mask(padding, index, 1),
            cache=cache,
            cache_update_index=index,
        )
        outputs.append(keras.ops.convert_to_numpy(out))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-5)
    # Keys then values, heads before positions: (batch, 2, heads, max_length, head_dim).
    cache = keras.ops.convert_to_numpy(cache)
    assert cache.shape == (2, 2, HEADS, 7, HEAD_DIM)
    keys = keras.ops.convert_to_numpy(layer.key_dense(x))  # (batch, 7, heads, head_dim)
    values = keras.ops.convert_to_numpy(layer.value_dense(x))
    np.testing.assert_allclose(cache[:, 0], keys.transpose(0, 2, 1, 3), atol=1e-6)
    np.testing.assert_allclose(cache[:, 1], values.transpose(0, 2, 1, 3), atol=1e-6)


def test_compiled_predict_equals_eager(monkeypatch):
    monkeypatch.setattr(attention_kernel, "CAUSAL_BLOCK_SIZE", 4)
    layer = make_layer()
    hidden = keras.Input((10, HIDDEN))
    padding = keras.Input((10,), dtype="int32")
    mask = keras.layers.Lambda(causal_attention_mask)(padding)
    model = keras.Model([hidden, padding], layer(hidden, mask))
    x = inputs()
    padding_mask = np.array([[1] * 10, [1] * 6 + [0] * 4], "int32")
    compiled = model.predict_on_batch([x, padding_mask])  # jit / tf.function
    expected = reference(layer, x, keras.ops.convert_to_numpy(causal_attention_mask(padding_mask)))
    np.testing.assert_allclose(compiled, expected, atol=1e-4)


def test_get_config_round_trip():
    layer = make_layer(dropout=0.1)
    clone = CachedMultiHeadAttention.from_config(layer.get_config())
    assert (clone.num_heads, clone.key_dim, clone.dropout) == (HEADS, HEAD_DIM, 0.1)


def test_writing_into_the_whole_cache_equals_a_slot():
    """`cache_layer`: the same outputs and entries as with the layer's own
    cache, written into slot 1 of a 3-layer cache; the other slots
    untouched."""
    layer = make_layer()
    x = inputs(seq=7)
    padding = np.array([[1] * 7, [0, 0] + [1] * 5])
    rng = np.random.default_rng(3)
    whole = rng.standard_normal((2, 3, 2, HEADS, 7, HEAD_DIM)).astype("float32")
    own = whole[:, 1].copy()
    for start, length in [(0, 4), (4, 1), (5, 1)]:
        mask = causal_attention_mask(padding, start, length)
        step = x[:, start : start + length]
        out_own, own = layer(step, mask, cache=own, cache_update_index=start)
        out_whole, whole_after = layer(step, mask, cache=whole, cache_update_index=start, cache_layer=1)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(out_whole), keras.ops.convert_to_numpy(out_own))
        whole_after = keras.ops.convert_to_numpy(whole_after)
        np.testing.assert_array_equal(whole_after[:, 1], keras.ops.convert_to_numpy(own))
        np.testing.assert_array_equal(whole_after[:, [0, 2]], whole[:, [0, 2]])
        whole = whole_after
