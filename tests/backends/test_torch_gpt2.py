"""The torch fast path (`TorchBlocks`) equals the Keras blocks it replaces."""

import keras
import numpy as np
import pytest
from keras.src.models.functional import Functional

from gpt2_lib.backends import torch_gpt2
from gpt2_lib.models import GPT2Backbone
from gpt2_lib.models import GPT2CausalLM

TORCH = keras.config.backend() == "torch"


def _backbone(**kwargs):
    keras.utils.set_random_seed(0)
    config = dict(vocabulary_size=100, num_layers=2, num_heads=4, hidden_dim=32,
                  intermediate_dim=64, max_sequence_length=32, dropout=0.0)
    config.update(kwargs)
    backbone = GPT2Backbone(**config)
    # Non-trivial LayerNorm parameters and biases, so that a swapped or
    # missing weight shows.
    rng = np.random.default_rng(7)
    for variable in backbone.weights:
        if variable.name in ("gamma", "beta", "bias"):
            variable.assign(rng.normal(0.5, 0.3, variable.shape).astype(variable.dtype))
    return backbone


def _inputs(position_ids=False):
    rng = np.random.default_rng(0)
    mask = np.ones((3, 10), "int32")
    mask[1, 7:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    inputs = {"token_ids": rng.integers(0, 100, (3, 10)).astype("int32"), "padding_mask": mask}
    if position_ids:
        inputs["position_ids"] = rng.integers(0, 32, (3, 10)).astype("int32")
    return inputs


def _graph(backbone, inputs, training=False):
    """The functional graph of Keras layers itself, never the fast path."""
    return Functional.call(backbone, {"position_ids": None, **inputs}, training=training)


@pytest.fixture
def count_fast(monkeypatch):
    calls = []
    original = torch_gpt2.TorchBlocks.__call__

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch_gpt2.TorchBlocks, "__call__", counted)
    return calls


def _generation_blocks(lm):
    """`lm`'s fast generation blocks: `TorchBlocks` on torch, None (checked) elsewhere."""
    blocks = lm.generation_blocks()
    assert isinstance(blocks, torch_gpt2.TorchBlocks) if TORCH else blocks is None
    return blocks


def _run_cached(model, blocks, ids, length=12):
    """Prompt logits, one step's logits and the cache, on `blocks` (None: Keras layers)."""
    mask = np.ones((ids.shape[0], length), bool)
    cache = model.backbone.build_cache(ids.shape[0], length)
    logits, _, cache = model.call_with_cache(ids[:, :9], mask, cache, 0, blocks=blocks)
    step, _, cache = model.call_with_cache(ids[:, 9:10], mask, cache, 9, blocks=blocks)
    as_numpy = keras.ops.convert_to_numpy
    return as_numpy(logits).astype("float32"), as_numpy(step).astype("float32"), as_numpy(cache)


@pytest.mark.parametrize("position_ids", [False, True])
@pytest.mark.parametrize("lora", [False, True])
def test_forward_equals_keras_blocks(count_fast, position_ids, lora):
    backbone = _backbone()
    if lora:
        backbone.enable_lora(rank=2)
        for variable in backbone.trainable_variables:  # LoRA B starts at zero
            variable.assign(np.random.default_rng(1).normal(0, 0.1, variable.shape))
    inputs = _inputs(position_ids)
    out = keras.ops.convert_to_numpy(backbone(inputs))
    reference = keras.ops.convert_to_numpy(_graph(backbone, inputs))
    mask = inputs["padding_mask"].astype(bool)
    np.testing.assert_allclose(out[mask], reference[mask], atol=1e-5, rtol=0)
    assert len(count_fast) == (1 if TORCH else 0)


