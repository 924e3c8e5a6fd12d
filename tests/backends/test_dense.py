"""`backends.dense`: the same results as the Keras layers, float and int8."""

import re

import keras
import numpy as np
import pytest

from gpt2_lib.backends import dense as dense_module
from gpt2_lib.backends import int4_products
from gpt2_lib.backends import xla_cpu
from gpt2_lib.backends.dense import dense
from gpt2_lib.backends.dense import dense_on_rows
from gpt2_lib.backends.dense import reverse_embedding
from tests.backends.gradients import squared_sum_gradients
from tests.backends.gradients import values_and_gradients
from tests.backends.helpers import counted_calls
from tests.backends.helpers import greedy_lm

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
    assert dense_module.supports_int8(layer) == (mode == "int8")
    expected = keras.ops.convert_to_numpy(layer(x))
    actual = keras.ops.convert_to_numpy(dense(layer, x))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


def _input_gradient(fn, x):
    """The gradient of `sum(fn(x) ** 2)` with respect to `x`, as numpy."""
    return squared_sum_gradients(fn, x)[0]


def test_int8_gradient_equals_keras():
    layers, inputs = _layers()
    layer = layers["mlp"]
    layer.quantize("int8")
    x = inputs["mlp"]
    ours, theirs = _input_gradient(lambda t: dense(layer, t), x), _input_gradient(layer, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


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

    One row (batch-1 decoding) takes a padded path on XLA; kernels of
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


@pytest.mark.skipif(keras.config.backend() != "jax", reason="the sliced int8 product is JAX's")
@pytest.mark.parametrize("rows", [1, 8])
def test_jax_int8_products_are_summed_over_slices(rows):
    """On JAX an int8 kernel is multiplied as one int8 product batched over
    the fewest equal slices of at most 256 inputs, summed in int32: equal to
    Keras' layer bit for bit. A kernel whose inputs cannot be cut into
    equal slices of 128-256 stays one product."""
    import jax

    rng = np.random.default_rng(4)
    padded = max(rows, 2)  # a single row is multiplied as two
    cases = (
        (3072, 768, 12),  # GPT-2 base's MLP output: 12 x 256
        (768, 3072, 3),  # its MLP input
        (768, 768, 3),  # its attention kernels
        (4096, 1024, 16),  # medium's MLP output
        (1000, 400, 4),  # 4 x 250
        (1543, 500, 1),  # a prime: no equal slices
        (200, 500, 1),  # 200 inputs: no slices of at least 128
    )
    for in_features, units, slices in cases:
        keras.utils.set_random_seed(0)
        layer = keras.layers.Dense(units)
        layer.build((None, in_features))
        layer.quantize("int8")
        layer._kernel.assign(rng.integers(-127, 128, size=(in_features, units)).astype("int8"))
        x = rng.normal(size=(rows, in_features)).astype("float32")
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(dense(layer, x)), keras.ops.convert_to_numpy(layer(x))
        )
        jaxpr = str(jax.make_jaxpr(lambda x: dense(layer, x))(x))
        assert jaxpr.count("preferred_element_type=int32") == 1, (in_features, units, jaxpr)
        product = f"i32[{slices},{padded},{units}]" if slices > 1 else f"i32[{padded},{units}]"
        assert f"{product} = dot_general" in jaxpr, (in_features, units, jaxpr)


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
    # Keras' int8 reverse embedding has no input gradient; ours is the
    # straight-through one of `dense`: upstream @ dequantized embeddings.
    ours = _input_gradient(lambda h: reverse_embedding(layer, h), hidden)
    logits = keras.ops.convert_to_numpy(reverse_embedding(layer, hidden))
    table = keras.ops.convert_to_numpy(layer._embeddings).astype("float32") / keras.ops.convert_to_numpy(
        layer.embeddings_scale
    ).reshape(-1, 1)
    np.testing.assert_allclose(ours, 2 * logits @ table, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["query", "output", "mlp"])
