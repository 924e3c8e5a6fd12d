"""`loop_weights`: low-precision weights widened per layer inside XLA:CPU's
generation loops: the same values and tokens, far fewer temporaries (JAX;
half precision and int4 on TensorFlow)."""

import keras
import numpy as np
import pytest

from gpt2_lib.backends import dense
from gpt2_lib.backends import loop_weights
from gpt2_lib.models import GPT2Backbone
from gpt2_lib.models import GPT2CausalLM

BACKEND = keras.config.backend()
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="XLA:CPU loops of the JAX generate function")
xla_only = pytest.mark.skipif(BACKEND == "torch", reason="XLA:CPU loops (JAX, TensorFlow)")
tensorflow_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's XLA hoisting")
CONFIG = dict(
    # A vocabulary over `tied_logits`' chunk (4096): chunked, the last chunk overlapping.
    vocabulary_size=5000, num_layers=2, num_heads=4, hidden_dim=128,
    intermediate_dim=512, max_sequence_length=64, dropout=0.0,
)


def causal_lm(dtype="float32", quantize=None, **config):
    keras.utils.set_random_seed(0)
    lm = GPT2CausalLM(GPT2Backbone(**{**CONFIG, **config}, dtype=dtype), preprocessor=None)
    if quantize:
        lm.quantize(quantize)
    lm.compile(sampler="greedy")
    return lm


def prompts():
    ids = np.random.default_rng(0).integers(1, CONFIG["vocabulary_size"], (2, 48)).astype("int32")
    mask = np.zeros((2, 48), bool)
    mask[0, :9], mask[1, 4:20] = True, True  # a left-padded row
    return {"token_ids": np.where(mask, ids, 0), "padding_mask": mask}


def test_a_no_op_outside_jax_generation():
    layer = keras.layers.Dense(4, dtype="bfloat16")
    layer.build((None, 3))
    before = [keras.ops.convert_to_numpy(v.value) for v in layer.variables]
    with loop_weights.per_layer_weights(layer, np.ones((1, 3), "float32")):
        after = [keras.ops.convert_to_numpy(v.value) for v in layer.variables]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert loop_weights.supports(layer) == (BACKEND in ("jax", "tensorflow"))


@xla_only
@pytest.mark.parametrize("first", [1.0, -0.0, np.nan, -np.inf], ids=["one", "minus_zero", "nan", "minus_inf"])
@pytest.mark.parametrize("mode", ["bfloat16", "float16", "int8", "int4"])
def test_fenced_values_are_the_weights_bit_for_bit(mode, first):
    layer = keras.layers.Dense(6, dtype=mode if mode in ("bfloat16", "float16") else "float32")
    layer.build((None, 5))
    if mode in ("int8", "int4"):
        layer.quantize(mode)
    assert loop_weights.supports(layer) == (BACKEND == "jax" or mode != "int8")
    values = [v.value for v in layer.variables]
    x = np.full((2, 5), first, "float32")

    @compiled
    def read(values, x):
        with keras.StatelessScope(state_mapping=list(zip(layer.variables, values))):
            with loop_weights.per_layer_weights(layer, x):
                return [v.value for v in layer.variables]

    for expected, got in zip(values, read(values, x)):
        assert got.dtype == expected.dtype
        got, expected = keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(expected)
        np.testing.assert_array_equal(got.view("uint8"), expected.view("uint8"))


@jax_only
def test_gradient_is_the_identity():
    import jax
    import jax.numpy as jnp

    layer = keras.layers.Dense(3, dtype="bfloat16")
    layer.build((None, 4))
    weights = [v.value for v in layer.variables]
    upstream = [jnp.arange(v.size, dtype="float32").reshape(v.shape) for v in weights]

    def loss(values):
        with keras.StatelessScope(state_mapping=list(zip(layer.variables, values))):
            with loop_weights.per_layer_weights(layer, jnp.ones((1, 4))):
                read = [v.value for v in layer.variables]
        return sum(jnp.sum(r.astype("float32") * u) for r, u in zip(read, upstream))

    for gradient, u in zip(jax.grad(loss)(weights), upstream):
        np.testing.assert_array_equal(np.asarray(gradient, "float32"), np.asarray(u.astype("bfloat16"), "float32"))


def _buffer(value):
    if BACKEND == "jax":
        return value.unsafe_buffer_pointer()
    return value.numpy().__array_interface__["data"][0]  # shared with an eager CPU tensor


