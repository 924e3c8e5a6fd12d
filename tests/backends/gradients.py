"""Gradients of a test function on whichever backend runs the tests."""

import keras


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
