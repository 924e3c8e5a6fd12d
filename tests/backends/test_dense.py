"""`backends.dense`: the same results as the Keras layers, float and int8."""

import keras
import numpy as np
import pytest

from gpt2_lib.backends import dense as dense_module
from gpt2_lib.backends.dense import dense
from gpt2_lib.backends.dense import dense_on_rows
from gpt2_lib.backends.dense import reverse_embedding

XLA = keras.config.backend() in ("jax", "tensorflow")


def _layers():
    keras.utils.set_random_seed(0)
    query = keras.layers.EinsumDense("btd,dnh->btnh", (None, 4, 8), bias_axes="nh")
    query.build((None, None, 32))
    output = keras.layers.EinsumDense("btnh,nhd->btd", (None, 32), bias_axes="d")
    output.build((None, None, 4, 8))
    mlp = keras.layers.Dense(64)
    mlp.build((None, 32))
    rng = np.random.default_rng(1)
    for layer in (query, output, mlp):
        layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))
    inputs = {
        "query": rng.normal(size=(2, 5, 32)).astype("float32"),
        "output": rng.normal(size=(2, 5, 4, 8)).astype("float32"),
        "mlp": rng.normal(size=(10, 32)).astype("float32"),
    }
    return {"query": query, "output": output, "mlp": mlp}, inputs


@pytest.mark.parametrize("name", ["query", "output", "mlp"])
@pytest.mark.parametrize("mode", [None, "int8"])
def test_dense_equals_the_layer(name, mode):
    layers, inputs = _layers()
    layer, x = layers[name], inputs[name]
    if mode:
        layer.quantize(mode)
    assert dense_module.supports_int8(layer) == (XLA and mode == "int8")
    expected = keras.ops.convert_to_numpy(layer(x))
    actual = keras.ops.convert_to_numpy(dense(layer, x))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


def test_int8_gradient_equals_keras():
    layers, inputs = _layers()
    layer = layers["mlp"]
    layer.quantize("int8")
    x = inputs["mlp"]
    if keras.config.backend() == "jax":
        import jax

        def loss(fn):
            return lambda x: (fn(x) ** 2).sum()

        ours = jax.grad(loss(lambda x: dense(layer, x)))(x)
        theirs = jax.grad(loss(layer))(x)
    elif keras.config.backend() == "tensorflow":
        import tensorflow as tf

        def grad(fn):
            t = tf.constant(x)
            with tf.GradientTape() as tape:
                tape.watch(t)
                value = tf.reduce_sum(fn(t) ** 2)
            return tape.gradient(value, t)

        ours, theirs = grad(lambda t: dense(layer, t)), grad(layer)
    else:
        import torch

        def grad(fn):
            t = torch.tensor(x, requires_grad=True)
            (fn(t) ** 2).sum().backward()
            return t.grad

        ours, theirs = grad(lambda t: dense(layer, t)), grad(layer)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("mode", [None, "int8"])
def test_reverse_embedding_equals_the_layer(mode):
    keras.utils.set_random_seed(0)
    layer = keras.layers.ReversibleEmbedding(50, 32)
    layer.build((None, None))
    if mode:
        layer.quantize(mode)
    hidden = np.random.default_rng(2).normal(size=(2, 3, 32)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reverse_embedding(layer, hidden)),
        keras.ops.convert_to_numpy(layer(hidden, reverse=True)),
        rtol=1e-6, atol=1e-6,
    )


def test_dense_on_rows_keeps_leading_axes():
    layers, inputs = _layers()
    x = inputs["query"]
    out = dense_on_rows(layers["mlp"], x)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(out), keras.ops.convert_to_numpy(layers["mlp"](x)), atol=1e-6
    )


@pytest.mark.parametrize("rows", [1, 2, 8])
def test_int8_products_are_exact(rows):
    """The int8 products are exact int32 sums, so the outputs equal Keras' bit for bit.

    One row (batch-1 decoding) takes a padded path on JAX; kernels of
    GPT-2's widths (768 in, 3072 in) with saturated int8 values.
    """
    rng = np.random.default_rng(3)
    for in_features, units in ((768, 48), (3072, 40)):
        keras.utils.set_random_seed(0)
        layer = keras.layers.Dense(units)
        layer.build((None, in_features))
        layer.quantize("int8")
        kernel = rng.integers(-127, 128, size=(in_features, units)).astype("int8")
        kernel[:, 0] = 127  # the largest sums an int8 product can reach
        layer._kernel.assign(kernel)
        # Positive inputs: column 0's sum nears in_features * 127 * 127.
        x = np.abs(rng.normal(size=(rows, in_features))).astype("float32")
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(dense(layer, x)), keras.ops.convert_to_numpy(layer(x))
        )


@pytest.mark.parametrize("rows", [1, 3])
def test_int8_reverse_embedding_exact_and_gradient(rows):
    keras.utils.set_random_seed(0)
    layer = keras.layers.ReversibleEmbedding(300, 64)
    layer.build((None, None))
    layer.quantize("int8")
    hidden = np.random.default_rng(4).normal(size=(rows, 1, 64)).astype("float32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(reverse_embedding(layer, hidden)),
        keras.ops.convert_to_numpy(layer(hidden, reverse=True)),
    )
    if keras.config.backend() == "jax":
        import jax

        # Keras' int8 reverse embedding has no input gradient; ours is the
        # straight-through one of `dense`: upstream @ dequantized embeddings.
        ours = jax.grad(lambda h: (reverse_embedding(layer, h) ** 2).sum())(hidden)
        logits = np.asarray(reverse_embedding(layer, hidden))
        table = np.asarray(layer._embeddings, "float32") / np.asarray(
            layer.embeddings_scale
        ).reshape(-1, 1)
        np.testing.assert_allclose(np.asarray(ours), 2 * logits @ table, rtol=1e-5, atol=1e-5)