@xla_only
def test_half_precision_weights_enter_the_function_without_a_copy():
    """Selected on their bits (as zero-copy `uint16` views), except the
    projection kernels, which `dense` multiplies as stored (unchanged)."""
    lm = causal_lm("bfloat16")
    variables = lm.trainable_variables
    carried = loop_weights.carry_in(variables)
    as_stored = 0
    for variable, bits in zip(variables, carried):
        stored = variable.name == "kernel"
        as_stored += stored
        assert keras.backend.standardize_dtype(bits.dtype) == ("bfloat16" if stored else "uint16")
        assert _buffer(bits) == _buffer(variable.value)
    assert as_stored == 6 * CONFIG["num_layers"]  # query, key, value, output, two MLP kernels
    back = loop_weights.carry_out(carried, variables)
    for variable, restored in zip(variables, back):
        assert keras.backend.standardize_dtype(restored.dtype) == variable.dtype
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(keras.ops.cast(restored, "float32")),
            keras.ops.convert_to_numpy(keras.ops.cast(variable.value, "float32")),
        )


def generate_plain(lm, monkeypatch, inputs):
    """`lm.generate(inputs)` without the fence (the reference)."""
    with monkeypatch.context() as patch:
        patch.setattr(loop_weights, "supports", lambda layer: False)
        patch.setattr(loop_weights, "carry_in", lambda variables: [v.value for v in variables])
        lm.generate_function = None
        return lm.generate(inputs, stop_token_ids=None)


@pytest.mark.parametrize(
    "dtype,quantize",
    [("bfloat16", None), ("float32", "int8"), ("float32", "int4"), ("bfloat16", "int4")],
    ids=["bfloat16", "int8", "int4", "bfloat16_int4"],
)
def test_generate_equals_the_unfenced_model(dtype, quantize, monkeypatch):
    lm = causal_lm(dtype, quantize)
    inputs = prompts()
    fenced = lm.generate(inputs, stop_token_ids=None)
    plain = generate_plain(lm, monkeypatch, inputs)
    np.testing.assert_array_equal(fenced["token_ids"], plain["token_ids"])
    lm.generate_function = None
    assert np.array_equal(lm.generate(inputs, stop_token_ids=None)["token_ids"], fenced["token_ids"])


@jax_only
@pytest.mark.parametrize("dtype,quantize", [("bfloat16", None), ("float32", "int8")], ids=["bfloat16", "int8"])
def test_generation_does_not_hold_every_widened_weight(dtype, quantize, monkeypatch):
    """XLA's temporaries: the LM head's and one block's widened kernels, where
    the unfenced program held every block's kernels widened at once."""
    config = dict(vocabulary_size=1024, num_layers=4)  # the blocks dominate
    lm = causal_lm(dtype, quantize, **config)
    inputs = prompts()

    def temporaries():
        return lm.make_generate_function().lower(inputs).compile().memory_analysis().temp_size_in_bytes

    fenced = temporaries()
    with monkeypatch.context() as patch:  # Keras' own products, unfenced
        patch.setattr(loop_weights, "supports", lambda layer: False)
        patch.setattr(loop_weights, "carry_in", lambda variables: [v.value for v in variables])
        patch.setattr(dense, "supports_half", lambda layer: False)
        lm.generate_function = None
        plain = temporaries()
    h, i = CONFIG["hidden_dim"], CONFIG["intermediate_dim"]
    block = (4 * h * h + 2 * h * i) * 4  # one block's kernels, widened to 4 bytes
    head = config["vocabulary_size"] * h * 4
    if dtype == "bfloat16":  # without the fence XLA hoists every widened weight out of the loops
        assert plain > config["num_layers"] * block + head, (plain, block, head)
    # (int8 kernels were already widened inside the loop here, behind `dense`'s
    # barrier, but on GPT-2 base all of them at the start of each step: 342 MB.)
    assert fenced < head + 2 * block, (fenced, plain, block, head)


@jax_only
@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_int8_kernels_and_table_are_contracted_as_stored(quantize):
    """No selected (fenced) copy of an int8 kernel or the int8 tied table in
    the compiled generation: `dense` contracts them as stored, and the
    table's copy was written on every step. int4's packed values, unpacked
    and widened before their products, stay fenced."""
    import re

    lm = causal_lm("float32", quantize)
    hlo = lm.make_generate_function().lower(prompts()).compile().as_text()
    weight_shapes = {
        ",".join(map(str, v.shape)) for v in lm.weights
        if keras.backend.standardize_dtype(v.dtype) == "int8"
    }
    selected = set(re.findall(r"= s8\[([0-9,]+)\]\{[0-9,]*\} select\(", hlo)) & weight_shapes
    assert bool(selected) == (quantize == "int4"), selected


def compiled(function):
    """`function` under XLA: `jax.jit`, or `tf.function(jit_compile=True)`."""
    if BACKEND == "jax":
        import jax

        return jax.jit(function)
    import tensorflow as tf

    return tf.function(function, jit_compile=True, autograph=False)


