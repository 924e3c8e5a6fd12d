"""Gradients of a test function on whichever backend runs the tests."""

import keras
import numpy as np

from gpt2_lib.backends import xla_cpu


def squared_sum_gradients(function, *arrays):
    """NumPy gradients of `sum(function(*arrays) ** 2)` with respect to each array."""
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        loss = lambda *a: (function(*a) ** 2).sum()  # noqa: E731
        gradients = jax.grad(loss, argnums=tuple(range(len(arrays))))(*arrays)
    elif backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in arrays]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            loss = tf.reduce_sum(function(*tensors) ** 2)
        gradients = tape.gradient(loss, tensors)
    else:
        import torch

        tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
        (function(*tensors) ** 2).sum().backward()
        gradients = [t.grad for t in tensors]
    return [keras.ops.convert_to_numpy(g) for g in gradients]


def values_and_gradients(layer, fn, x, jit):
    """`[fn(x), d/dx, d/dweights...]` of `sum(fn(x) ** 2)` over `layer`'s
    trainable weights, as NumPy: on JAX (jitted or not) or within
    `xla_cpu.tensorflow_xla()` on TensorFlow (`jit`: a jit-compiled
    `tf.function`)."""
    if keras.config.backend() == "jax":
        import jax
        import jax.numpy as jnp

        def loss(values, x):
            with keras.StatelessScope(state_mapping=list(zip(layer.trainable_variables, values))):
                out = fn(x)
            return jnp.sum(out**2), out

        def run():
            values = [v.value for v in layer.trainable_variables]
            (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(values, x)
            return [out, grads[1], *grads[0]]

        return [np.asarray(a) for a in (jax.jit(run)() if jit else run())]
    import tensorflow as tf

    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = fn(x)
            loss = tf.reduce_sum(out**2)
        return [out, *tape.gradient(loss, [x, *layer.trainable_variables])]

    with xla_cpu.tensorflow_xla():
        x = tf.constant(x)
        return [np.asarray(a) for a in (tf.function(run, jit_compile=True)(x) if jit else run(x))]