def test_int4_dense_equals_the_layer_and_its_gradient(name):
    """int4 kernels without Keras' gather (JAX): same outputs, same input gradient."""
    layers, inputs = _layers()
    layer, x = layers[name], inputs[name]
    layer.quantize("int4", config=keras.quantizers.Int4QuantizationConfig(block_size=8))
    assert int4_products.supports_int4(layer) == XLA
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(dense(layer, x)), keras.ops.convert_to_numpy(layer(x)),
        rtol=1e-5, atol=1e-5,
    )
    np.testing.assert_allclose(
        _input_gradient(lambda h: dense(layer, h), x), _input_gradient(layer, x),
        rtol=1e-5, atol=1e-4,
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_int4_reverse_embedding_equals_the_layer_and_its_gradient(dtype):
    """The tied int4 table without Keras' gather: same logits, same input gradient."""
    keras.utils.set_random_seed(0)
    layer = keras.layers.ReversibleEmbedding(300, 256, dtype=dtype)  # two groups of 128
    layer.build((None, None))
    layer.quantize("int4")
    assert int4_products.supports_int4_table(layer) == XLA
    hidden = keras.ops.convert_to_numpy(
        keras.ops.cast(np.random.default_rng(4).normal(size=(3, 2, 256)), dtype)
    )
    ours = keras.ops.convert_to_numpy(keras.ops.cast(reverse_embedding(layer, hidden), "float32"))
    theirs = keras.ops.convert_to_numpy(keras.ops.cast(layer(hidden, reverse=True), "float32"))
    tolerance = 1e-5 if dtype == "float32" else 2**-7 * np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=tolerance)
    if dtype == "float32":
        np.testing.assert_allclose(
            _input_gradient(lambda h: reverse_embedding(layer, h), hidden),
            _input_gradient(lambda h: layer(h, reverse=True), hidden),
            rtol=1e-5, atol=1e-4,
        )


def _compiled(function, x):
    """`(values, optimized HLO text)` of `function(x)` compiled by XLA."""
    if keras.config.backend() == "jax":
        import jax

        compiled = jax.jit(function).lower(x).compile()
        return compiled(x), compiled.as_text()
    import tensorflow as tf

    compiled = tf.function(function, jit_compile=True)
    return compiled(x), compiled.experimental_get_compiler_ir(x)(stage="optimized_hlo")


def _copies_of(text, shape):
    """Lines of HLO `text` defining a buffer of `shape` (either order) that is not int8."""
    shapes = {",".join(map(str, shape)), ",".join(map(str, shape[::-1]))}
    copies = []
    for line in text.splitlines():
        defined = line.split("=", 1)[1].split("(")[0] if "=" in line else ""
        match = re.search(r"(\w+)\[([\d,]+)\]", defined)
        if match and match.group(2) in shapes and match.group(1) != "s8":
            copies.append(line.strip()[:120])
    return copies


@pytest.mark.skipif(not XLA, reason="the int8 product on XLA (JAX, TensorFlow)")
@pytest.mark.parametrize("rows", [1, 3])
def test_int8_under_xla_reads_the_kernel_as_stored(rows):
    """Compiled by XLA, the int8 products still equal Keras' layers bit for
    bit, and the int8 kernels and tied table are read as stored: XLA makes
    no widened or transposed copy of them (TensorFlow's XLA turned a
    transposed int8 table into an int32 copy and a 7x slower product)."""
    keras.utils.set_random_seed(0)
    layer = keras.layers.Dense(96)
    layer.build((None, 768))
    layer.quantize("int8")
    table = keras.layers.ReversibleEmbedding(1000, 64)
    table.build((None, None))
    table.quantize("int8")
    rng = np.random.default_rng(5)
    cases = [
        (layer._kernel, rng.normal(size=(rows, 768)), lambda x: dense(layer, x), layer),
        (table._embeddings, rng.normal(size=(rows, 1, 64)), lambda x: reverse_embedding(table, x),
         lambda x: table(x, reverse=True)),
    ]
    for kernel, x, ours, keras_call in cases:
        x = keras.ops.convert_to_tensor(x.astype("float32"))
        values, text = _compiled(ours, x)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(values), keras.ops.convert_to_numpy(keras_call(x))
        )
        assert not _copies_of(text, tuple(kernel.shape)), _copies_of(text, tuple(kernel.shape))


