"""attention_kernel.dot_product_attention against a NumPy reference."""

import keras
import numpy as np
import pytest

from gpt2_lib.backends import attention as attention_kernel
from gpt2_lib.backends.attention import dot_product_attention
from tests.backends.gradients import squared_sum_gradients


def reference_attention(query, key, value, mask, scale, is_causal):
    """Softmax attention written out in NumPy (float64)."""
    query, key, value = (np.asarray(x, "float64") for x in (query, key, value))
    logits = np.einsum("bqnh,bknh->bnqk", query, key) * scale
    allowed = np.ones(logits.shape, bool)
    if mask is not None:
        allowed &= np.asarray(mask, bool)
    if is_causal:
        allowed &= np.tril(np.ones(logits.shape[-2:], bool))
    logits = np.where(allowed, logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bnqk,bknh->bqnh", probs, value)


def qkv(batch, query_length, key_length, heads=3, head_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    query = rng.standard_normal((batch, query_length, heads, head_dim)).astype("float32")
    key = rng.standard_normal((batch, key_length, heads, head_dim)).astype("float32")
    value = rng.standard_normal((batch, key_length, heads, head_dim)).astype("float32")
    return query, key, value


def padded_causal_mask(padding):
    """(batch, 1, seq, seq): causal, real keys only, a query always sees itself."""
    padding = np.asarray(padding, bool)
    seq = padding.shape[1]
    causal = np.tril(np.ones((seq, seq), bool))
    mask = causal[None] & (padding[:, None, :] | np.eye(seq, dtype=bool)[None])
    return mask[:, None]


def check(query, key, value, mask, is_causal, scale=0.3):
    actual = dot_product_attention(
        query, key, value, mask=mask, scale=scale, is_causal=is_causal
    )
    expected = reference_attention(query, key, value, mask, scale, is_causal)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(actual), expected, atol=2e-5)


@pytest.fixture(params=[None, 4], ids=["default_block", "block_4"])
def block_size(request, monkeypatch):
    """Run each test with the default block size and with blocks of 4 (so
    10-token sequences take the blocked path, with a partial last block)."""
    if request.param is not None:
        monkeypatch.setattr(attention_kernel, "CAUSAL_BLOCK_SIZE", request.param)
    return request.param


def test_causal_without_mask(block_size):
    check(*qkv(2, 10, 10), mask=None, is_causal=True)


def test_causal_with_full_mask(block_size):
    # A mask that removes nothing: the PyTorch path drops it for is_causal.
    check(*qkv(2, 10, 10), mask=np.ones((2, 1, 10, 10), bool), is_causal=True)


@pytest.mark.parametrize(
    "padding",
    [
        [[1] * 10, [1] * 7 + [0] * 3],  # right padding
        [[0] * 4 + [1] * 6, [1] * 10],  # left padding
        [[0] * 9 + [1], [1, 0] * 5],  # almost all padding, holes
    ],
    ids=["right", "left", "holes"],
)
def test_causal_with_padded_batch(padding, block_size):
    check(*qkv(2, 10, 10, seed=1), mask=padded_causal_mask(padding), is_causal=True)


def test_causal_with_key_padding_mask_broadcast_over_queries(block_size):
    padding = np.array([[1] * 10, [1] * 6 + [0] * 4], bool)
    check(*qkv(2, 10, 10, seed=2), mask=padding[:, None, None, :], is_causal=True)


def test_is_causal_applies_on_top_of_a_non_causal_mask(block_size):
    # The mask lets every query see every key; is_causal must still hide the future.
    query, key, value = qkv(1, 10, 10, seed=3)
    mask = np.ones((1, 1, 10, 10), bool)
    full = dot_product_attention(query, key, value, mask=mask, is_causal=True)
    # The first query sees only the first key, so its output is that value.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(full)[:, 0], value[:, 0], atol=1e-6
    )


def test_not_causal_uses_mask_only_for_cached_decoding():
    # One new query at cache position 4 of 6, keys 0..4 real.
    query, key, value = qkv(2, 1, 6, seed=4)
    mask = np.array([[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0]], bool)[:, None, None, :]
    check(query, key, value, mask=mask, is_causal=False)


def test_not_causal_without_mask_is_full_attention():
    check(*qkv(2, 5, 7, seed=5), mask=None, is_causal=False)


