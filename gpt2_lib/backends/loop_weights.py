"""`per_layer_weights`: low-precision weights widened per layer in XLA:CPU loops.

XLA:CPU widens bfloat16/float16 and int8 operands (to float32, or int32)
before most products (not before YNNPACK's GEMMs that `dense` uses). Inside
`generate()`'s loops the weights are loop-invariant, so XLA hoists the
widened copies out of the loop (bfloat16: a float32 copy of every weight
carried through decoding), and what it keeps inside the loop it schedules
early, every layer's widened kernels alive at once. GPT-2 base (batch 1,
128 positions; `memory_analysis()` of the compiled generate function) needed
774 MB of temporaries for 237 MB of bfloat16 weights and 342 MB for 122 MB
of int8 weights (float32: 45 MB for 475 MB).

Within `per_layer_weights(layer, layer_input)` the layer reads its
low-precision variables through a select on a condition of its input that
is always true (the sign bit of `|x|` is clear) but that XLA cannot prove.
The values are unchanged, but they now depend on the layer's input, so
nothing that widens them runs before the layer or is hoisted out of the
loop, and each layer's widened kernels live only while it runs; the LM
head, the largest product, is widened a chunk of the vocabulary at a time
(`tied_logits`). Temporaries: 774 -> 22 MB (bfloat16) and 342 -> 46 MB
(int8; 11 MB with its kernels read as stored, below). GPT-2 XL bfloat16
generation peaks at 3.7 GB instead of 10.1 GB (`benchmarks/scaling.py`).
Half-precision projection kernels are not
fenced: `dense` multiplies them as stored (YNNPACK's GEMM), so nothing
widened from them exists to hoist, and a fenced copy would cost a write
and a read of their bytes on every step (GPT-2 XL decodes at 4.6 tok/s;
2.6 when every kernel was fenced and widened). Nor are int8 kernels and
the int8 tied table, which `dense` contracts as stored too (fenced, the
table was copied on every step: 38.6 MB of temporaries at GPT-2 base).
Fenced are the half-precision embeddings and vectors (LayerNorm, biases)
and int4's packed values, which are unpacked and widened. An
`optimization_barrier` does not do this: XLA:CPU removes barriers before
it schedules. Half-precision values are selected on their bits (a
half-precision select is itself widened, and hoisted), so they enter the
generate function as zero-copy `uint16` views (`carry_in`) that XLA's
bitcasts fold into. Float32 weights and other platforms are untouched.

On TensorFlow (XLA) half-precision weights are fenced the same way (XLA
hoisted widened float32 copies of all of them out of the loops):
`CausalLM`'s TensorFlow generate function takes them as zero-copy `uint16`
bits when the model has any, its projection kernels are multiplied as
stored (`dense.supports_half` within `xla_cpu.tensorflow_xla`), and the tied
LM head goes a chunk at a time as on JAX. GPT-2 base bfloat16 generation
peaks at ~700 MB instead of 1487 and decodes 1.28x faster at batch 8;
GPT-2 XL at 4.3 GB instead of 10.9 (`benchmarks/NOTES.md`).
Its int4 layers' variables are fenced too:
XLA hoisted every int4 kernel's and the tied table's dequantized float32
copy out of the decode loop, so int4 generation of GPT-2 base held more
than float32's (compiled-call peak 910 MB for 67 MB of int4 weights;
float32: 685 MB). Fenced: 485 MB. Decoding dequantizes every weight on
every step instead, as JAX's does: 16.5 / 63.5 -> 10.9 / 34.1 tok/s at
batch 1 / 8 (int4 is the mode that fits, int8 the fast one;
`benchmarks/NOTES.md`). Its int8 layers are not fenced (that cost int8
decoding half its speed).
"""

import contextlib
import functools

import keras

from gpt2_lib.backends.dense import HALF_PRECISION
from gpt2_lib.backends.dense import reverse_embedding
from gpt2_lib.utils.tensors import enclosing_stateless_scope

