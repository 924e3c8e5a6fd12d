"""Quantizing GPT-2 (#13): modes, errors, LoRA, bfloat16, memory, compiled functions."""

import gc
import os
import weakref

import keras
import numpy as np
import pytest

import gpt2_lib
from gpt2_lib.models import GPT2Backbone
from gpt2_lib.models import GPT2CausalLM
from gpt2_lib.models import lora
from gpt2_lib.utils import quantization
from tests.preset_io.helpers import tiny_backbone

INPUTS = {
    "token_ids": np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 0, 0]], "int32"),
    "padding_mask": np.array([[1] * 6, [1] * 4 + [0] * 2], "int32"),
}
MASK = INPUTS["padding_mask"].astype(bool)


def outputs(model, inputs=INPUTS):
    return keras.ops.convert_to_numpy(model(inputs))


def kernel_layers(backbone):
    return [
        layer
        for layer in backbone._flatten_layers(include_self=False)
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))
    ]


def variable_bytes(model):
    return sum(
        int(np.prod(v.shape)) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
        for v in model.weights
    )


# === What gets quantized ===


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantize_kernels_and_tied_embedding(mode):
    backbone = tiny_backbone()
    float_out = outputs(backbone)
    backbone.quantize(mode)
    table = {entry.path: entry.layer for entry in backbone.weight_table()}
    quantized = {path for path, layer in table.items() if layer.quantization_mode == mode}
    # Every kernel and the token embedding (the tied LM head), as KerasHub.
    assert quantized == {
        path for path in table if path == "token_embedding" or "/" in path and "layer_norm" not in path
    }
    assert table["position_embedding"].quantization_mode is None
    assert table["token_embedding"]._embeddings.dtype == "int8"
    out = outputs(backbone)
    error = np.abs(out - float_out)[MASK].max() / np.abs(float_out[MASK]).max()
    assert 0 < error < (0.02 if mode == "int8" else 0.15)
    # The config holds KerasHub's per-layer policy map.
    dtype = backbone.get_config()["dtype"]
    assert dtype["class_name"] == "DTypePolicyMap"
    assert dtype["config"]["default_policy"] is None
    assert set(dtype["config"]["policy_map"]) == quantized
    # Serializing did not blank the live policies (Keras' map does that in place).
    assert table["token_embedding"].dtype_policy.name.startswith(f"{mode}")


def test_float8_quantizes_dense_layers_only():
    backbone = tiny_backbone()
    backbone.quantize("float8")
    assert quantization.quantization_modes(backbone) == ["float8"]
    assert backbone.token_embedding.quantization_mode is None  # Keras has no float8 embedding
    assert all(layer.quantization_mode == "float8" for layer in kernel_layers(backbone))
    assert np.isfinite(outputs(backbone)).all()


@pytest.mark.parametrize(
    "mode, match",
    [
        ("gptq", "'gptq' needs calibration data.*Use one of 'int8', 'int4', 'float8'"),
        ("awq", "'awq' needs calibration data"),
        ("int2", r"mode='int2'. Supported modes: 'int8', 'int4', 'float8'"),
        (None, "needs a mode: one of 'int8', 'int4', 'float8'"),
    ],
)
@pytest.mark.parametrize("on", ["backbone", "task"])
def test_unsupported_modes_are_clear_errors(mode, match, on):
    lm = GPT2CausalLM(tiny_backbone())
    before = outputs(lm.backbone)
    with pytest.raises(ValueError, match=match):
        (lm.backbone if on == "backbone" else lm).quantize(mode)
    assert quantization.quantization_modes(lm.backbone) == []
    np.testing.assert_array_equal(outputs(lm.backbone), before)