def test_forward_gradients_equal_keras_blocks():
    backbone = _backbone()
    inputs = _inputs()
    if not TORCH:
        assert not torch_gpt2.supports(backbone, inputs["token_ids"], training=True)
        return
    weights = keras.ops.convert_to_tensor(np.asarray(inputs["padding_mask"], "float32")[..., None])

    def gradients(forward):
        for variable in backbone.trainable_variables:
            variable.value.grad = None
        keras.ops.sum(forward() ** 2 * weights).backward()
        return [keras.ops.convert_to_numpy(v.value.grad) for v in backbone.trainable_variables]

    fast = gradients(lambda: backbone(inputs, training=True))
    graph = gradients(lambda: _graph(backbone, inputs, training=True))
    assert len(fast) == len(backbone.trainable_variables)
    for a, b in zip(fast, graph):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_keras_path_when_the_fast_path_cannot_match(count_fast):
    inputs = _inputs()
    ids = inputs["token_ids"]
    with_dropout = _backbone(dropout=0.5)
    assert torch_gpt2.supports(with_dropout, ids, training=False) == TORCH
    assert not torch_gpt2.supports(with_dropout, ids, training=True)
    with_dropout(inputs, training=True)
    assert not torch_gpt2.supports(_backbone(dtype="mixed_bfloat16"), ids)
    assert torch_gpt2.supports(_backbone(dtype="bfloat16"), ids) == TORCH
    assert not torch_gpt2.supports(_backbone(), keras.KerasTensor((None, 10), "int32"))
    quantized = _backbone()
    quantized.quantize("int8")
    assert not torch_gpt2.supports(quantized, ids)
    assert count_fast == []


@pytest.mark.parametrize(
    "dtype, atol, amx", [("float32", 1e-5, False), ("bfloat16", 0.1, False), ("bfloat16", 0.1, True)]
)
def test_cached_steps_equal_keras_cached_steps(monkeypatch, dtype, atol, amx):
    """Prompt chunk then one-token steps: logits and cache as the Keras layers
    (bfloat16 also with AMX's column-major kernels taken first)."""
    from gpt2_lib.backends import torch_matmul

    monkeypatch.setattr(torch_matmul, "on_amx", lambda: amx)
    backbone = _backbone(dtype=dtype)
    lm = GPT2CausalLM(backbone)
    blocks = _generation_blocks(lm)
    if blocks is None:
        return
    inputs = _inputs()
    length = 16
    mask = np.zeros((3, length), bool)
    mask[:, :10] = inputs["padding_mask"].astype(bool)
    mask[:, 10:] = True  # slots for new tokens
    ids = np.zeros((3, length), "int32")
    ids[:, :10] = inputs["token_ids"]
    ids[:, 10:] = np.arange(6)[None] + 40

    def run(fast):
        cache = backbone.build_cache(3, length)
        chunk = fast if fast is None else fast
        _, _, cache = lm.call_with_cache(ids[:, :8], mask, cache, 0, blocks=chunk)
        outputs = []
        for index in range(8, 12):
            logits, _, cache = lm.call_with_cache(ids[:, index : index + 1], mask, cache, index, blocks=fast)
            outputs.append(keras.ops.convert_to_numpy(keras.ops.cast(logits, "float32")))
        return np.stack(outputs), keras.ops.convert_to_numpy(keras.ops.cast(cache, "float32"))

    fast_logits, fast_cache = run(blocks)
    keras_logits, keras_cache = run(None)
    np.testing.assert_allclose(fast_logits, keras_logits, atol=atol, rtol=0)
    np.testing.assert_allclose(fast_cache, keras_cache, atol=atol, rtol=0)


