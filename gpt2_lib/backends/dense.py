"""Dense projections on 2D rows: exact int8, gather-free int4, half on JAX, oneDNN on torch.

Nine measured gains, all computing what the Keras layer computes:

* `dense_on_rows`: XLA's CPU backward of a 3D x 2D matmul (`(batch, seq,
  hidden) @ (hidden, out)`) runs ~1.4x slower than the same product on 2D
  rows; training GPT-2 base on JAX took 6.64 s per step one way and 5.88 s
  the other. The reshapes are free on every backend.
* int8 layers on JAX and TensorFlow (`_products_as_stored`): Keras' int8
  `Dense`/`EinsumDense` multiply int8 inputs by the int8 kernel with int32
  accumulation. `dense` computes the same products (Keras' own input
  quantizer, exact int32 sums, the same rescaling) where XLA:CPU runs them
  fastest: an s8 x s8 -> s32 dot of 2 rows or more runs on a multi-threaded
  GEMM (YNNPACK on JAX, Eigen on TensorFlow), reading the int8 kernel as
  stored, but a single row's operands are converted to int32 (JAX: a
  4-byte copy of the kernel per step) or looped on one core (TensorFlow),
  so batch-1 decoding pads its row with a zero row, and the tied embedding
  is contracted as stored `(vocab, hidden)` (a transposed copy would be
  made: on JAX int8, with a ~6-9x slower product; on TensorFlow int32,
  +154 MB hoisted out of the loop, with a 7x slower product). On JAX an
  int8 kernel, and a half-precision one with many inputs (the MLP
  output), is multiplied as one product batched over slices of its inputs
  (`_input_slices`). GPT-2 base int8 generation on JAX decodes 91.4
  tok/s at batch 1 and 367.4 at batch 8, 1.31x and 1.39x float32 (69.6 and
  263.6) (`benchmarks/generate.py`, quiet machine, `benchmarks/NOTES.md`);
  on TensorFlow 127 and 522, where it did 64 and 307 before the row was
  padded and the table read as stored. On torch's CPU the int8 sums come
  from `torch_matmul.int8_products` (Keras multiplies int8 as int32 there:
  scoring the Shakespeare preset took 4x as long as float32, now 1.2x);
  generation has its own int8 path (`torch_gpt2`).
* bfloat16/float16 layers on JAX on a CPU (`supports_half`): XLA:CPU
  computes a half-precision dot with a half-precision result on float32
  copies of both operands, a widened copy of the kernel on every call
  (inside `generate()`'s loops hoisted, or written and read again on every
  step). Asked for a float32 result, it runs a dot of two rows or more on
  YNNPACK's half-precision GEMM, which reads the kernel as stored, so
  `dense` asks for that and rounds to the layer's dtype (a single row
  padded, as for int8). Both sum exact products in float32, in orders that
  may differ. GPT-2 base bfloat16 on JAX decodes 70.6 tok/s at batch 1
  and 242.7 at batch 8, where it did 62.1 and 188.8 (float32: 66.1 and
  215.4), and trains at 342 tok/s instead of 305; GPT-2 XL decodes at 4.6
  tok/s instead of 2.6 (float32: 6.5; at XL's widths YNNPACK's two-row
  bfloat16 product is bound by arithmetic, not memory; `benchmarks/NOTES.md`).
  The same in TensorFlow's XLA (`BatchMatMulV3` with a float32 result,
  which TensorFlow has no kernel of its own for, so only within
  `xla_cpu.tensorflow_xla`, which its generate function enters): eight XL-width
  products of two rows 21.5 ms instead of 46.5 widened; GPT-2 base bfloat16
  decodes 157.6 tok/s at batch 8 where it did 123, GPT-2 XL 2.1 where it
  did 1.7, peaking at 4.3 GB instead of 10.9.
* float32 layers on torch on a CPU (`_float32_on_torch_cpu`) multiply on
  oneDNN (`torch_matmul`), ~2x MKL's float32 GEMM on an AMD EPYC.
* int4 layers in groups, dequantized by broadcasting each group's scale
  and zero point rather than Keras' gather (`quantization.dequantize_int4`,
  the same values; `int4_products`): the tied table on JAX and TensorFlow (`supports_int4_table`;
  XLA:CPU fused the gather into the product, and a batch-8 JAX
  `generate()` with a one-block GPT-2 base took 78 s where it now takes
  3.2; TensorFlow batch 8 42 -> 64 tok/s), the projections on JAX
  (`supports_int4`; GPT-2 base batch 1 3.9 -> 8.2 tok/s on JAX; on
  TensorFlow, with its int4 weights fenced in the decode loop by
  `loop_weights`, 3.8 -> 11.7 tok/s against Keras' gather).
* a single row of a float layer on TensorFlow (`_one_row_on_tensorflow`;
  float32 ones in XLA take input slices, the last item): TensorFlow's XLA
  fuses a one-row product into a loop on one core, so it is multiplied as
  two rows (GPT-2 base under XLA: 58.2 tok/s at batch 1, where
  TensorFlow's own kernels did 46.3).
* a float layer contracting several axes on JAX (`_several_axes_on_jax`,
  the attention output `btnh,nhd->btd`): XLA:CPU copied its kernel,
  transposed, on every call (every decoding step); as 2D rows it reads
  the kernel as stored. GPT-2 base generation's temporaries at batch 1:
  38.5 -> 10.6 MB; its speed is unchanged (within 1-4%).
* a single float32 row on JAX or in TensorFlow's XLA on a CPU, batched
  over input slices (`_one_row_input_slices`): batch-1 decoding 1.19-1.25x
  faster on JAX, 1.69x on TensorFlow.
* 2 to 32 float32 rows' logits on the same XLAs, table first
  (`_table_first_chunks`): batch-8 decoding 1.07-1.12x faster on JAX,
  1.16x on TensorFlow (batch 2: 1.11x, 1.13x).
"""