@xla_only
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("hidden_dtype", ["float32", "compute"])
@pytest.mark.parametrize("rows", [1, 3])
def test_tied_logits_in_chunks_equal_the_embedding(dtype, rows, hidden_dtype):
    """The LM head a chunk of the vocabulary at a time (the last chunk
    overlapping) gives the tied embedding's own logits, in its dtype, up to
    the summation order of a narrower product."""
    layer = keras.layers.ReversibleEmbedding(1000, 32, dtype=dtype)
    layer.build((None,))
    hidden_dtype = dtype if hidden_dtype == "compute" else hidden_dtype
    hidden = np.random.default_rng(0).standard_normal((rows, 2, 32)).astype(hidden_dtype)
    values = [v.value for v in layer.variables]

    @compiled
    def logits(values, hidden):
        with keras.StatelessScope(state_mapping=list(zip(layer.variables, values))):
            return loop_weights.tied_logits(layer, hidden, chunk=300)

    expected = layer(hidden, reverse=True)
    got = logits(values, hidden)
    assert tuple(got.shape) == tuple(expected.shape) and got.dtype == expected.dtype
    tolerance = 1e-6 if got.dtype == "float32" else 8e-3  # one bfloat16 step
    np.testing.assert_allclose(
        np.asarray(got, "float32"), np.asarray(expected, "float32"), rtol=tolerance, atol=tolerance
    )


def _carried_float_elements(lm, inputs):
    """The most float32 elements any while loop of TensorFlow's compiled
    `generate()` carries from one iteration to the next (optimized HLO)."""
    import re

    import tensorflow as tf

    text = lm.make_generate_function().experimental_get_compiler_ir(
        {k: tf.constant(v) for k, v in inputs.items()}, None
    )(stage="optimized_hlo")
    carried = [0]
    for line in text.splitlines():
        if " while(" in line:
            shapes = re.findall(r"f32\[([\d,]*)\]", line.split(" while(")[0])
            carried.append(sum(int(np.prod([int(d) for d in s.split(",") if d])) for s in shapes))
    return max(carried)


@tensorflow_only
@pytest.mark.parametrize("dtype,quantize", [("float32", "int4"), ("bfloat16", None)], ids=["int4", "bfloat16"])
def test_tensorflow_generation_carries_no_widened_weights(dtype, quantize, monkeypatch):
    """Unfenced, XLA dequantizes (int4) or widens (bfloat16) every kernel and
    the tied table once, before the decode loop, and carries the float32
    copies through it (bfloat16 GPT-2 base: a 1453 MB peak for 237 MB of
    weights; fenced, 715 MB)."""
    lm = causal_lm(dtype, quantize)
    inputs = prompts()
    fenced = _carried_float_elements(lm, inputs)
    with monkeypatch.context() as patch:  # Keras' own products, unfenced
        patch.setattr(loop_weights, "supports", lambda layer: False)
        patch.setattr(loop_weights, "carry_in", lambda variables: [v.value for v in variables])
        patch.setattr(dense, "supports_half", lambda layer: False)
        lm.generate_function = None
        plain = _carried_float_elements(lm, inputs)
    lm.generate_function = None
    h, i = CONFIG["hidden_dim"], CONFIG["intermediate_dim"]
    kernels = CONFIG["num_layers"] * (4 * h * h + 2 * h * i)
    table = CONFIG["vocabulary_size"] * h
    assert plain - fenced > 0.95 * (kernels + table), (plain, fenced, kernels, table)
    # What remains: the cache, the position table, logits and small vectors.
    cache = 2 * CONFIG["num_layers"] * 2 * 48 * h  # (batch, layers, 2, length, hidden)
    positions = CONFIG["max_sequence_length"] * h
    assert fenced < cache + positions + 4 * CONFIG["vocabulary_size"], (fenced, cache, positions)


@tensorflow_only
def test_tensorflow_bits_generation_advances_the_sampler_seed(monkeypatch):
    """The bits generate function runs in a `StatelessScope`, and assigns the
    sampler's seed state after it: each call samples anew, as the plain
    function does, from the same seed."""
    from gpt2_lib.samplers import RandomSampler

    def samples(patched):
        lm = causal_lm("bfloat16")
        lm.compile(sampler=RandomSampler(seed=7))
        with monkeypatch.context() as patch:
            if patched:  # every variable read as a variable, as before
                patch.setattr(loop_weights, "enters_as_bits", lambda variable: False)
            return [lm.generate(prompts(), stop_token_ids=None)["token_ids"] for _ in range(3)]

    bits, plain = samples(False), samples(True)
    assert not np.array_equal(bits[0], bits[1])  # the seed advanced
    for got, expected in zip(bits, plain):
        np.testing.assert_array_equal(got, expected)