def test_cached_steps_read_only_the_keys_written_so_far():
    """The fast path's attention reads the cache up to the last query's
    position: slots past it holding NaN change nothing (reading them would
    spread NaN through the zero-probability products)."""
    backbone = _backbone()
    lm = GPT2CausalLM(backbone)
    blocks = _generation_blocks(lm)
    if blocks is None:
        return
    ids = np.random.default_rng(0).integers(0, 100, (2, 12)).astype("int32")
    mask = np.ones((2, 12), bool)

    def run(fill):
        cache = keras.ops.full(keras.ops.shape(backbone.build_cache(2, 12)), fill)
        logits, _, cache = lm.call_with_cache(ids[:, :6], mask, cache, 0, blocks=blocks)
        step, _, _ = lm.call_with_cache(ids[:, 6:7], mask, cache, 6, blocks=blocks)
        return [keras.ops.convert_to_numpy(x) for x in (logits, step)]

    for with_nan, with_zeros in zip(run(float("nan")), run(0.0)):
        np.testing.assert_array_equal(with_nan, with_zeros)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_steps_attend_over_windows_of_the_cache(monkeypatch, dtype):
    """In lower precision a cached step attends over the cache up to the end
    of its window (`attention.torch_key_end`): the attention's kernels are
    kept per shape, so a generation must make a few key lengths, not one
    per step. The keys the window adds are masked: whatever the slots past
    the step hold, the logits are the same, and they equal attending over
    the exact keys. It runs SDPA's fused kernel, not its math fallback
    (strided projections sent it there)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from gpt2_lib.backends import attention

    backbone = _backbone(dtype=dtype)
    lm = GPT2CausalLM(backbone)
    blocks = _generation_blocks(lm)
    if blocks is None:
        return
    length = 16
    ids = np.random.default_rng(0).integers(0, 100, (2, length)).astype("int32")
    mask = np.ones((2, length), bool)
    fused = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default

    class Attention(TorchDispatchMode):
        """The key lengths the steps' attention ran over, and its kernels."""

        def __init__(self):
            super().__init__()
            self.key_lengths, self.kernels = set(), set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "attention" in str(func):
                self.kernels.add(func)
                self.key_lengths.add(args[1].shape[2])  # keys: (batch, heads, keys, head_dim)
            return func(*args, **(kwargs or {}))

    def run(fill, window):
        monkeypatch.setattr(attention, "TORCH_CACHE_WINDOW", window)
        cache = keras.ops.full(keras.ops.shape(backbone.build_cache(2, length)), fill)
        cache = keras.ops.cast(cache, dtype)
        _, _, cache = lm.call_with_cache(ids[:, :4], mask, cache, 0, blocks=blocks)
        steps = []
        with Attention() as seen:
            for index in range(4, length - 1):
                logits, _, cache = lm.call_with_cache(
                    ids[:, index : index + 1], mask, cache, index, blocks=blocks
                )
                steps.append(keras.ops.convert_to_numpy(keras.ops.cast(logits, "float32")))
        assert seen.kernels == {fused}
        return np.stack(steps), seen.key_lengths

    windowed, key_lengths = run(0.0, window=4)
    assert key_lengths == {8, 12, 16}  # steps at positions 4..14: windows ending at 8, 12, 16
    with_garbage, _ = run(50.0, window=4)
    np.testing.assert_array_equal(with_garbage, windowed)
    exact, key_lengths = run(0.0, window=1)
    assert key_lengths == set(range(5, length))
    np.testing.assert_allclose(windowed, exact, atol=0.05, rtol=0)


def test_cached_step_writes_a_broadcast_cache():
    """Beam search repeats a one-row cache; the fast path must still write it."""
    backbone = _backbone()
    lm = GPT2CausalLM(backbone)
    if not TORCH:
        return
    ids = np.array([[5, 6, 7, 8]], "int32")
    mask = np.ones((1, 4), bool)
    one_row = backbone.build_cache(1, 4)
    cache = keras.ops.broadcast_to(one_row, (3, *one_row.shape[1:]))
    logits, _, new_cache = lm.call_with_cache(
        np.repeat(ids[:, :2], 3, axis=0), np.repeat(mask, 3, axis=0), cache, 0,
        blocks=lm.generation_blocks(),
    )
    reference, _, _ = lm.call_with_cache(ids[:, :2], mask, backbone.build_cache(1, 4), 0)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(logits)[0], keras.ops.convert_to_numpy(reference)[0], atol=1e-5
    )
    assert keras.ops.convert_to_numpy(new_cache)[:, :, :, :2].any()


def test_empty_batch_and_empty_sequence():
    backbone = _backbone()
    for shape in [(0, 5), (2, 0)]:
        inputs = {"token_ids": np.zeros(shape, "int32"), "padding_mask": np.ones(shape, "int32")}
        assert tuple(backbone(inputs).shape) == shape + (32,)


def test_int8_generation_equals_keras_int8_layers():
    """int8 layers in the fast path compute what Keras' int8 layers compute."""
    backbone = _backbone()
    float_lm = GPT2CausalLM(_backbone())
    backbone.quantize("int8")
    lm = GPT2CausalLM(backbone)
    blocks = _generation_blocks(lm)
    if blocks is None:
        return
    assert not torch_gpt2.supports(backbone)  # training/forward stays on Keras' layers
    ids = _inputs()["token_ids"]
    fast = _run_cached(lm, blocks, ids)
    keras_int8 = _run_cached(lm, None, ids)
    float32 = _run_cached(float_lm, None, ids)
    for ours, theirs, exact in zip(fast, keras_int8, float32):
        # Same quantized math: far closer to Keras' int8 than int8 is to float.
        assert np.abs(ours - theirs).max() <= 1e-4 + 0.01 * np.abs(theirs - exact).max()