import math

import keras
from keras import ops

from gpt2_lib.backends import torch_matmul
from gpt2_lib.backends.int4_products import int4_kernel
from gpt2_lib.backends.int4_products import int4_table
from gpt2_lib.backends.int4_products import supports_int4
from gpt2_lib.backends.int4_products import supports_int4_table
from gpt2_lib.backends.xla_cpu import on_xla_cpu

HALF_PRECISION = ("bfloat16", "float16")


def supports_int8(layer):
    """True for a Keras int8 layer without LoRA, on JAX, TensorFlow or torch's CPU."""
    if getattr(layer, "quantization_mode", None) != "int8" or getattr(layer, "lora_enabled", False):
        return False
    if keras.config.backend() == "torch":
        return torch_matmul.has_int8_on_cpu(layer._kernel if hasattr(layer, "_kernel") else layer._embeddings)
    return keras.config.backend() in ("jax", "tensorflow")


def _int8_matmul(
    rows, kernel, kernel_scale, inputs_quantizer, compute_dtype, transposed=False
):
    """`(m, k) x int8 (k, n) -> (m, n)` exactly as Keras' int8 layers compute it.

    `transposed`: `kernel` is stored `(n, k)` (a tied embedding) and is
    contracted on its last axis without being transposed first.
    """

    @ops.custom_gradient
    def matmul(rows, kernel, kernel_scale):
        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            # One scale per output unit: the rows of a transposed `(n, k)` kernel.
            scale = ops.expand_dims(kernel_scale, -1) if transposed else kernel_scale
            float_kernel = ops.divide(ops.cast(kernel, compute_dtype), scale)  # as stored
            upstream_kernel = float_kernel if transposed else ops.transpose(float_kernel)
            return ops.matmul(upstream, upstream_kernel), None, None

        quantized, inputs_scale = inputs_quantizer(rows, axis=-1)
        products = _products_as_stored(quantized, kernel, transposed, "int32")
        outputs = ops.cast(products, compute_dtype)
        return ops.divide(outputs, ops.multiply(inputs_scale, kernel_scale)), grad

    return matmul(rows, ops.convert_to_tensor(kernel), ops.convert_to_tensor(kernel_scale))