def test_default_scale_is_inverse_sqrt_head_dim():
    query, key, value = qkv(1, 6, 6, head_dim=16, seed=6)
    actual = dot_product_attention(query, key, value, is_causal=True)
    expected = reference_attention(query, key, value, None, 0.25, True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(actual), expected, atol=2e-5)


def test_matches_keras_dot_product_attention():
    query, key, value = qkv(2, 10, 10, seed=7)
    mask = padded_causal_mask([[1] * 10, [0] * 3 + [1] * 7])
    expected = keras.ops.dot_product_attention(query, key, value, mask=mask, scale=0.3)
    actual = dot_product_attention(query, key, value, mask=mask, scale=0.3, is_causal=True)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(actual), keras.ops.convert_to_numpy(expected), atol=2e-5
    )


@pytest.mark.skipif(keras.config.backend() != "jax", reason="XLA's in-place cache updates (JAX)")
def test_whole_cache_updates_save_a_copy_of_the_cache(monkeypatch):
    """JAX's generate function holds at least one whole cache fewer in XLA's
    temporaries when blocks write into the whole cache than when each block's
    slot is copied out and every slot restacked."""
    from gpt2_lib.models import GPT2Backbone
    from gpt2_lib.models import GPT2CausalLM
    from gpt2_lib.models.gpt2 import gpt2_backbone

    keras.utils.set_random_seed(0)
    config = dict(vocabulary_size=256, num_layers=4, num_heads=4, hidden_dim=128,
                  intermediate_dim=256, max_sequence_length=256, dropout=0.0)
    lm = GPT2CausalLM(GPT2Backbone(**config), preprocessor=None)
    lm.compile(sampler="greedy")
    batch, length = 8, 256
    inputs = {"token_ids": np.ones((batch, length), "int32"), "padding_mask": np.zeros((batch, length), bool)}
    inputs["padding_mask"][:, :4] = True

    def temporaries(whole):
        monkeypatch.setattr(gpt2_backbone, "updates_whole_cache", lambda: whole)
        lm.generate_function = None
        return lm.make_generate_function().lower(inputs).compile().memory_analysis().temp_size_in_bytes

    cache = 2 * config["num_layers"] * batch * length * config["hidden_dim"] * 4
    per_slot, whole = temporaries(False), temporaries(True)
    assert per_slot - whole >= cache, (per_slot, whole, cache)


# === windowed_attention: a cached step reads only the window it needs ===


def _cached_step(max_length=10, key_end=5, seed=0):
    """One query at `key_end - 1` over a cache whose slots past `key_end` hold
    NaN (as unwritten memory might): keys past the window must never be read."""
    query, key, value = qkv(2, 1, max_length, seed=seed)
    cache = np.stack([key, value])  # (2, batch, max_length, heads, head_dim)
    mask = np.zeros((2, 1, 1, max_length), bool)
    mask[..., :key_end] = True
    mask[1, ..., 0] = key_end == 1  # padding on row 1 (a query always sees itself)
    expected = reference_attention(query, key[:, :key_end], value[:, :key_end], mask[..., :key_end], 0.3, False)
    return query, cache, mask, expected


def _attend(query, cache, mask, end):
    return dot_product_attention(query, cache[0][:, :end], cache[1][:, :end], mask=mask[..., :end], scale=0.3)


def _compiled(function):
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        return jax.jit(function)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, jit_compile=True)
    return function


