"""Dense projections: on `(batch * seq, features)` rows, and int8 on XLA.

Two measured speed-ups, both computing what the Keras layer computes:

* `dense_on_rows`: XLA's CPU backward of a 3D x 2D matmul (`(batch, seq,
  hidden) @ (hidden, out)`) runs ~1.4x slower than the same product on 2D
  rows; training GPT-2 base on JAX took 6.64 s per step one way and 5.88 s
  the other. The reshapes are free on every backend.
* int8 layers on JAX (and TensorFlow, which shares the code): Keras' int8
  `Dense`/`EinsumDense` multiply int8 inputs by the int8 kernel with int32
  accumulation. XLA:CPU has no int8 matrix product: it converts both
  operands to int32, and inside `generate()`'s loop it hoists the converted
  (4-byte) kernels out of the loop, so an int8 model decoded with an int32
  copy of every weight: 1.25x the memory of the float32 model. `dense`
  computes the same products (Keras' own input quantizer, exact int32 sums,
  the same rescaling) with the kernel behind an optimization barrier on
  JAX, fenced together with the step's inputs (a barrier over the
  loop-invariant kernel alone is hoisted with it), so each layer's kernel
  is converted inside the loop when it is used: GPT-2 base int8 generation
  peak 909 -> 757 MB above the process (`benchmarks/scaling.py --quantize
  int8`; still above the weights, `benchmarks/NOTES.md`). The torch backend has its own int8
  path (`torch_gpt2`).
"""

import keras
from keras import ops

def supports_int8(layer):
    """True for a Keras int8 layer without LoRA, on JAX or TensorFlow."""
    return (
        keras.config.backend() in ("jax", "tensorflow")
        and getattr(layer, "quantization_mode", None) == "int8"
        and not getattr(layer, "lora_enabled", False)
    )


def _int8_matmul(rows, kernel, kernel_scale, inputs_quantizer, compute_dtype):
    """`(m, k) x int8 (k, n) -> (m, n)` exactly as Keras' int8 layers compute it."""

    @ops.custom_gradient
    def matmul(rows, kernel, kernel_scale):
        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            float_kernel = ops.divide(ops.cast(kernel, compute_dtype), kernel_scale)
            return ops.matmul(upstream, ops.transpose(float_kernel)), None, None

        quantized, inputs_scale = inputs_quantizer(rows, axis=-1)
        if keras.config.backend() == "jax":
            import jax

            # Converted to int32 here, inside the decoding loop, not hoisted:
            # fenced together with this step's (loop-variant) inputs, since a
            # barrier over the loop-invariant kernel alone is hoisted with it.
            kernel, quantized = jax.lax.optimization_barrier((kernel, quantized))
        products = ops.matmul(quantized, kernel)  # int32
        outputs = ops.cast(products, compute_dtype)
        return ops.divide(outputs, ops.multiply(inputs_scale, kernel_scale)), grad

    return matmul(rows, kernel, kernel_scale)


def dense(layer, inputs):
    """`layer(inputs)` for a `Dense`/`EinsumDense` over the last axes.

    Int8 layers on JAX/TensorFlow take the XLA-friendly int8 product; every
    other layer is simply called.

    Args:
        layer: a built `keras.layers.Dense` or `EinsumDense` whose bias spans
            its output axes (every GPT-2 projection).
        inputs: `(..., *contracted_axes)`.

    Example:
    >>> layer = keras.layers.Dense(4)
    >>> tuple(dense(layer, np.ones((2, 3), "float32")).shape)
    (2, 4)
    """
    if not supports_int8(layer):
        return layer(inputs)
    kernel = layer._kernel
    out_axes = len(layer.bias.shape)
    contracted = len(kernel.shape) - out_axes
    in_features = 1
    for size in kernel.shape[:contracted]:
        in_features *= size
    out_shape = tuple(kernel.shape[contracted:])
    batch_shape = tuple(ops.shape(inputs)[: len(inputs.shape) - contracted])
    rows = ops.reshape(inputs, (-1, in_features))
    kernel_scale = ops.reshape(layer.kernel_scale, (-1,))
    outputs = _int8_matmul(
        rows,
        ops.reshape(kernel, (in_features, -1)),
        kernel_scale,
        layer.inputs_quantizer,
        layer.compute_dtype,
    )
    outputs = outputs + ops.reshape(layer.bias, (-1,))
    return ops.reshape(outputs, batch_shape + out_shape)


def reverse_embedding(layer, hidden_states):
    """`layer(hidden_states, reverse=True)`: logits of a tied `ReversibleEmbedding`.

    Int8 embeddings on JAX/TensorFlow take the XLA-friendly int8 product.
    """
    if not supports_int8(layer) or not layer.tie_weights or layer.logit_soft_cap is not None:
        return layer(hidden_states, reverse=True)
    shape = tuple(ops.shape(hidden_states))
    rows = ops.reshape(hidden_states, (-1, shape[-1]))
    logits = _int8_matmul(
        rows,
        ops.transpose(layer._embeddings),
        ops.reshape(layer.embeddings_scale, (-1,)),
        layer.inputs_quantizer,
        layer.compute_dtype,
    )
    return ops.reshape(logits, shape[:-1] + (layer.input_dim,))


def dense_on_rows(layer, inputs):
    """`dense(layer, inputs)` computed on `inputs` flattened to 2D rows.

    Args:
        layer: a `keras.layers.Dense` (acting on the last axis).
        inputs: `(..., features)`.

    Returns:
        `(..., units)`, equal to `layer(inputs)`.

    Example:
    >>> layer = keras.layers.Dense(4)
    >>> tuple(dense_on_rows(layer, np.ones((2, 3, 5), "float32")).shape)
    (2, 3, 4)
    """
    shape = ops.shape(inputs)
    rows = ops.reshape(inputs, (-1, shape[-1]))
    outputs = dense(layer, rows)
    return ops.reshape(outputs, tuple(shape[:-1]) + (ops.shape(outputs)[-1],))