def _one_row_as_two(product, rows):
    """`product(rows)`, a single row computed as two (padded with a zero row).

    XLA:CPU emits a product of one row as a loop on one core (TensorFlow's
    XLA fuses it with its bias or reshape; JAX's converts int8 and
    half-precision operands to wider copies first); two rows or more go to
    its multi-threaded GEMMs (Eigen, oneDNN, YNNPACK), which read the kernel
    as stored.
    """
    if rows.shape[0] != 1:
        return product(rows)
    return product(ops.pad(rows, ((0, 1), (0, 0))))[:1]


def _products_as_stored(rows, kernel, transposed, accumulation):
    """`rows @ kernel`, the kernel read as stored (torch: `torch_matmul.int8_products`).

    An int8 (`accumulation="int32"`) or half-precision (`"float32"`) dot
    of at least 2 rows runs on XLA:CPU's multi-threaded GEMMs (YNNPACK on
    JAX, Eigen on TensorFlow), which read the kernel as stored; a single
    row (batch-1 decoding) is instead converted to wider copies (JAX) or
    looped on one core (TensorFlow), so it is padded with a zero row. A tied embedding (`transposed`, stored `(n, k)`) is
    contracted on its last axis as stored: given a transposed table, XLA
    materialises a transposed copy (TensorFlow: an int32 copy, +154 MB for
    GPT-2 base, hoisted out of `generate()`'s loop, and an int32 product
    7x slower than the int8 one at batch 8).
    """
    if keras.config.backend() == "torch":
        return torch_matmul.int8_products(rows, kernel, transposed)
    if keras.config.backend() == "tensorflow" and accumulation == "float32":
        product = _tensorflow_half_product(kernel, transposed)
    elif keras.config.backend() == "tensorflow":
        import tensorflow as tf

        def product(rows):
            return tf.matmul(
                rows, kernel, transpose_b=transposed, output_type=accumulation
            )

    else:
        import jax

        contracted = 1 if transposed else 0
        dimensions = (((1,), (contracted,)), ((), ()))

        def product(rows):
            count = 1 if transposed else _input_slices(*kernel.shape, accumulation)
            if count == 1:
                return jax.lax.dot_general(
                    rows, kernel, dimensions, preferred_element_type=accumulation
                )
            return _summed_over_input_slices(rows, kernel, count, accumulation)

    return _one_row_as_two(product, rows)


# Most input features per slice on JAX's YNNPACK (`_input_slices`), by sum, and fewest.
_INPUT_SLICE = {"int32": 256, "float32": 768}
_SMALLEST_SLICE = 128


def _input_slices(features, outputs, accumulation):
    """Into how many equal slices of its inputs JAX multiplies a kernel.

    An int8 kernel (`accumulation="int32"`) is cut into the fewest equal
    slices of at most 256 inputs: GPT-2 base int8 decodes 1.22x faster at
    batch 1 than with only the MLP output in slices of 768 (medium 1.17x;
    batch 8 1.00-1.02x). A half-precision kernel is cut, in slices of at
    most 768, only if it has at least twice as many inputs as outputs
    (GPT-2's MLP output; bfloat16 in slices of 256 decoded 0.87x). At
    least `_SMALLEST_SLICE` inputs a slice, else the kernel stays whole
    (`benchmarks/NOTES.md`).
    """
    if accumulation != "int32" and features < 2 * outputs:
        return 1
    return _equal_slices(features, _INPUT_SLICE[accumulation], _SMALLEST_SLICE)