JAX = keras.config.backend() == "jax"
TF = keras.config.backend() == "tensorflow"
jax_only = pytest.mark.skipif(not JAX, reason="YNNPACK's half-precision GEMM is XLA:CPU's (JAX)")
HALF_STEP = {"bfloat16": 2.0**-8, "float16": 2.0**-11}  # half the spacing at 1


def _assert_half_close(actual, expected, dtype):
    """Equal up to one rounding of the half-precision result (the float32
    sums may be taken in another order)."""
    actual = keras.ops.convert_to_numpy(keras.ops.cast(actual, "float32"))
    expected = keras.ops.convert_to_numpy(keras.ops.cast(expected, "float32"))
    step = 2 * HALF_STEP[dtype]
    np.testing.assert_allclose(actual, expected, rtol=step, atol=step * np.abs(expected).max())


def _half_layers(dtype, rows):
    keras.utils.set_random_seed(0)
    query = keras.layers.EinsumDense("btd,dnh->btnh", (None, 4, 8), bias_axes="nh", dtype=dtype)
    query.build((None, None, 32))
    mlp = keras.layers.Dense(64, dtype=dtype)
    mlp.build((None, 32))
    rng = np.random.default_rng(1)
    for layer in (query, mlp):
        layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))
    # float32 inputs: the layers (and `dense`) cast them to their compute dtype
    inputs = {"query": rng.normal(size=(rows, 1, 32)), "mlp": rng.normal(size=(rows, 32))}
    return {"query": query, "mlp": mlp}, {k: v.astype("float32") for k, v in inputs.items()}


def _on_the_half_path(function):
    """`function` where `dense` takes its half-precision products: as it is
    on JAX; on TensorFlow under XLA within `tensorflow_xla` (TensorFlow has
    no kernel of its own for a half-precision dot with a float32 result)."""
    if not TF:
        return function
    import tensorflow as tf

    def traced(*args):
        with xla_cpu.tensorflow_xla():
            return function(*args)

    return tf.function(traced, jit_compile=True, autograph=False)


@pytest.mark.parametrize("rows", [1, 2, 8])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", ["query", "mlp"])
def test_half_precision_dense_equals_the_layer(name, dtype, rows):
    layers, inputs = _half_layers(dtype, rows)
    layer, x = layers[name], inputs[name]
    assert dense_module.supports_half(layer) == JAX  # TensorFlow: only under XLA
    with xla_cpu.tensorflow_xla():
        assert dense_module.supports_half(layer) == (JAX or TF)
    expected, actual = layer(x), _on_the_half_path(lambda x: dense(layer, x))(x)
    assert keras.backend.standardize_dtype(actual.dtype) == dtype
    assert tuple(actual.shape) == tuple(expected.shape)
    _assert_half_close(actual, expected, dtype)


@jax_only
@pytest.mark.parametrize("rows", [1, 8])
def test_half_precision_kernel_is_multiplied_as_stored(rows):
    """No widened (float32) copy of the kernel: XLA's temporaries stay far
    below it, where Keras' own product widens it on every call."""
    import jax

    layer = keras.layers.Dense(1024, dtype="bfloat16")
    layer.build((None, 1024))
    x = np.ones((rows, 1024), "float32")
    widened = 1024 * 1024 * 4

    def temporaries(fn):
        def call(values, x):  # the weights as arguments, not folded constants
            with keras.StatelessScope(state_mapping=list(zip(layer.variables, values))):
                return fn(x)

        values = [v.value for v in layer.variables]
        return jax.jit(call).lower(values, x).compile().memory_analysis().temp_size_in_bytes

    assert temporaries(layer) >= widened
    assert temporaries(lambda x: dense(layer, x)) < widened // 8


