"""XLA on a CPU: where code is traced for it, and its faster argmax.

`on_xla_cpu()` says whether the code being traced runs on XLA:CPU (JAX on a
CPU, or TensorFlow inside `tensorflow_xla()`, which `CausalLM`'s TensorFlow
generate function enters); `dense` picks its XLA products by it.

`argmax` is `keras.ops.argmax(values, axis=-1)`. XLA:CPU computes an argmax
as a variadic reduce of (value, index) pairs on one core: over GPT-2's
50257 logits, in a compiled loop on JAX, 236 us at batch 1 and 944 us at
batch 8. As the smallest index holding the row's max (and its first NaN),
plain reductions XLA vectorizes, 50 and 219 us. Inside a greedy GPT-2 base
`generate()` (`jax.profiler`) the argmax went from 0.24 to 0.03 ms a step at
batch 1 and from 0.92 to 0.09 at batch 8, ~2% / ~3% of a step; end to end
that is within the machine's noise (old and new alternating in one process:
0.99-1.05x at batch 1, 1.02x at batch 8; TensorFlow's XLA 1.00-1.10x,
`benchmarks/NOTES.md`). torch's own argmax is faster than that form (35
vs 90 us) and keeps it.
"""

import contextlib
import contextvars

import keras
from keras import ops

_TENSORFLOW_XLA = contextvars.ContextVar("gpt2_lib_tensorflow_xla", default=False)


@contextlib.contextmanager
def tensorflow_xla():
    """Marks code traced for a TensorFlow function compiled with XLA.

    There, half-precision products take XLA's dot with a float32 result
    (`dense.supports_half`), which TensorFlow has no kernel of its own for.
    `CausalLM`'s TensorFlow generate function enters it.
    """
    token = _TENSORFLOW_XLA.set(True)
    try:
        yield
    finally:
        _TENSORFLOW_XLA.reset(token)


def on_xla_cpu():
    """True on JAX on a CPU, or in TensorFlow's XLA on a CPU (within `tensorflow_xla`)."""
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        return _TENSORFLOW_XLA.get() and not tf.config.list_physical_devices("GPU")
    if keras.config.backend() == "jax":
        import jax

        return jax.default_backend() == "cpu"
    return False


def argmax(values):
    """The index of each row's largest value: the first one on ties, a
    row's first NaN if it has one (NumPy's argmax).

    `keras.ops.argmax(values, axis=-1)` (which on TensorFlow skips NaNs);
    on XLA:CPU (`on_xla_cpu`) the smallest index holding the row's maximum.

    Args:
        values: `(..., n)` float tensor.

    Returns:
        `(...)` int32 indices.

    Example:
    >>> values = keras.ops.convert_to_tensor([[0.1, 0.7, 0.7], [0.5, 0.2, 0.3]])
    >>> keras.ops.convert_to_numpy(argmax(values)).tolist()
    [1, 0]
    """
    if not on_xla_cpu():
        return ops.cast(ops.argmax(values, axis=-1), "int32")
    return _first_index_of_max(values)


def _first_index_of_max(values):
    """`argmax` as plain reductions: the smallest index holding the row's
    max, unless the row has a NaN (XLA:CPU's max may skip it)."""
    count = values.shape[-1]
    indices = ops.arange(count, dtype="int32")

    def first(holds):
        return ops.min(ops.where(holds, indices, count), axis=-1)

    first_nan = first(ops.isnan(values))
    first_max = first(ops.equal(values, ops.max(values, axis=-1, keepdims=True)))
    return ops.where(first_nan < count, first_nan, first_max)