def test_quantizing_twice_float16_int8_and_empty_filters_are_refused():
    backbone = tiny_backbone()
    backbone.quantize("int8")
    with pytest.raises(ValueError, match="already quantized \\(int8\\)"):
        backbone.quantize("int4")
    with pytest.raises(ValueError, match="'int8' does not work with compute dtype float16"):
        tiny_backbone(dtype="float16").quantize("int8")
    with pytest.raises(ValueError, match="quantized no layer"):
        tiny_backbone().quantize("int8", filters="no_such_layer")


def test_filters_quantize_some_layers_and_save(tmp_path):
    by_name = tiny_backbone()
    by_name.quantize("int8", filters="query|value")  # Keras: regexes searched in layer names
    assert {layer.name for layer in quantization.quantized_layers(by_name)} == {"query", "value"}
    backbone = tiny_backbone()
    backbone.quantize("int8", filters=lambda layer: (layer.path or "").startswith("transformer_layer_0/"))
    modes = {entry.path: entry.layer.quantization_mode for entry in backbone.weight_table()}
    assert modes["transformer_layer_0/self_attention/query"] == "int8"
    assert modes["transformer_layer_1/self_attention/query"] is None
    assert modes["token_embedding"] is None
    backbone.save_to_preset(tmp_path)
    loaded = GPT2Backbone.from_preset(tmp_path)
    np.testing.assert_array_equal(outputs(loaded), outputs(backbone))


# === LoRA ===


def test_quantize_with_lora_enabled_is_refused_merge_first():
    backbone = tiny_backbone()
    backbone.enable_lora(2)
    with pytest.raises(ValueError, match="LoRA is enabled.*merge_lora_weights"):
        backbone.quantize("int8")
    backbone.merge_lora_weights()
    backbone.quantize("int8")
    assert quantization.quantization_modes(backbone) == ["int8"]


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_qlora_trains_adapters_on_a_quantized_base(mode, tmp_path):
    backbone = tiny_backbone()
    backbone.quantize(mode)
    backbone.enable_lora(2)
    assert {v.path.rsplit("/", 1)[-1] for v in backbone.trainable_weights} == {
        "lora_kernel_a",
        "lora_kernel_b",
    }
    lm = GPT2CausalLM(backbone)
    lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = {v.path: keras.ops.convert_to_numpy(v) for v in lm.weights}
    data = {"token_ids": np.random.default_rng(0).integers(0, 50, (8, 9))}
    lm.fit(data, batch_size=4, epochs=2, verbose=0)
    changed = [
        v.path for v in lm.weights if not np.array_equal(before[v.path], keras.ops.convert_to_numpy(v))
    ]
    assert changed and all("lora_kernel" in path for path in changed)
    adapted = outputs(backbone)

    # The adapters save and load onto another quantized base.
    backbone.save_lora_weights(str(tmp_path / "a.lora.h5"))
    other = tiny_backbone()
    other.quantize(mode)
    other.load_lora_weights(str(tmp_path / "a.lora.h5"))
    np.testing.assert_array_equal(outputs(other), adapted)

    # Merging requantizes (as Keras does when saving such a layer): the
    # backbone stays quantized, saves as a preset, and moves by about one
    # quantization step.
    backbone.merge_lora_weights()
    assert quantization.quantization_modes(backbone) == [mode]
    assert not lora.lora_enabled(backbone)
    merged = outputs(backbone)
    scale = np.abs(adapted[MASK]).max()
    assert np.abs(merged - adapted)[MASK].max() < (0.02 if mode == "int8" else 0.1) * scale
    backbone.save_to_preset(tmp_path / "merged")
    np.testing.assert_array_equal(outputs(GPT2Backbone.from_preset(tmp_path / "merged")), merged)


def test_lora_on_float8_is_refused():
    backbone = tiny_backbone()
    backbone.quantize("float8")
    with pytest.raises(ValueError, match="float8.*Keras' LoRA does not support"):
        backbone.enable_lora(2)
    assert not lora.lora_enabled(backbone)


# === bfloat16 ===