@pytest.mark.parametrize("key_end", [1, 4, 5, 8, 9, 10])
def test_windowed_attention_equals_attention_over_the_keys_it_needs(key_end, monkeypatch):
    """Windows of 4 over 10 slots (ends 4, 8, 10): whatever the window, the
    output is attention over keys [0, key_end), compiled with a tensor
    `key_end`; slots past the window hold NaN and are never read."""
    monkeypatch.setattr(attention_kernel, "CACHE_WINDOW", 4)
    query, cache, mask, expected = _cached_step(key_end=key_end)
    window_end = min(-(-key_end // 4) * 4, 10)
    cache[:, :, window_end:] = np.nan
    step = _compiled(
        lambda query, cache, mask, key_end: attention_kernel.windowed_attention(
            _attend, query, cache, mask, key_end
        )
    )
    actual = step(query, cache, mask, keras.ops.convert_to_tensor(key_end, "int32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(actual), expected, atol=2e-5)


def test_windowed_attention_attends_over_windows_not_all_slots(monkeypatch):
    """The `end`s `attend` is called with: on torch the exact key count; on
    XLA one branch per window (multiples of CACHE_WINDOW, then max_length)."""
    monkeypatch.setattr(attention_kernel, "CACHE_WINDOW", 4)
    query, cache, mask, _ = _cached_step(key_end=5)
    ends = []

    def spy(query, cache, mask, end):
        ends.append(end)
        return _attend(query, cache, mask, end)

    def step(query, cache, mask, key_end):
        return attention_kernel.windowed_attention(spy, query, cache, mask, key_end)

    _compiled(step)(query, cache, mask, keras.ops.convert_to_tensor(5))  # traces every branch
    if keras.config.backend() == "torch":
        assert ends == [5]
    else:
        assert sorted(set(ends)) == [4, 8, 10]
    ends.clear()
    monkeypatch.setattr(attention_kernel, "CACHE_WINDOW", 16)  # one window: no branches
    _compiled(lambda *args: step(*args))(query, cache, mask, keras.ops.convert_to_tensor(5))  # traced anew
    assert ends == ([5] if keras.config.backend() == "torch" else [10])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_attends_over_windows_in_lower_precision(dtype, monkeypatch):
    """On torch, float32 steps attend over the exact keys; lower precisions
    over windows of `TORCH_CACHE_WINDOW` (oneDNN keeps a kernel per shape)."""
    monkeypatch.setattr(attention_kernel, "TORCH_CACHE_WINDOW", 4)
    query, cache, mask, _ = _cached_step(key_end=5)
    query = keras.ops.cast(query, dtype)
    ends = []

    def spy(query, cache, mask, end):
        ends.append(end)
        return query

    for key_end in (1, 4, 5, 9, 10):
        attention_kernel.windowed_attention(spy, query, cache, mask, key_end)
    if keras.config.backend() != "torch":
        return
    assert ends == ([1, 4, 5, 9, 10] if dtype == "float32" else [4, 4, 8, 10, 10])


# === cached_attention: queries over a heads-first cache ===


def _heads_first(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 1, 3))


@pytest.mark.parametrize("query_length", [1, 4])
def test_cached_attention_equals_reference(query_length):
    """Queries over a `(batch, heads, slots, head_dim)` cache, read as a
    strided slice of a bigger cache (as the layers pass it), with padding:
    attention over the same keys in the reference."""
    query, key, value = qkv(2, query_length, 9, seed=4)
    mask = np.ones((2, 1, query_length, 9), bool)
    mask[1, ..., :3] = False  # left padding on row 1
    whole = np.stack([_heads_first(key), _heads_first(value)], axis=1)  # (batch, 2, heads, 9, head_dim)
    whole = np.concatenate([whole, np.full_like(whole[:, :, :, :3], np.nan)], axis=3)  # unwritten slots
    whole = keras.ops.convert_to_tensor(whole)
    actual = attention_kernel.cached_attention(query, whole[:, 0, :, :9], whole[:, 1, :, :9], mask, 0.3)
    expected = reference_attention(query, key, value, mask, 0.3, False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(actual), expected, atol=2e-5)


def test_cached_attention_gradients_equal_the_ops_formula():
    """The backend's form (torch: SDPA) has the gradients of the formula
    written with `keras.ops`, for queries, keys and values."""
    query, key, value = qkv(2, 3, 6, seed=5)
    keys, values = _heads_first(key), _heads_first(value)
    mask = np.tril(np.ones((3, 6), bool), k=3)[None, None]

    def formula(query, keys, values):
        logits = keras.ops.einsum("bqnh,bnkh->bnqk", query, keys) * 0.3
        probs = keras.ops.softmax(keras.ops.where(mask, logits, -1e9), axis=-1)
        return keras.ops.einsum("bnqk,bnkh->bqnh", probs, values)

    actual = squared_sum_gradients(
        lambda q, k, v: attention_kernel.cached_attention(q, k, v, mask, 0.3), query, keys, values
    )
    expected = squared_sum_gradients(formula, query, keys, values)
    for ours, theirs in zip(actual, expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs), atol=1e-5)