@pytest.mark.skipif(not TF, reason="TensorFlow's XLA")
@pytest.mark.parametrize("rows", [1, 8])
def test_half_precision_kernel_is_multiplied_as_stored_in_tensorflow_xla(rows):
    """TensorFlow's XLA widens the kernel for Keras' own product (a float32
    kernel-shaped buffer in the optimized HLO); `dense` within
    `tensorflow_xla` multiplies it as stored."""
    import tensorflow as tf

    layer = keras.layers.Dense(1024, dtype="bfloat16")
    layer.build((None, 1024))
    x = tf.ones((rows, 1024), "float32")

    def widened_kernels(fn):
        compiled = _on_the_half_path(fn)
        compiled(x)
        return compiled.experimental_get_compiler_ir(x)(stage="optimized_hlo").count("f32[1024,1024]")

    assert widened_kernels(layer) > 0
    assert widened_kernels(lambda x: dense(layer, x)) == 0


def _half_gradients(layer, x, fn):
    """Gradients of `sum(fn(x) ** 2)` (in float32) with respect to the layer's
    trainable variables and `x`, on JAX or TensorFlow."""
    if JAX:
        import jax
        import jax.numpy as jnp

        def of(values, x):
            with keras.StatelessScope(state_mapping=list(zip(layer.trainable_variables, values))):
                return jnp.sum(fn(x).astype("float32") ** 2)

        values = [v.value for v in layer.trainable_variables]
        grad_w, grad_x = jax.grad(of, argnums=(0, 1))(values, x)
        return list(grad_w) + [grad_x]
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.cast(fn(x), "float32") ** 2)
    return tape.gradient(loss, layer.trainable_variables + [x])


@pytest.mark.skipif(not (JAX or TF), reason="the half-precision path is XLA's (JAX, TensorFlow)")
@pytest.mark.parametrize("rows", [1, 8])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", ["query", "mlp"])
def test_half_precision_gradients_equal_keras(name, dtype, rows):
    layers, inputs = _half_layers(dtype, rows)
    layer, x = layers[name], inputs[name]
    ours = _on_the_half_path(lambda: _half_gradients(layer, x, lambda x: dense(layer, x)))()
    for ours, theirs in zip(ours, _half_gradients(layer, x, layer)):
        assert ours.dtype == theirs.dtype
        _assert_half_close(ours, theirs, dtype)


@jax_only
@pytest.mark.parametrize("rows", [1, 8])
def test_half_precision_products_with_many_inputs_are_summed_over_slices(rows):
    """A half-precision kernel with at least twice as many inputs as outputs
    is multiplied batched over slices of at most 768 inputs on JAX: the outputs and
    gradients equal Keras' layer within one half-precision rounding."""
    import jax

    keras.utils.set_random_seed(0)
    layer = keras.layers.Dense(256, dtype="bfloat16")
    layer.build((None, 1536))
    x = np.random.default_rng(6).normal(size=(rows, 1536)).astype("float32")
    _assert_half_close(dense(layer, x), layer(x), "bfloat16")
    jaxpr = str(jax.make_jaxpr(lambda x: dense(layer, x))(x))
    assert jaxpr.count("preferred_element_type=float32") == 1, jaxpr
    assert f"f32[2,{max(rows, 2)},256] = dot_general" in jaxpr, jaxpr  # two slices of 768
    ours = _half_gradients(layer, x, lambda x: dense(layer, x))
    for ours, theirs in zip(ours, _half_gradients(layer, x, layer)):
        _assert_half_close(ours, theirs, "bfloat16")


def test_half_precision_dense_with_lora_equals_the_layer():
    layers, inputs = _half_layers("bfloat16", 2)
    layer = layers["mlp"]
    layer.enable_lora(2)
    layer.lora_kernel_b.assign(np.full(layer.lora_kernel_b.shape, 0.5))
    actual = _on_the_half_path(lambda x: dense(layer, x))(inputs["mlp"])
    _assert_half_close(actual, layer(inputs["mlp"]), "bfloat16")


