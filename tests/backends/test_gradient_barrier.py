"""`gradient_barrier`: identity, exact gradients, and (JAX) no re-fused
residual-gradient chains in the compiled backward."""

import re

import keras
import numpy as np
import pytest

from gpt2_lib.backends.gradient_barrier import gradient_barrier
from gpt2_lib.models.gpt2.gpt2_backbone import GPT2Backbone

BACKEND = keras.config.backend()


def value_and_gradient(fn, x):
    """`fn(x)` and d sum(fn(x)) / dx, on the current backend."""
    if BACKEND == "jax":
        import jax

        return fn(x), jax.grad(lambda v: fn(v).sum())(x)
    if BACKEND == "torch":
        import torch

        v = torch.tensor(x, requires_grad=True)
        out = fn(v)
        out.sum().backward()
        return out.detach(), v.grad
    import tensorflow as tf

    v = tf.Variable(x)
    with tf.GradientTape() as tape:
        out = fn(v)
        total = tf.reduce_sum(out)
    return out, tape.gradient(total, v)


@pytest.mark.parametrize("first", [1.5, np.nan], ids=["finite", "nan_first"])
def test_value_and_gradient_pass_through_unchanged(first):
    x = np.linspace(-1, 1, 12, dtype="float32").reshape(3, 4)
    weights = np.arange(12, dtype="float32").reshape(3, 4)
    weights[0, 0] = first  # a NaN cotangent takes the barrier's other branch
    square, multiply = keras.ops.square, keras.ops.multiply
    with_barrier = value_and_gradient(lambda v: multiply(square(gradient_barrier(v)), weights), x)
    without = value_and_gradient(lambda v: multiply(square(v), weights), x)
    for actual, expected in zip(with_barrier, without):
        np.testing.assert_array_equal(_numpy(actual), _numpy(expected))
    assert np.isnan(_numpy(with_barrier[1])[0, 0]) == np.isnan(first)


def _numpy(value):
    return np.asarray(value.detach() if hasattr(value, "detach") else value)


def largest_backward_fusion(num_layers):
    """Instructions in the largest XLA fusion of a backbone's gradient."""
    import jax
    import jax.numpy as jnp

    backbone = GPT2Backbone(vocabulary_size=50, num_layers=num_layers, num_heads=2, hidden_dim=16,
                            intermediate_dim=32, max_sequence_length=16, dropout=0.0)
    trainable = [v.value for v in backbone.trainable_variables]
    non_trainable = [v.value for v in backbone.non_trainable_variables]
    inputs = {"token_ids": np.ones((2, 16), "int32"), "padding_mask": np.ones((2, 16), bool)}

    def loss(trainable):
        hidden, _ = backbone.stateless_call(trainable, non_trainable, inputs)
        return jnp.sum(hidden**2)

    hlo = jax.jit(jax.grad(loss)).lower(trainable).compile().as_text()
    bodies = re.findall(r"\n%fused\S* \([^\n]*\{\n(.*?)\n\}", hlo, re.S)
    assert bodies, "no fusions found in the compiled HLO"
    return max(body.count("\n") + 1 for body in bodies)


def test_backward_fusions_do_not_grow_with_depth():
    if BACKEND != "jax":  # no XLA backward to shape: the barrier is the identity
        x = keras.ops.ones((2, 3))
        assert gradient_barrier(x) is x
        return
    # Without the barrier XLA re-fuses every later block's LayerNorm backward
    # into each block's consumers: the largest fusion grows with the depth
    # (199, 347, 643 instructions for 2, 4, 8 layers).
    assert largest_backward_fusion(8) <= largest_backward_fusion(2) * 1.25
