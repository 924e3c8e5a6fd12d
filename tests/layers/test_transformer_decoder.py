import keras
import numpy as np
import pytest

from gpt2_lib.layers import TransformerDecoder
from gpt2_lib.layers import causal_attention_mask


def numpy_block(block, x, mask):
    """GPT-2's block in NumPy, from the layer's own weights."""

    def layer_norm(h, ln):
        mean = h.mean(-1, keepdims=True)
        var = h.var(-1, keepdims=True)
        gamma, beta = (keras.ops.convert_to_numpy(w) for w in (ln.gamma, ln.beta))
        return (h - mean) / np.sqrt(var + ln.epsilon) * gamma + beta

    def weights(dense):
        return (keras.ops.convert_to_numpy(dense.kernel), keras.ops.convert_to_numpy(dense.bias))

    attention = block._self_attention_layer
    h = layer_norm(x, block._self_attention_layer_norm)
    q, k, v = (
        np.einsum("btd,dnh->btnh", h, w) + b
        for w, b in map(weights, (attention.query_dense, attention.key_dense, attention.value_dense))
    )
    logits = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(mask, logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attended = np.einsum("bnqk,bknh->bqnh", probs, v)
    w, b = weights(attention.output_dense)
    x = x + np.einsum("bqnh,nhd->bqd", attended, w) + b
    h = layer_norm(x, block._feedforward_layer_norm)
    w1, b1 = weights(block._feedforward_intermediate_dense)
    w2, b2 = weights(block._feedforward_output_dense)
    h = h @ w1 + b1
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    return x + h @ w2 + b2


def test_block_matches_numpy_reference():
    block = TransformerDecoder(num_heads=2, intermediate_dim=16, kernel_initializer="random_normal")
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    mask = keras.ops.convert_to_numpy(causal_attention_mask(np.ones((2, 5), "int32")))
    out = keras.ops.convert_to_numpy(block(x, mask))
    np.testing.assert_allclose(out, numpy_block(block, x, mask), atol=1e-5)


def test_kerashub_attribute_names():
    block = TransformerDecoder(num_heads=2, intermediate_dim=16)
    block.build((None, None, 8))
    assert tuple(block._self_attention_layer.query_dense.kernel.shape) == (8, 2, 4)
    assert tuple(block._self_attention_layer.output_dense.kernel.shape) == (2, 4, 8)
    for name in (
        "_self_attention_layer_norm",
        "_feedforward_intermediate_dense",
        "_feedforward_output_dense",
        "_feedforward_layer_norm",
    ):
        assert hasattr(block, name)


def test_heads_must_divide_hidden():
    block = TransformerDecoder(num_heads=3, intermediate_dim=16)
    with pytest.raises(ValueError, match="hidden_dim=8 is not divisible by num_heads=3"):
        block.build((None, None, 8))


def test_config_round_trip():
    block = TransformerDecoder(num_heads=2, intermediate_dim=16, dropout=0.2, name="b")
    clone = TransformerDecoder.from_config(block.get_config())
    assert clone.get_config() == block.get_config()