def test_int8_inputs_are_quantized_exactly_as_keras_quantizes_them():
    """Same int8 values and scales as Keras' `abs_max_quantize`: the scale
    is a true division (torch's `127.0 / x` is a reciprocal times 127, an
    ulp off Keras' scale for about a quarter of the values)."""
    if not TORCH:
        return
    import torch
    from keras.quantizers import abs_max_quantize

    backbone = _backbone()
    backbone.quantize("int8")
    blocks = torch_gpt2.TorchBlocks(backbone, for_generation=True)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(256, 96, generator=generator) * torch.rand(256, 1, generator=generator) * 5
    values, scale = blocks._quantize(rows)
    expected_values, expected_scale = abs_max_quantize(rows, axis=-1)
    assert torch.equal(scale, expected_scale)
    assert torch.equal(values, expected_values)


def test_int8_generation_runs_int8_products(monkeypatch):
    if not TORCH:
        return
    from gpt2_lib.backends import torch_matmul

    calls = []
    original = torch_matmul.int8_kernel_products

    def counted(*args, **kwargs):
        products = original(*args, **kwargs)
        return lambda rows: calls.append(1) or products(rows)

    monkeypatch.setattr(torch_matmul, "int8_kernel_products", counted)
    backbone = _backbone()
    backbone.quantize("int8")
    lm = GPT2CausalLM(backbone)
    lm.compile(sampler="greedy")
    lm.generate({"token_ids": np.array([[5, 6, 0, 0]]), "padding_mask": np.array([[1, 1, 0, 0]])},
                stop_token_ids=None)
    # 4 int8 matmuls per block (query, key and value side by side, output, 2
    # MLP): one prefill pass over the first token, then 2 steps that also run
    # the LM head.
    assert len(calls) == 4 * 2 + 2 * (4 * 2 + 1)


@pytest.mark.parametrize("mode", ["int8", "bfloat16"])
def test_layout_change_keeps_values_and_saves(monkeypatch, tmp_path, mode):
    """The fast path stores int8 kernels column-major (bfloat16 ones too on
    AMX), query, key and value side by side: same values, same presets, and
    a bfloat16 model trains after."""
    from gpt2_lib.backends import torch_matmul

    monkeypatch.setattr(torch_matmul, "on_amx", lambda: True)
    trims = []
    monkeypatch.setattr(torch_gpt2, "return_freed_memory", lambda: trims.append(1))
    backbone = _backbone(dtype="bfloat16" if mode == "bfloat16" else "float32")
    if mode == "int8":
        backbone.quantize("int8")
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in backbone.weights}
    lm = GPT2CausalLM(backbone)
    if lm.generation_blocks() is None:
        return
    assert len(trims) == 1  # the old storage handed back once the kernels were re-laid
    dense = next(e.layer for e in backbone.weight_table()
                 if e.block == 0 and e.role == "feedforward_intermediate_dense")
    kernel = keras.ops.convert_to_tensor(dense._kernel)
    assert kernel.stride(0) == 1  # column-major

    def query_key_value():
        roles = ("self_attention/query", "self_attention/key", "self_attention/value")
        return [keras.ops.convert_to_tensor(e.layer._kernel) for e in backbone.weight_table()
                if e.block == 0 and e.role in roles]

    # Query, key and value side by side in one buffer, which a later generation reuses.
    buffers = {part.untyped_storage().data_ptr() for part in query_key_value()}
    offsets = [part.storage_offset() for part in query_key_value()]
    assert len(buffers) == 1 and offsets == [0, 32 * 32, 2 * 32 * 32]
    lm.generation_blocks()
    assert {part.untyped_storage().data_ptr() for part in query_key_value()} == buffers
    assert len(trims) == 1  # nothing re-laid, nothing to hand back
    after = {v.path: keras.ops.convert_to_numpy(v) for v in backbone.weights}
    assert before.keys() == after.keys()
    for path in before:
        np.testing.assert_array_equal(before[path], after[path])
    backbone.save_to_preset(str(tmp_path / "preset"))
    loaded = GPT2Backbone.from_preset(str(tmp_path / "preset"))
    for variable in loaded.weights:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), before[variable.path])
    if mode == "bfloat16":  # a training step on the re-laid variables
        # SGD: Keras' Adam leaves bfloat16 variables unchanged (0.999 rounds to 1 there).
        lm.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
        ids = np.random.default_rng(0).integers(0, 100, (2, 6)).astype("int32")
        lm.fit({"token_ids": ids, "padding_mask": np.ones_like(ids)}, ids, epochs=1, verbose=0)
        assert not np.array_equal(keras.ops.convert_to_numpy(dense._kernel), before[dense._kernel.path])