@pytest.mark.parametrize("hidden_dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("rows", [1, 3])
def test_half_precision_reverse_embedding_equals_the_layer(rows, hidden_dtype):
    """In the layer's dtype on YNNPACK; float32 hidden states (a float32
    product in Keras) are left to the layer."""
    keras.utils.set_random_seed(0)
    layer = keras.layers.ReversibleEmbedding(300, 32, dtype="bfloat16")
    layer.build((None, None))
    hidden = keras.ops.cast(np.random.default_rng(2).normal(size=(rows, 2, 32)), hidden_dtype)
    expected = layer(hidden, reverse=True)
    actual = _on_the_half_path(lambda hidden: reverse_embedding(layer, hidden))(hidden)
    assert actual.dtype == expected.dtype and tuple(actual.shape) == (rows, 2, 300)
    _assert_half_close(actual, expected, "bfloat16")


# === One row on TensorFlow ===

tf_only = pytest.mark.skipif(not TF, reason="TensorFlow's XLA one-row loop")


def _one_row_cases(dtype, lora):
    """GPT-2's projections, each with a single row."""
    layers, inputs = _half_layers(dtype, 1)
    if lora:
        for layer in layers.values():
            layer.enable_lora(2)
            layer.lora_kernel_b.assign(np.full(layer.lora_kernel_b.shape, 0.5))
    return [(layers["query"], inputs["query"]), (layers["mlp"], inputs["mlp"])]


@tf_only
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_row_on_tensorflow_equals_the_layer(dtype, lora):
    """A single row (a batch-1 decoding step) is multiplied as two rows,
    eagerly and under XLA (where one row would be a one-core loop): the
    layer's values, and its gradients for the input and the weights."""
    import tensorflow as tf

    for layer, x in _one_row_cases(dtype, lora):
        assert dense_module._one_row_on_tensorflow(layer, x)
        x = tf.convert_to_tensor(x)

        def outputs_and_gradients(call):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = call(layer, x)
                loss = tf.reduce_sum(tf.cast(out, "float32") ** 2)
            return [out] + tape.gradient(loss, [x] + layer.trainable_variables)

        expected = outputs_and_gradients(lambda layer, x: layer(x))
        for actual in (outputs_and_gradients(dense), tf.function(outputs_and_gradients, jit_compile=True)(dense)):
            for a, e in zip(actual, expected):
                assert a.dtype == e.dtype and a.shape == e.shape
                if dtype == "float32":
                    np.testing.assert_allclose(a.numpy(), e.numpy(), rtol=1e-5, atol=1e-5 * np.abs(e.numpy()).max())
                else:
                    _assert_half_close(a, e, dtype)


def test_only_a_single_float_row_is_padded_on_tensorflow():
    layers, inputs = _layers()
    assert not dense_module._one_row_on_tensorflow(layers["mlp"], inputs["mlp"])  # 10 rows
    one = inputs["mlp"][:1]
    assert dense_module._one_row_on_tensorflow(layers["mlp"], one) == TF
    assert dense_module._one_row_on_tensorflow(layers["query"], inputs["query"][:1, :1]) == TF
    assert not dense_module._one_row_on_tensorflow(keras.layers.Dense(4), one)  # not built
    layers["mlp"].quantize("int8")  # int8 rows take `_products_as_stored`
    assert not dense_module._one_row_on_tensorflow(layers["mlp"], one)


def _assert_dense_values_and_gradients_equal_the_layer(layer, x):
    """`dense(layer, x)` against `layer(x)`: values and the gradients of the
    input and every trainable weight within float32 rounding, eager and
    compiled."""
    expected = values_and_gradients(layer, layer, x, jit=False)
    for jit in (False, True):
        actual = values_and_gradients(layer, lambda x: dense(layer, x), x, jit)
        assert len(actual) == len(expected) == 2 + len(layer.trainable_variables)
        for a, e in zip(actual, expected):
            assert a.shape == e.shape
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * np.abs(e).max())