_LOW_PRECISION = HALF_PRECISION + ("int8",)


def supports(layer):
    """True on JAX on a CPU for a layer with bfloat16/float16/int8 variables,
    on TensorFlow for one with bfloat16/float16 variables or int4 sublayers."""
    if keras.config.backend() == "tensorflow":
        return bool(_int4_variables([layer])) or any(_is_half(v) for v in layer.variables)
    if keras.config.backend() != "jax":
        return False
    import jax

    if jax.default_backend() != "cpu":
        return False
    return any(_is_low_precision(v) for v in layer.variables)


def _is_low_precision(variable):
    return keras.backend.standardize_dtype(variable.dtype) in _LOW_PRECISION


def _is_half(variable):
    return keras.backend.standardize_dtype(variable.dtype) in HALF_PRECISION


def _read_as_stored(variable):
    """A half-precision projection kernel: `dense` multiplies it as stored
    (YNNPACK's GEMM on JAX), so nothing widened from it can be hoisted (a
    fenced copy of it would cost a write and a read of its bytes on every
    step)."""
    return _is_half(variable) and variable.name == "kernel"


def _int8_read_as_stored(variable, int4_variables):
    """An int8 layer's kernel or tied table: `dense` contracts it as stored
    (s8 x s8 -> s32 dots, YNNPACK's on JAX), so nothing widened from it
    exists to hoist. Fenced, XLA wrote a selected copy of the tied table on
    every step (38.6 MB of temporaries at GPT-2 base; `benchmarks/NOTES.md`).
    int4 layers' packed int8 values are unpacked and widened: they stay fenced."""
    return (
        keras.backend.standardize_dtype(variable.dtype) == "int8"
        and variable.name in ("kernel", "embeddings")
        and not any(variable is v for v in int4_variables)
    )


def _fenced(variable, int4_variables):
    """Whether `per_layer_weights` selects `variable` within a generate function."""
    if keras.config.backend() == "tensorflow":  # int8 unfenced: it halved decoding
        return enters_as_bits(variable) or any(variable is v for v in int4_variables)
    return (
        _is_low_precision(variable)
        and not _read_as_stored(variable)
        and not _int8_read_as_stored(variable, int4_variables)
    )


def enters_as_bits(variable):
    """Whether a generate function takes `variable` as its `uint16` bits (`carry_in`)."""
    return _is_half(variable) and not _read_as_stored(variable)


@contextlib.contextmanager
def per_layer_weights(layers, layer_input):
    """Within the block, `layers` read their low-precision variables as values of `layer_input`.

    Must be entered inside the `keras.StatelessScope` that maps the model's
    variables to traced values (as `CausalLM`'s JAX generate function does,
    and TensorFlow's for a model with half-precision weights),
    around a call that reads only these layers' variables. Elsewhere, or
    when no layer is `supports`ed, it does nothing. Gradients pass through
    unchanged.

    Args:
        layers: a Keras layer or a list of them (a decoder block, the
            embeddings).
        layer_input: the tensor they are about to process.

    Example:
    >>> backbone = gpt2_lib.models.GPT2Backbone(
    ...     vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=8,
    ... )
    >>> x = np.ones((1, 2, 8), "float32")
    >>> with per_layer_weights(backbone.transformer_layers[0], x):  # float32: a no-op
    ...     pass
    """
    layers = layers if isinstance(layers, (list, tuple)) else [layers]
    if not any(supports(layer) for layer in layers):
        yield
        return
    enclosing = enclosing_stateless_scope()
    if enclosing is None:
        if keras.config.backend() == "tensorflow":
            with _tensorflow_int4_fence(layers, layer_input):
                yield
            return
        yield
        return
    keep = _always_true(layer_input)
    int4_variables = _int4_variables(layers)
    mapping = []
    for variable in [v for layer in layers for v in layer.variables]:
        value = enclosing.get_current_value(variable)  # the traced value, not autocast
        if value is None:
            continue
        if _fenced(variable, int4_variables):
            value = _select(keep, value)
        mapping.append((variable, value))
    with keras.StatelessScope(state_mapping=mapping):
        yield