def test_bfloat16_model_quantizes_generates_saves_and_loads(tmp_path):
    lm = GPT2CausalLM(tiny_backbone(dtype="bfloat16"))
    lm.quantize("int8")
    policy = lm.backbone.get_layer("token_embedding").dtype_policy
    assert policy.name == "int8_from_bfloat16"
    lm.compile(sampler="greedy")
    prompt = {"token_ids": np.array([[5, 6, 7, 0, 0, 0]]), "padding_mask": np.array([[1, 1, 1, 0, 0, 0]])}
    generated = lm.generate(prompt, stop_token_ids=None)["token_ids"]
    logits = outputs(lm)
    assert str(logits.dtype) == "bfloat16"
    lm.save_to_preset(tmp_path)
    # As for float presets, the saved map loads at the global policy unless
    # `dtype` is given; with dtype="bfloat16" it is the same model.
    same = GPT2CausalLM.from_preset(tmp_path, dtype="bfloat16")
    np.testing.assert_array_equal(outputs(same), logits)
    same.compile(sampler="greedy")
    np.testing.assert_array_equal(same.generate(prompt, stop_token_ids=None)["token_ids"], generated)
    default = GPT2CausalLM.from_preset(tmp_path)
    assert default.backbone.compute_dtype == "float32"
    assert quantization.quantization_modes(default.backbone) == ["int8"]
    np.testing.assert_allclose(
        outputs(default)[MASK], logits.astype("float32")[MASK], atol=0.05 * np.abs(logits.astype("float32")).max()
    )


# === Memory ===


def test_int8_frees_the_float_kernels_and_fits_in_0_3x():
    config = dict(
        vocabulary_size=4096,
        num_layers=4,
        num_heads=4,
        hidden_dim=256,
        intermediate_dim=1024,
        max_sequence_length=128,
    )
    keras.utils.set_random_seed(0)
    lm = GPT2CausalLM(GPT2Backbone(**config))
    lm.compile(sampler="greedy")
    prompt = {"token_ids": np.array([[5, 6, 0, 0]]), "padding_mask": np.array([[1, 1, 0, 0]])}
    lm.generate(prompt, stop_token_ids=None)  # a compiled function holding the weights
    float_bytes = variable_bytes(lm.backbone)
    old = [weakref.ref(layer._kernel.value) for layer in kernel_layers(lm.backbone)]
    old.append(weakref.ref(lm.backbone.token_embedding._embeddings.value))
    lm.quantize("int8")
    lm.generate(prompt, stop_token_ids=None)
    gc.collect()
    assert [ref() for ref in old].count(None) == len(old)  # every float kernel freed
    ratio = variable_bytes(lm.backbone) / float_bytes
    assert ratio <= 0.3, ratio
    # int4 is smaller still.
    keras.utils.set_random_seed(0)
    int4 = GPT2Backbone(**config)
    int4.quantize("int4")
    assert variable_bytes(int4) / float_bytes <= 0.17


def test_quantize_frees_each_kernel_as_it_goes_and_collects_garbage_once(monkeypatch):
    backbone = tiny_backbone()
    old = {layer.path: weakref.ref(layer._kernel.value) for layer in kernel_layers(backbone)}
    alive_when_reached = []

    def every_layer(layer):  # Keras asks this before quantizing each layer, in order
        if layer.path in old:
            alive_when_reached.append(sum(ref() is not None for ref in old.values()))
        return True

    collections = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *args: collections.append(args) or collect(*args))
    backbone.quantize("int8", filters=every_layer)
    # Keras' Layer.__delattr__ collects once per replaced kernel; one collection in all.
    assert len(collections) == 1
    # Without those collections each float kernel is still freed when it is replaced.
    assert alive_when_reached == list(range(len(old), 0, -1))
    assert [ref() for ref in old.values()].count(None) == len(old)


