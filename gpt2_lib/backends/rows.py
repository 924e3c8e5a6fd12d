"""`dense_on_rows`: a `Dense` layer applied to `(batch * seq, features)` rows.

XLA's CPU backward of a 3D x 2D matmul (`(batch, seq, hidden) @ (hidden,
out)`) runs ~1.4x slower than the same product on 2D rows; training GPT-2
base on JAX took 6.64 s per step one way and 5.88 s the other
(`benchmarks/NOTES.md`). The reshapes are free on every backend, so the MLP
always runs on rows; the result is the same to the bit.
"""

from keras import ops


def dense_on_rows(layer, inputs):
    """`layer(inputs)` computed on `inputs` flattened to 2D rows.

    Args:
        layer: a `keras.layers.Dense` (any layer acting on the last axis).
        inputs: `(..., features)`.

    Returns:
        `(..., units)`, equal to `layer(inputs)`.

    Example:
    >>> dense = keras.layers.Dense(4)
    >>> dense_on_rows(dense, np.ones((2, 3, 5), "float32")).shape
    (2, 3, 4)
    """
    shape = ops.shape(inputs)
    rows = ops.reshape(inputs, (-1, shape[-1]))
    outputs = layer(rows)
    return ops.reshape(outputs, tuple(shape[:-1]) + (ops.shape(outputs)[-1],))