def _equal_slices(features, most, least):
    """The fewest equal slices of `features` inputs, of at most `most` and
    at least `least` inputs each; 1 if there are none."""
    for count in range(-(-features // most), features // least + 1):
        if features % count == 0:
            return count
    return 1


def _summed_over_input_slices(rows, kernel, count, accumulation):
    """`rows @ kernel` on JAX as one product batched over `count` slices of
    the inputs, the slices' products summed in `accumulation`: exact for
    int8 (int32 sums); for half-precision operands the float32 partial sums
    are added in another order (within float32 rounding).

    Inside `generate()` XLA:CPU's YNNPACK GEMM reads a kernel with many
    inputs at about half the rate of the others: GPT-2 base's int8
    `(3072, 768)` took ~370 us a step, its `(768, 3072)` ~180. Both
    operands are reshaped (free: the kernel's slices are consecutive rows),
    so no slice of the kernel is copied; as separate products of sliced
    operands XLA copied each kernel slice (~74 us each, 18% of an int8
    step). Against those, batched: GPT-2 base int8 1.11-1.15x at batch 1,
    1.05x at batch 8, medium 1.17x, large 1.11x, bfloat16 1.01x; against
    one product, the slices were 1.09x / 1.08x / 1.17x (`benchmarks/NOTES.md`).
    """
    import jax

    features, outputs = kernel.shape
    size = features // count
    slices = jax.lax.dot_general(
        rows.reshape(rows.shape[0], count, size),
        kernel.reshape(count, size, outputs),
        (((2,), (1,)), ((1,), (0,))),
        preferred_element_type=accumulation,
    )  # (count, rows, outputs)
    return slices.sum(axis=0)


def _tensorflow_half_product(kernel, transposed):
    """`rows -> rows @ kernel` in float32 for half-precision operands, as
    `BatchMatMulV3` with a float32 result (the dot XLA runs on the kernel as
    stored), with the gradients of Keras' half-precision product."""
    import tensorflow as tf

    @tf.custom_gradient
    def product(rows, kernel):
        outputs = tf.raw_ops.BatchMatMulV3(x=rows, y=kernel, adj_y=transposed, Tout=tf.float32)

        def grad(upstream):
            upstream = tf.cast(upstream, rows.dtype)
            rows_grad = tf.matmul(upstream, kernel, transpose_b=not transposed)
            if transposed:  # the kernel is stored (out, in)
                return rows_grad, tf.matmul(upstream, rows, transpose_a=True)
            return rows_grad, tf.matmul(rows, upstream, transpose_a=True)

        return outputs, grad

    return lambda rows: product(rows, kernel)


def supports_half(layer):
    """True for a bfloat16/float16 layer that is not quantized, on JAX on a
    CPU or in TensorFlow's XLA on a CPU (within `xla_cpu.tensorflow_xla`)."""
    if layer.compute_dtype not in HALF_PRECISION:
        return False
    return getattr(layer, "quantization_mode", None) is None and on_xla_cpu()


def _half_products(rows, kernel, transposed=False):
    """`rows @ kernel` for half-precision operands, rounded as Keras rounds it.

    XLA:CPU multiplies a half-precision dot with a half-precision result as
    float32 copies of both operands (a widened copy of the kernel on every
    call); asked for a float32 result it runs YNNPACK's bfloat16/float16
    GEMM (`_products_as_stored`). The products are exact in float32 either way
    and both accumulate in float32; the sum's order may differ, so the
    half-precision result may differ in its last bit.
    """
    return ops.cast(_products_as_stored(rows, kernel, transposed, "float32"), rows.dtype)


def _flattened(layer, inputs, kernel):
    """`(rows, kernel2d, unflatten)` for a Dense/EinsumDense over the last axes."""
    out_axes = len(layer.bias.shape)
    contracted = len(kernel.shape) - out_axes
    in_features = math.prod(kernel.shape[:contracted])
    out_shape = tuple(kernel.shape[contracted:])
    batch_shape = tuple(ops.shape(inputs)[: len(inputs.shape) - contracted])
    rows = ops.reshape(inputs, (-1, in_features))

    def unflatten(outputs):
        return ops.reshape(outputs, batch_shape + out_shape)

    return rows, ops.reshape(kernel, (in_features, -1)), unflatten


def _one_row_on_tensorflow(layer, inputs):
    """True for a float Dense/EinsumDense on TensorFlow applied to a single row.

    TensorFlow's XLA (2.21) fuses a one-row product with its bias or
    reshape into a loop on one core (~5.6 GB/s); as two rows it runs on
    its multi-threaded GEMM. GPT-2 base float32 decoding at batch 1 under
    XLA: 33-34 -> 51-55 tok/s (TensorFlow's own kernels: 43-46, with or
    without the padding; `benchmarks/NOTES.md`). The tied LM head, which
    has no bias, is not padded: padded, batch 1 decoded 55 tok/s instead
    of 63.5.
    """
    contracted = _float_contracted_axes(layer)
    if keras.config.backend() != "tensorflow" or contracted is None:
        return False
    return _single_row(inputs, contracted)


def _single_row(inputs, contracted):
    """True if every axis of `inputs` before the `contracted` ones is 1."""
    return all(size == 1 for size in tuple(inputs.shape)[: len(inputs.shape) - contracted])


def _float_contracted_axes(layer):
    """How many input axes a built float layer with a bias contracts, else None."""
    quantized = getattr(layer, "quantization_mode", None) is not None
    if quantized or not layer.built or layer.bias is None:
        return None
    return len(layer.kernel.shape) - len(layer.bias.shape)  # the axes the bias does not span


def _several_axes_on_jax(layer):
    """True on JAX for a float layer contracting several axes (`btnh,nhd->btd`).

    XLA:CPU lays such a kernel out to suit the attention output it
    multiplies, and makes a transposed copy of the kernel per call: inside
    GPT-2 base's `generate()` loop, 11 of the 12 attention output kernels
    (2.25 MB each) were copied on every decoding step. Contracted as 2D
    rows (`_flattened`), the activation is reshaped instead (a few KB) and
    the kernel is read as stored: the compiled generation's temporaries
    fall from 38.5 to 10.6 MB at batch 1 (110.9 -> 84.9 MB at batch 8),
    at the same decoding speed (`benchmarks/NOTES.md`).
    """
    contracted = _float_contracted_axes(layer)
    return keras.config.backend() == "jax" and contracted is not None and contracted > 1


_ONE_ROW_SLICE = 128


def _one_row_input_slices(layer, inputs):
    """Into how many input slices a single row of a float32 layer is
    multiplied by its kernel, on JAX on a CPU and in TensorFlow's XLA on a
    CPU (within `xla_cpu.tensorflow_xla`), or None for any other call.

    XLA:CPU multiplies one row by an `(in, out)` float32 kernel on about one
    core; padded to two rows (TensorFlow), its GEMM reads ~10 GB/s. As one
    product batched over the fewest equal slices of at most 128 inputs
    (`_one_row_over_input_slices`), GPT-2 base's 72 block kernels take
    14.3 ms instead of 18.0 on JAX and 18.0 instead of 35.0 on TensorFlow;
    batch-1 decoding is 1.19-1.25x faster on JAX (medium 1.16x) and 1.69x
    on TensorFlow (`benchmarks/NOTES.md`). More rows are left whole.
    """
    contracted = _float_contracted_axes(layer)
    if contracted is None or layer.compute_dtype != "float32":
        return None
    if not (on_xla_cpu() and _single_row(inputs, contracted)):
        return None
    count = _equal_slices(math.prod(layer.kernel.shape[:contracted]), _ONE_ROW_SLICE, 1)
    return count if count > 1 else None


def _one_row_over_input_slices(row, kernel, count):
    """`row @ kernel`, one `(1, in)` row, batched over `count` equal input
    slices (the kernel only reshaped), summed: within float32 rounding."""
    features, outputs = kernel.shape
    size = features // count
    slices = ops.matmul(ops.reshape(row, (count, 1, size)), ops.reshape(kernel, (count, size, outputs)))
    return ops.sum(slices, axis=0)  # (count, 1, outputs) -> (1, outputs)


def _float32_on_torch_cpu(layer, inputs):
    """True for a float32 layer (not quantized) on float32 torch CPU inputs.

    Its product runs on `torch_matmul.matmul`: oneDNN's GEMM or MKL's,
    whichever is faster on this CPU for the shape (oneDNN ~2x MKL on an AMD
    EPYC).
    """
    if keras.config.backend() != "torch" or not layer.built:
        return False
    if getattr(layer, "quantization_mode", None) is not None or layer.compute_dtype != "float32":
        return False
    weights = layer._kernel if hasattr(layer, "_kernel") else layer._embeddings
    return torch_matmul.supports(inputs, ops.convert_to_tensor(weights))


def dense(layer, inputs):
    """`layer(inputs)` for a `Dense`/`EinsumDense` over the last axes.

    Int8 layers take exact int8 products (XLA-friendly on JAX/TensorFlow),
    int4 ones on JAX/TensorFlow a gather-free dequantization (`supports_int4`),
    half-precision ones on JAX on a CPU or in TensorFlow's XLA a dot with a
    float32 result that reads the kernel as stored (`supports_half`),
    float32 ones on torch on a CPU oneDNN's (`torch_matmul`), a single
    row of a float32 layer on JAX or in TensorFlow's XLA on a CPU a product
    batched over input slices (`_one_row_input_slices`), any other single
    row on TensorFlow a product of two rows (`_one_row_on_tensorflow`), and
    float ones contracting several axes on JAX a product of 2D rows
    (`_several_axes_on_jax`); every other call is the layer's own.

    Args:
        layer: a built `keras.layers.Dense` or `EinsumDense` whose bias spans
            its output axes and without activation (every GPT-2 projection).
        inputs: `(..., *contracted_axes)`.

    Example:
    >>> layer = keras.layers.Dense(4)
    >>> tuple(dense(layer, np.ones((2, 3), "float32")).shape)
    (2, 4)
    """
    if supports_int8(layer):
        rows, kernel, unflatten = _flattened(layer, inputs, layer._kernel)
        outputs = _int8_matmul(
            rows,
            kernel,
            ops.reshape(layer.kernel_scale, (-1,)),
            layer.inputs_quantizer,
            layer.compute_dtype,
        )
        return unflatten(outputs + ops.reshape(layer.bias, (-1,)))
    if supports_int4(layer):
        shape = getattr(layer, "original_kernel_shape", None) or tuple(layer._kernel.shape[:1]) + (-1,)
        inputs = ops.cast(inputs, layer.compute_dtype)
        rows, kernel, unflatten = _flattened(layer, inputs, ops.reshape(int4_kernel(layer), shape))
        # A single row is not padded to two (as float ones are on TensorFlow): XLA
        # fuses the dequantization into the one-row loop, reading the int4
        # values; padded, TensorFlow decoded GPT-2 base at 7.5 tok/s, not 11.7.
        return unflatten(ops.add(ops.matmul(rows, kernel), ops.reshape(layer.bias, (-1,))))
    on_onednn = _float32_on_torch_cpu(layer, inputs)
    half = supports_half(layer)
    several_axes = _several_axes_on_jax(layer)
    one_row_slices = _one_row_input_slices(layer, inputs)
    if not (on_onednn or half or several_axes or one_row_slices or _one_row_on_tensorflow(layer, inputs)):
        return layer(inputs)
    kernel = ops.cast(layer.kernel, layer.compute_dtype)  # LoRA included
    inputs = ops.cast(inputs, layer.compute_dtype)
    rows, kernel, unflatten = _flattened(layer, inputs, kernel)
    bias = ops.cast(ops.reshape(layer.bias, (-1,)), layer.compute_dtype)
    if on_onednn:
        return unflatten(torch_matmul.matmul(rows, kernel, bias))
    if half:
        products = _half_products(rows, kernel)
    elif one_row_slices:
        products = _one_row_over_input_slices(rows, kernel, one_row_slices)
    elif several_axes:
        products = ops.matmul(rows, kernel)
    else:
        products = _one_row_as_two(lambda rows: ops.matmul(rows, kernel), rows)
    return unflatten(ops.add(products, bias))


# At most this many rows' logits are taken table first (`_table_first_chunks`).
_TABLE_FIRST_ROWS = 32


def _table_first_chunks(layer, hidden_states):
    """Into how many vocabulary chunks 2 to 32 rows' float32 logits are
    taken table first, on JAX on a CPU and in TensorFlow's XLA on a CPU
    (within `xla_cpu.tensorflow_xla`), or None for any other call.

    Inside `generate()` XLA:CPU fuses the tied LM head with the sampler's
    softmax. Rows first, `(rows, vocab)`, it read GPT-2 base's table at ~9
    GB/s at batch 8 (17.8 ms a step); table first, `(vocab, rows)` and then
    transposed, at ~17 GB/s (9.2 ms). XLA turns a whole-table product back
    into rows first, so the table is reshaped (no copy) into the fewest
    equal chunks of its vocabulary (GPT-2's 50257: 29 of 1733). Batch 8
    decodes 1.07-1.12x faster on JAX and 1.16x on TensorFlow; one row reads
    the table faster rows first (`benchmarks/NOTES.md`, stop 43).
    """
    quantized = getattr(layer, "quantization_mode", None) is not None
    if quantized or layer.compute_dtype != "float32" or not on_xla_cpu():
        return None
    leading = tuple(hidden_states.shape)[:-1]
    if None in leading or not 2 <= math.prod(leading) <= _TABLE_FIRST_ROWS:
        return None
    vocabulary = layer.input_dim
    return next((c for c in range(2, math.isqrt(vocabulary) + 1) if vocabulary % c == 0), None)


def _table_first_logits(rows, table, chunks):
    """`rows @ table.T`, as `(table @ rows.T).T` over `chunks` vocabulary chunks."""
    vocabulary, hidden = table.shape
    parts = ops.reshape(table, (chunks, vocabulary // chunks, hidden))
    logits = ops.einsum("cvh,rh->cvr", parts, rows)  # (chunks, vocabulary / chunks, rows)
    return ops.transpose(ops.reshape(logits, (vocabulary, -1)))


def reverse_embedding(layer, hidden_states):
    """`layer(hidden_states, reverse=True)`: logits of a tied `ReversibleEmbedding`.

    Int8 embeddings take exact int8 products (XLA-friendly on JAX/TensorFlow),
    int4 ones (JAX/TensorFlow) a gather-free dequantization, half-precision
    ones on JAX on a CPU YNNPACK's GEMM, float32 ones on torch on a CPU
    oneDNN's (see `dense`), and a few float32 rows on XLA:CPU the table
    first (`_table_first_chunks`).
    """
    if not layer.tie_weights or layer.logit_soft_cap is not None:
        return layer(hidden_states, reverse=True)
    same_dtype = keras.backend.standardize_dtype(hidden_states.dtype) == layer.compute_dtype
    own_dtype = same_dtype and layer.reverse_dtype in (None, layer.compute_dtype)
    on_onednn = own_dtype and _float32_on_torch_cpu(layer, hidden_states)
    half = supports_half(layer) and own_dtype
    int4 = supports_int4_table(layer) and same_dtype
    table_first = own_dtype and _table_first_chunks(layer, hidden_states)
    if not (on_onednn or half or int4 or table_first or supports_int8(layer)):
        return layer(hidden_states, reverse=True)
    shape = tuple(ops.shape(hidden_states))
    rows = ops.reshape(hidden_states, (-1, shape[-1]))
    if int4:
        logits = ops.matmul(rows, ops.transpose(int4_table(layer)))
    elif on_onednn:
        logits = torch_matmul.matmul(rows, ops.transpose(layer.embeddings))  # LoRA included
    elif table_first:
        logits = _table_first_logits(rows, layer.embeddings, table_first)  # LoRA included
    elif half:
        table = ops.cast(layer.embeddings, layer.compute_dtype)
        logits = _half_products(rows, table, transposed=True)
    else:
        logits = _int8_matmul(
            rows,
            layer._embeddings,
            ops.reshape(layer.embeddings_scale, (-1,)),
            layer.inputs_quantizer,
            layer.compute_dtype,
            transposed=True,
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