@pytest.mark.parametrize(
    "block_size, dtype",
    [
        (8, "float32"),  # groups of 8 inputs: every kernel's inputs divide evenly
        (128, "float32"),  # Keras' default: one partial group here, indexed per input
        (-1, "float32"),  # per channel: the scale divides the products
        (8, "bfloat16"),
    ],
)
def test_int4_generation_equals_keras_int4_layers(monkeypatch, block_size, dtype):
    """int4 layers in the fast path compute what Keras' int4 layers compute.

    An odd intermediate size gives a kernel with an odd number of packed
    columns and one whose inputs do not fill their last group; tiny blocks
    of dequantized weights make every product run over several blocks.
    """
    from gpt2_lib.backends import torch_int4

    monkeypatch.setattr(torch_int4, "_BLOCK_ELEMENTS", 32 * 6)
    config = dict(intermediate_dim=63, vocabulary_size=101, dtype=dtype)
    backbone = _backbone(**config)
    float_lm = GPT2CausalLM(_backbone(**config))
    backbone.quantize("int4", config=keras.quantizers.Int4QuantizationConfig(block_size=block_size))
    lm = GPT2CausalLM(backbone)
    blocks = _generation_blocks(lm)
    if blocks is None:
        return
    ids = np.random.default_rng(0).integers(0, 101, (3, 10)).astype("int32")
    fast = _run_cached(lm, blocks, ids)
    keras_int4 = _run_cached(lm, None, ids)
    float_model = _run_cached(float_lm, None, ids)
    for ours, theirs, exact in zip(fast, keras_int4, float_model):
        assert np.abs(theirs - exact).max() > 0.01  # int4 is visibly not the float model
        # The same dequantized weights; only the products' summation order may differ.
        rounding = 1e-5 if dtype == "float32" else 2**-7 * np.abs(theirs).max()
        assert np.abs(ours - theirs).max() <= rounding


def test_int4_generation_refuses_input_quantization():
    """int4 layers that also quantize their inputs stay on Keras' layers."""
    backbone = _backbone()
    backbone.quantize("int4")
    assert torch_gpt2.supports(backbone, generation=True) == TORCH
    query = next(e.layer for e in backbone.weight_table() if e.role == "self_attention/query")
    query.inputs_quantizer = keras.quantizers.AbsMaxQuantizer(axis=-1)
    assert not torch_gpt2.supports(backbone, generation=True)


@pytest.mark.parametrize("mode", [None, "int8", "int4"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_generation_embeddings_equal_the_embedding_layers(mode, dtype):
    """The fast path's token + position rows are the embedding layers' own
    (float, int8 and int4 tables, in float32 and bfloat16)."""
    if not TORCH:
        return
    backbone = _backbone(dtype=dtype)
    if mode:
        backbone.quantize(mode)
    blocks = torch_gpt2.TorchBlocks(backbone, for_generation=True)
    inputs = _inputs(position_ids=True)
    ids, positions = inputs["token_ids"], inputs["position_ids"]
    got = blocks.embeddings(keras.ops.convert_to_tensor(ids), keras.ops.convert_to_tensor(positions))
    expected = backbone.token_embedding(ids) + backbone.position_embedding(
        inputs["padding_mask"], positions
    )
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(got.float()),
                                  keras.ops.convert_to_numpy(expected.float()))