def test_quantizing_through_the_backbone_frees_the_tasks_torch_parameters():
    lm = GPT2CausalLM(tiny_backbone())
    lm.compile(sampler="greedy")
    prompt = {"token_ids": np.array([[5, 6, 0, 0]]), "padding_mask": np.array([[1, 1, 0, 0]])}
    lm.generate(prompt, stop_token_ids=None)
    old = [weakref.ref(layer._kernel.value) for layer in kernel_layers(lm.backbone)]
    lm.backbone.quantize("int8")
    lm.generate(prompt, stop_token_ids=None)
    gc.collect()
    assert [ref() for ref in old].count(None) == len(old)


# === Compiled functions notice new weights ===

PROMPTS = ["ROMEO:", "Hamlet.\n", "KING.\nWhat say you"]


@pytest.mark.parametrize("via", ["task", "backbone"])
def test_generate_notices_quantization(via):
    lm = GPT2CausalLM.from_preset("gpt2_tiny_shakespeare_en")
    lm.compile(sampler="greedy")
    float_text = lm.generate(PROMPTS, max_length=40)
    first = lm.generate_function
    (lm if via == "task" else lm.backbone).quantize("int4")
    quantized_text = lm.generate(PROMPTS, max_length=40)
    assert lm.generate_function is not first
    fresh = GPT2CausalLM(lm.backbone, lm.preprocessor)  # traced after quantizing
    fresh.compile(sampler="greedy")
    assert quantized_text == fresh.generate(PROMPTS, max_length=40)
    assert quantized_text != float_text  # the check above could fail
    # Reused while nothing changes.
    second = lm.generate_function
    lm.generate(PROMPTS, max_length=40)
    assert lm.generate_function is second


def test_generate_and_predict_notice_lora_adapters_and_quantization():
    lm = GPT2CausalLM(tiny_backbone())
    lm.compile(sampler="greedy")
    prompt = {"token_ids": np.array([[5, 6, 7, 0, 0, 0, 0, 0]]), "padding_mask": np.array([[1, 1, 1] + [0] * 5])}
    lm.generate(prompt, stop_token_ids=None)
    lm.predict(INPUTS, verbose=0)
    lm.backbone.quantize("int8")
    np.testing.assert_allclose(lm.predict(INPUTS, verbose=0), outputs(lm), atol=1e-6)
    # New variables (adapters) with values that change every output.
    lm.backbone.enable_lora(2)
    rng = np.random.default_rng(0)
    for layer in lora.adaptable_layers(lm.backbone).values():
        if layer.lora_enabled:
            layer.lora_kernel_b.assign(rng.normal(size=layer.lora_kernel_b.shape) * 3.0)
    eager = GPT2CausalLM(lm.backbone)
    eager.compile(sampler="greedy", run_eagerly=True)
    np.testing.assert_array_equal(
        lm.generate(prompt, stop_token_ids=None)["token_ids"],
        eager.generate(prompt, stop_token_ids=None)["token_ids"],
    )
    np.testing.assert_allclose(lm.predict(INPUTS, verbose=0), outputs(lm), atol=1e-5)


def test_task_quantize_resets_compiled_functions():
    lm = GPT2CausalLM(tiny_backbone())
    lm.compile(sampler="greedy")
    lm.predict(INPUTS, verbose=0)
    lm.generate({"token_ids": np.array([[5, 0]]), "padding_mask": np.array([[1, 0]])}, stop_token_ids=None)
    lm.quantize("int8")
    assert lm.predict_function is None and lm.generate_function is None
    np.testing.assert_allclose(lm.predict(INPUTS, verbose=0), outputs(lm), atol=1e-6)


# === Dequantization is the layers' own math ===


def _weight_only(layer):
    layer.inputs_quantizer = None  # compare the weights alone (int8 also quantizes activations)
    return layer