@jax_only
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("rows", [1, 5])
def test_several_axes_on_jax_equal_the_layer_and_its_gradients(rows, lora):
    """The attention output (`btnh,nhd->btd`) multiplied as 2D rows: the
    layer's values and its gradients for the input and every trainable
    weight (LoRA's included), eagerly and under `jax.jit`."""
    layers, inputs = _layers()
    layer, x = layers["output"], inputs["output"][:, :rows]
    if lora:
        layer.enable_lora(2)
        layer.lora_kernel_b.assign(np.full(layer.lora_kernel_b.shape, 0.5, "float32"))
    assert dense_module._several_axes_on_jax(layer)
    assert not dense_module._several_axes_on_jax(layers["query"])  # one contracted axis
    _assert_dense_values_and_gradients_equal_the_layer(layer, x)


@jax_only
def test_generation_reads_the_attention_output_kernels_as_stored(monkeypatch):
    """Inside JAX's compiled `generate()`, Keras' einsum for the attention
    output made XLA copy each output kernel transposed, `(head_dim, heads,
    hidden)`, on every step; as 2D rows no such copy is left."""
    lm = greedy_lm(128, 32, 64)
    mask = np.zeros((1, 16), bool)
    mask[:, :4] = True
    inputs = lm._padded_to_bucket({"token_ids": np.zeros((1, 16), "int32"), "padding_mask": mask})

    def transposed_kernels():
        lm.generate_function = None
        text = lm.make_generate_function().lower(inputs).compile().as_text()
        return re.findall(r"= f32\[8,4,32\]\{[\d,]+\} (?:transpose|copy)\(", text)

    assert not transposed_kernels()
    monkeypatch.setattr(dense_module, "_several_axes_on_jax", lambda layer: False)  # Keras' einsum
    assert transposed_kernels()



def _one_row_float32_layers():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(7)
    up = keras.layers.Dense(3072)
    up.build((None, None, 768))
    down = keras.layers.Dense(768)
    down.build((None, None, 3072))
    output = keras.layers.EinsumDense("btnh,nhd->btd", (None, 768), bias_axes="d")
    output.build((None, None, 12, 64))
    odd = keras.layers.Dense(50)
    odd.build((None, None, 131))  # a prime: no equal slices of at most 128
    for layer in (up, down, output, odd):
        layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))
    return {"up": (up, (768,), 6), "down": (down, (3072,), 24), "output": (output, (12, 64), 6),
            "odd": (odd, (131,), 131)}


def _batched_products(layer, x):
    """The `(batch, rows, outputs)` shapes of the batched float32 products
    that `dense(layer, x)` traces (in TensorFlow's XLA on TensorFlow)."""
    if JAX:
        import jax

        jaxpr = str(jax.make_jaxpr(lambda x: dense(layer, x))(x))
        return [tuple(map(int, shape)) for shape in re.findall(r"f32\[(\d+),(\d+),(\d+)\] = dot_general", jaxpr)]
    import tensorflow as tf

    with xla_cpu.tensorflow_xla():
        graph = tf.function(lambda x: dense(layer, x)).get_concrete_function(tf.TensorSpec(x.shape)).graph
    return [tuple(op.outputs[0].shape) for op in graph.get_operations() if op.type.startswith("BatchMatMul")]