def _always_true(layer_input):
    """True, including for NaN and infinities (the sign bit of `|x|` is
    clear), but not provable by XLA: a condition of the layer's input."""
    first = keras.ops.cast(keras.ops.reshape(layer_input, (-1,))[0], "float32")
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        return tf.bitcast(tf.abs(first), tf.int32) >= 0
    import jax
    import jax.numpy as jnp

    return jax.lax.bitcast_convert_type(jnp.abs(first), jnp.int32) >= 0


def _int4_variables(layers):
    """Every variable of `layers`' int4 sublayers: packed values, scales, zero points."""
    return [
        variable
        for layer in layers
        for sublayer in layer._flatten_layers()
        if getattr(sublayer, "quantization_mode", None) == "int4"
        for variable in sublayer.variables
    ]


@contextlib.contextmanager
def _tensorflow_int4_fence(layers, layer_input):
    """`per_layer_weights` on TensorFlow: the int4 layers' variables behind
    an always-true `where` on `layer_input` (no enclosing scope to map)."""
    keep = _always_true(layer_input)
    mapping = [(variable, _select(keep, variable.value)) for variable in _int4_variables(layers)]
    with keras.StatelessScope(state_mapping=mapping):
        yield


def tied_logits(layer, hidden_states, chunk=4096):
    """`dense.reverse_embedding(layer, hidden_states)` inside a generation loop.

    The tied LM head is the largest product: widened whole, a bfloat16
    GPT-2 table is a 154 MB (base) to 321 MB (XL) float32 temporary on
    every step. Under XLA (JAX on a CPU, TensorFlow), a half-precision
    table is multiplied `chunk` vocabulary rows at a time instead (each
    chunk sliced from its bits, so nothing is hoisted), which widens one
    chunk at a time. Every other case is `reverse_embedding` with
    `per_layer_weights`.

    Args:
        layer: the tied `ReversibleEmbedding`.
        hidden_states: `(..., hidden)`.
        chunk: vocabulary rows per product.

    Returns:
        `(..., vocabulary)` logits.

    Example:
    >>> layer = keras.layers.ReversibleEmbedding(10, 4)
    >>> layer.build((None,))
    >>> tuple(tied_logits(layer, np.ones((2, 3, 4), "float32")).shape)
    (2, 3, 10)
    """
    table = layer.embeddings
    half = keras.backend.standardize_dtype(table.dtype) in HALF_PRECISION
    enclosing = enclosing_stateless_scope()
    value = None if enclosing is None else enclosing.get_current_value(table)
    if not (
        half and supports(layer) and value is not None and layer.tie_weights
        and getattr(layer, "logit_soft_cap", None) is None
        and table.shape[0] > chunk
    ):
        with per_layer_weights(layer, hidden_states):
            return reverse_embedding(layer, hidden_states)
    ops = keras.ops
    vocabulary, hidden = value.shape
    rows = ops.reshape(hidden_states, (-1, hidden))
    # Sliced as bits: XLA folds this bitcast into `carry_in`'s (no copy).
    bits = _bitcast(value, "uint16")

    def product(i, logits):
        start = ops.minimum(i * chunk, vocabulary - chunk)  # the last chunk overlaps
        part = _bitcast(ops.slice(bits, [start, 0], [chunk, hidden]), value.dtype)
        # The product `ReversibleEmbedding` computes, on this chunk.
        part = ops.matmul(rows, ops.transpose(part))
        return ops.slice_update(logits, [0, start], part)

    count = -(-vocabulary // chunk)
    dtype = keras.backend.result_type(rows.dtype, value.dtype)
    logits = ops.fori_loop(0, count, product, ops.zeros((ops.shape(rows)[0], vocabulary), dtype))
    return ops.reshape(logits, tuple(ops.shape(hidden_states)[:-1]) + (vocabulary,))


def _bitcast(value, dtype):
    """`value`'s bits as `dtype` (of the same width), in XLA a bitcast."""
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        return tf.bitcast(value, tf.as_dtype(keras.backend.standardize_dtype(dtype)))
    import jax

    return jax.lax.bitcast_convert_type(value, dtype)


def _select(keep, value):
    if keras.config.backend() != "tensorflow":
        return _jax_select()(keep, value)
    import tensorflow as tf

    if value.dtype not in (tf.bfloat16, tf.float16):
        return tf.where(keep, value, tf.zeros((), value.dtype))
    # On the bits, as `_jax_select` (generation only: no gradient needed).
    bits = tf.where(keep, tf.bitcast(value, tf.uint16), tf.zeros((), tf.uint16))
    return tf.bitcast(bits, value.dtype)


@functools.cache
def _jax_select():
    import jax
    import jax.numpy as jnp

    @jax.custom_jvp
    def select(keep, value):
        """`value` where `keep`, else zeros; on the bits of half-precision values
        (XLA:CPU widens a half-precision select to float32 and hoists that)."""
        if value.dtype == jnp.int8:
            return jnp.where(keep, value, jnp.zeros((), value.dtype))
        bits = jax.lax.bitcast_convert_type(value, jnp.uint16)
        bits = jnp.where(keep, bits, jnp.zeros((), jnp.uint16))
        return jax.lax.bitcast_convert_type(bits, value.dtype)

    @select.defjvp
    def select_jvp(primals, tangents):  # the identity's (`keep` is always true)
        return select(*primals), tangents[1]

    return select


def carry_in(variables):
    """The `variables`' values for a jitted generate function, selected ones as bits.

    Single-device CPU arrays of bfloat16/float16 that `per_layer_weights`
    selects on are passed as zero-copy `uint16` views: it selects on those
    bits inside the loop, and XLA folds the bitcasts, where bitcasting a
    half-precision parameter inside the function would be hoisted as a copy
    of it. Kernels read as stored pass unchanged (their bitcast back would
    not fold into a reshape: a hoisted copy). Undo with `carry_out` inside
    the function.
    """
    values = [variable.value for variable in variables]
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        # An eager `tf.bitcast` shares the buffer.
        return [
            tf.bitcast(value, tf.uint16) if enters_as_bits(variable) else value
            for variable, value in zip(variables, values)
        ]
    if keras.config.backend() != "jax":
        return values
    import jax
    import numpy as np

    def view(variable, value):
        if str(getattr(value, "dtype", "")) not in HALF_PRECISION or not enters_as_bits(variable):
            return value
        if not isinstance(value, jax.Array) or len(value.sharding.device_set) != 1:
            return value
        if next(iter(value.sharding.device_set)).platform != "cpu":
            return value
        # Zero-copy both ways on CPU.
        return jax.device_put(np.asarray(value).view(np.uint16), value.sharding)

    return [view(variable, value) for variable, value in zip(variables, values)]


def carry_out(values, variables):
    """`carry_in`'s values as the `variables`' dtypes again (inside the function)."""
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        return [
            tf.bitcast(value, variable.dtype)
            if value.dtype == tf.uint16 and keras.backend.standardize_dtype(variable.dtype) != "uint16"
            else value
            for value, variable in zip(values, variables)
        ]
    if keras.config.backend() != "jax":
        return values
    import jax
    import jax.numpy as jnp

    return [
        jax.lax.bitcast_convert_type(value, variable.dtype)
        if value.dtype == jnp.uint16 and keras.backend.standardize_dtype(variable.dtype) != "uint16"
        else value
        for value, variable in zip(values, variables)
    ]