@pytest.mark.parametrize(
    "mode, config",
    [
        ("int8", None),
        ("int4", None),  # groups of 128 input rows (Keras' default)
        ("int4", "groups_of_16"),
        ("int4", "per_channel"),
    ],
)
def test_dequantized_weights_reproduce_each_layer(mode, config):
    if config == "groups_of_16":
        config = keras.quantizers.Int4QuantizationConfig(block_size=16)
    elif config == "per_channel":
        config = keras.quantizers.Int4QuantizationConfig(block_size=-1)
    backbone = tiny_backbone(hidden_dim=48, intermediate_dim=96, num_heads=3)
    backbone.quantize(mode, config=config)
    rng = np.random.default_rng(0)
    for entry in backbone.weight_table():
        layer = entry.layer
        if layer.quantization_mode is None:
            continue
        weights = quantization.dequantized_weights(layer)
        if entry.path == "token_embedding":
            ids = np.array([[0, 3, 49]])
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(layer(ids)), weights["embeddings"][ids], atol=1e-6
            )
            hidden = rng.normal(size=(2, 48)).astype("float32")
            logits = keras.ops.convert_to_numpy(_weight_only(layer)(hidden, reverse=True))
            np.testing.assert_allclose(logits, hidden @ weights["embeddings"].T, atol=1e-5)
            continue
        kernel = weights["kernel"]
        if entry.role == "self_attention/attention_output":  # (heads, head_dim, hidden)
            x = rng.normal(size=(1, 2) + kernel.shape[:2]).astype("float32")
            expected = np.einsum("abcd,cde->abe", x, kernel)
        else:
            x = rng.normal(size=(1, 2, kernel.shape[0])).astype("float32")
            expected = np.einsum("abc,cde->abde", x, kernel) if kernel.ndim == 3 else x @ kernel
        expected = expected + weights["bias"]
        actual = keras.ops.convert_to_numpy(_weight_only(layer)(x))
        np.testing.assert_allclose(actual, expected, atol=1e-5, err_msg=entry.path)


# === int4 forward passes outside generation ===


def _int4_tiny(dtype="float32", **kwargs):
    backbone = tiny_backbone(dtype=dtype, **kwargs)
    # Groups of 8 divide every axis: the gather-free paths apply.
    backbone.quantize("int4", config=keras.quantizers.Int4QuantizationConfig(block_size=8))
    return backbone


def _keras_int4_layers(monkeypatch):
    """The reference: the functional graph with Keras' own int4 layers."""
    from gpt2_lib.backends import torch_gpt2
    from gpt2_lib.models.gpt2 import gpt2_backbone
    from gpt2_lib.models.gpt2 import gpt2_causal_lm

    monkeypatch.setattr(gpt2_backbone, "supports_int4_lookup", lambda layer: False)
    monkeypatch.setattr(gpt2_causal_lm, "supports_int4_lookup", lambda layer: False)
    monkeypatch.setattr(torch_gpt2, "supports", lambda *args: False)


