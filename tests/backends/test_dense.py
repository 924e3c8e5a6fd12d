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