@pytest.mark.skipif(not XLA, reason="input slices are for XLA:CPU (JAX, TensorFlow's XLA)")
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("name", ["up", "down", "output", "odd"])
def test_one_float32_row_in_xla_is_summed_over_input_slices(name, lora):
    """A single row of a float32 layer on JAX's CPU or in TensorFlow's XLA
    is multiplied as one product batched over the fewest equal slices of at
    most 128 inputs (768 -> 6, 3072 -> 24; 131, a prime, -> 131 slices of
    one): the layer's values and the gradients of the input and every
    trainable weight (LoRA's included) within float32 rounding, eagerly and
    compiled. Two rows are left to XLA's GEMM."""
    layer, contracted, slices = _one_row_float32_layers()[name]
    if lora:
        layer.enable_lora(2)
        layer.lora_kernel_b.assign(np.full(layer.lora_kernel_b.shape, 0.05, "float32"))
    rng = np.random.default_rng(8)
    one = rng.normal(size=(1, 1, *contracted)).astype("float32")
    two = rng.normal(size=(1, 2, *contracted)).astype("float32")
    with xla_cpu.tensorflow_xla():
        assert dense_module._one_row_input_slices(layer, one) == slices
        assert dense_module._one_row_input_slices(layer, two) is None
    units = layer.bias.shape[-1]
    assert (slices, 1, units) in _batched_products(layer, one)  # (LoRA's kernel is a product too)
    assert not [shape for shape in _batched_products(layer, two) if shape[0] == slices]
    _assert_dense_values_and_gradients_equal_the_layer(layer, one)


@pytest.mark.skipif(not XLA, reason="input slices are for XLA:CPU (JAX, TensorFlow's XLA)")
def test_one_row_input_slices_only_for_float32_in_xla():
    """Not for half precision, int8, a kernel of at most 128 inputs, a
    symbolic batch, nor TensorFlow outside its XLA generate function."""
    row = np.ones((1, 768), "float32")
    keras.utils.set_random_seed(0)
    wide = keras.layers.Dense(64)
    wide.build((None, 768))
    assert dense_module._one_row_input_slices(wide, row) == (6 if JAX else None)
    assert _batched_products(wide, row) == [(6, 1, 64)]
    with xla_cpu.tensorflow_xla():
        assert dense_module._one_row_input_slices(wide, row) == 6
        assert dense_module._one_row_input_slices(wide, keras.KerasTensor((None, 768))) is None
        half = keras.layers.Dense(64, dtype="bfloat16")
        half.build((None, 768))
        assert dense_module._one_row_input_slices(half, row) is None
        quantized = keras.layers.Dense(64)
        quantized.build((None, 768))
        quantized.quantize("int8")
        assert dense_module._one_row_input_slices(quantized, row) is None
        small = keras.layers.Dense(64)
        small.build((None, 128))  # one slice: left whole
        assert dense_module._one_row_input_slices(small, np.ones((1, 128), "float32")) is None


@pytest.mark.skipif(not XLA, reason="input slices are for XLA:CPU (JAX, TensorFlow's XLA)")
def test_float32_generation_over_input_slices_equals_whole_products(monkeypatch):
    """Batch-1 float32 decoding on JAX and in TensorFlow's XLA, its one-row
    products over input slices: the same greedy tokens as whole products,
    and one token's hidden states within float32 rounding."""
    lm = greedy_lm(256, 256, 1024)
    backbone = lm.backbone
    counts = counted_calls(monkeypatch, dense_module, "_one_row_over_input_slices")
    mask = np.zeros((1, 24), bool)
    mask[:, :5] = True
    prompt = {"token_ids": np.arange(24, dtype="int32")[None] % 256, "padding_mask": mask}
    one_token = {"token_ids": np.array([[7]], "int32"), "padding_mask": np.ones((1, 1), bool)}

    def run():
        lm.generate_function = None
        tokens = lm.generate(prompt, max_length=24, stop_token_ids=None)["token_ids"]
        generated = sorted(set(counts))
        with xla_cpu.tensorflow_xla():
            hidden = backbone(one_token)
        return np.asarray(tokens), keras.ops.convert_to_numpy(hidden), generated

    ours = run()
    assert ours[2] == [2, 8], counts  # 256 inputs -> 2 slices; the MLP output's 1024 -> 8
    monkeypatch.setattr(dense_module, "_one_row_input_slices", lambda layer, inputs: None)
    counts.clear()
    whole = run()
    assert not counts
    np.testing.assert_array_equal(ours[0], whole[0])
    np.testing.assert_allclose(ours[1], whole[1], rtol=1e-5, atol=1e-5)