def _unpacked_shapes(monkeypatch):
    """Packed shapes of every `unpack_int4` call, in order."""
    shapes = []
    unpack = keras.quantizers.unpack_int4

    def spy(packed, *args, **kwargs):
        shapes.append(tuple(packed.shape))
        return unpack(packed, *args, **kwargs)

    # Ours call `keras.quantizers.unpack_int4`, Keras' layers their module's.
    monkeypatch.setattr(keras.quantizers, "unpack_int4", spy)
    monkeypatch.setattr(keras.src.quantizers, "unpack_int4", spy)
    return shapes


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_int4_forward_passes_unpack_the_rows_they_look_up(dtype, monkeypatch):
    """`backbone(...)`, `GPT2CausalLM(...)` and `score` (predict, fit,
    perplexity) look int4 ids up row by row and take the tied head without
    Keras' gather; equal to Keras' own int4 layers in the functional graph."""
    backbone = _int4_tiny(dtype)
    lm = GPT2CausalLM(backbone)

    def run():
        identity = lambda hidden_states, i: hidden_states  # noqa: E731
        return [
            keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))
            for x in (
                backbone(INPUTS),
                lm(INPUTS),
                lm.score(INPUTS["token_ids"], INPUTS["padding_mask"], layer_intercept_fn=identity),
            )
        ]

    table = tuple(backbone.token_embedding._embeddings.shape)
    looked_up = (INPUTS["token_ids"].size, table[1])
    with monkeypatch.context() as patch:
        shapes = _unpacked_shapes(patch)
        ours = run()
        # Each lookup unpacks only its rows; each head the whole table
        # (every row is a logit; Keras' own on torch, transposed), once.
        assert shapes.count(looked_up) == 3
        assert shapes.count(table) + shapes.count(table[::-1]) == 2
    with monkeypatch.context() as patch:
        _keras_int4_layers(patch)
        shapes = _unpacked_shapes(patch)
        theirs = run()
        assert shapes.count(table) == 2  # the reference: the whole table per graph lookup
    tolerance = 1e-5 if dtype == "float32" else 2e-2
    for a, b in zip(ours, theirs):
        scale = np.abs(b[MASK]).max()
        np.testing.assert_allclose(a[MASK], b[MASK], atol=tolerance * scale, rtol=0)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_int4_qlora_fit_equals_keras_int4_layers(dropout, monkeypatch):
    """LoRA fine-tuning on an int4 base: the same losses and updates as with
    Keras' own int4 layers in the functional graph."""
    if dropout and keras.config.backend() == "torch":
        # torch draws unseeded dropout masks from its global generator in
        # memory order, and the looked-up rows are laid out differently: the
        # masks differ, not their distribution. Dropout still applies:
        backbone = _int4_tiny(dropout=dropout)
        training, inference = (
            keras.ops.convert_to_numpy(backbone(INPUTS, training=t)) for t in (True, False)
        )
        assert not np.allclose(training, inference)
        np.testing.assert_array_equal(inference, outputs(backbone))
        return
    results = []
    for reference in (False, True):
        with monkeypatch.context() as patch:
            if reference:
                _keras_int4_layers(patch)
            backbone = _int4_tiny(dropout=dropout)
            backbone.enable_lora(2)
            for v in backbone.trainable_weights:  # B starts at zero: A would get no gradient
                if v.path.endswith("lora_kernel_b"):
                    v.assign(np.full(v.shape, 0.1, "float32"))
            lm = GPT2CausalLM(backbone)
            lm.compile(optimizer=keras.optimizers.SGD(0.5))
            keras.utils.set_random_seed(1)  # the same dropout masks
            data = {"token_ids": np.random.default_rng(0).integers(0, 50, (4, 9))}
            history = lm.fit(data, batch_size=4, epochs=2, verbose=0).history["loss"]
            results.append((history, [keras.ops.convert_to_numpy(v) for v in lm.trainable_weights]))
    (ours_loss, ours), (their_loss, theirs) = results
    np.testing.assert_allclose(ours_loss, their_loss, rtol=1e-5)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# === .keras files ===


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_keras_files_of_quantized_models(mode, tmp_path):
    lm = GPT2CausalLM(tiny_backbone())
    lm.quantize(mode)
    path = os.path.join(tmp_path, "model.keras")
    lm.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is GPT2CausalLM
    assert quantization.quantization_modes(loaded.backbone) == [mode]
    np.testing.assert_array_equal(outputs(loaded), outputs(lm))


def test_quantized_dtype_policy_is_not_a_constructor_dtype():
    with pytest.raises(ValueError, match="quantized policy.*call `quantize"):
        gpt2_lib.models.GPT2Backbone(
            vocabulary_size=10, num_layers=1, num_heads=2, hidden_dim=4,
            intermediate_dim=8, max_sequence_length=6, dtype=keras.dtype_policies.get("int8_from_float32"),
        )
