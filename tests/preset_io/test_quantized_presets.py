"""Quantized presets (#13): KerasHub's config and weights layout, both ways."""

import json
import os
import warnings

import h5py
import keras
import numpy as np
import pytest
from keras.src.backend.common import global_state

from gpt2_lib.models import Backbone
from gpt2_lib.models import GPT2Backbone
from gpt2_lib.models import GPT2CausalLM
from gpt2_lib.utils import quantization
from tests.preset_io.helpers import FIXTURES
from tests.preset_io.helpers import assert_close_on_mask
from tests.preset_io.helpers import run_backbone
from tests.preset_io.helpers import tiny_backbone

TOKENS = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]], "int32")
MASK = np.array([[1] * 5, [1] * 3 + [0] * 2], "int32")
MODES = {
    "int8": ("int8", None),
    "int4": ("int4", None),  # Keras' default: groups of 128 input rows
    "int4_per_channel": ("int4", "per_channel"),
    "float8": ("float8", None),
}


def quantize(model, name):
    mode, config = MODES[name]
    if config == "per_channel":
        config = keras.quantizers.Int4QuantizationConfig(block_size=-1)
    model.quantize(mode, config=config)
    return mode


def logits(lm, token_ids=TOKENS, padding_mask=MASK):
    return keras.ops.convert_to_numpy(lm({"token_ids": token_ids, "padding_mask": padding_mask}))


def datasets(path):
    with h5py.File(path) as f:
        found = {}
        f.visititems(lambda n, o: found.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return found


def _deferred_registry():
    return global_state.get_global_attribute("uninitialized_variables", []) or []


# === Our own round trips ===


@pytest.mark.parametrize("name", sorted(MODES))
def test_quantized_task_round_trips_bit_identical(name, tmp_path):
    lm = GPT2CausalLM(tiny_backbone())
    mode = quantize(lm, name)
    expected = logits(lm)
    lm.save_to_preset(tmp_path / "a")
    config = json.load(open(tmp_path / "a" / "config.json"))
    assert config["config"]["dtype"]["class_name"] == "DTypePolicyMap"
    loaded = GPT2CausalLM.from_preset(tmp_path / "a")
    assert _deferred_registry() == []  # allocated from the file, nothing left deferred
    assert quantization.quantization_modes(loaded.backbone) == [mode]
    np.testing.assert_array_equal(logits(loaded), expected)
    before = {v.path: keras.ops.convert_to_numpy(v) for v in lm.backbone.weights}
    after = {v.path: keras.ops.convert_to_numpy(v) for v in loaded.backbone.weights}
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])
    # Saving the loaded model writes the same files.
    loaded.save_to_preset(tmp_path / "b")
    for filename in ("config.json", "task.json"):
        assert json.load(open(tmp_path / "a" / filename)) == json.load(open(tmp_path / "b" / filename))
    first, second = datasets(tmp_path / "a" / "model.weights.h5"), datasets(tmp_path / "b" / "model.weights.h5")
    assert sorted(first) == sorted(second)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_quantized_backbone_round_trips_and_loads_without_weights(name, tmp_path):
    backbone = tiny_backbone()
    mode = quantize(backbone, name)
    backbone.save_to_preset(tmp_path, max_shard_size=0.000004)  # sharded, too
    assert "model.weights.json" in os.listdir(tmp_path)
    loaded = Backbone.from_preset(tmp_path)
    np.testing.assert_array_equal(run_backbone(loaded, TOKENS, MASK), run_backbone(backbone, TOKENS, MASK))
    architecture = Backbone.from_preset(tmp_path, load_weights=False)
    assert quantization.quantization_modes(architecture) == [mode]
    assert sorted((v.path, v.dtype, v.shape) for v in architecture.weights) == sorted(
        (v.path, v.dtype, v.shape) for v in backbone.weights
    )


def test_bfloat16_presets_load(tmp_path):
    backbone = tiny_backbone(dtype="bfloat16")
    backbone.save_to_preset(tmp_path)
    loaded = Backbone.from_preset(tmp_path, dtype="bfloat16")
    np.testing.assert_array_equal(run_backbone(loaded, TOKENS, MASK), run_backbone(backbone, TOKENS, MASK))


def test_config_dtype_is_keras_hubs_policy_map():
    """The same architecture quantized by KerasHub 0.32 wrote this map."""
    keras_hub = json.load(open(os.path.join(FIXTURES, "kh_int8", "config.json")))
    config = json.load(open(os.path.join(FIXTURES, "kh_backbone", "config.json")))["config"]
    backbone = GPT2Backbone.from_config({**config, "dtype": None})
    backbone.quantize("int8")
    assert backbone.get_config()["dtype"] == keras_hub["config"]["dtype"]


def test_dtype_override_keeps_quantized_layers_quantized(tmp_path):
    lm = GPT2CausalLM(tiny_backbone())
    lm.quantize("int8")
    lm.save_to_preset(tmp_path)
    expected = logits(lm)
    for loaded in (
        GPT2CausalLM.from_preset(tmp_path, dtype="bfloat16"),
        GPT2Backbone.from_preset(tmp_path, dtype="bfloat16"),
    ):
        backbone = getattr(loaded, "backbone", loaded)
        table = {entry.path: entry.layer for entry in backbone.weight_table()}
        assert table["transformer_layer_0/self_attention/query"].dtype_policy["transformer_layer_0/self_attention/query"].name == "int8_from_bfloat16"
        assert table["transformer_layer_0/self_attention/query"].compute_dtype == "bfloat16"
        assert table["layer_norm"].compute_dtype == "bfloat16"
        assert table["position_embedding"].embeddings.dtype == "bfloat16"
        assert table["token_embedding"]._embeddings.dtype == "int8"
    out = logits(GPT2CausalLM.from_preset(tmp_path, dtype="bfloat16")).astype("float32")
    assert_close_on_mask(out, expected, MASK, atol=0.05 * np.abs(expected).max())
    with pytest.raises(ValueError, match="quantized model.*dtype='float16'.*'int8' does not work with compute dtype float16"):
        GPT2CausalLM.from_preset(tmp_path, dtype="float16")
    # Under a global bfloat16 policy (no `dtype`), the map follows it, as KerasHub.
    keras.config.set_dtype_policy("bfloat16")
    backbone = GPT2Backbone.from_preset(tmp_path)
    assert backbone.get_layer("layer_norm").compute_dtype == "bfloat16"


def test_policy_map_entries_are_checked(tmp_path):
    lm = GPT2CausalLM(tiny_backbone())
    lm.quantize("int8")
    lm.save_to_preset(tmp_path)
    config = json.load(open(tmp_path / "config.json"))
    entry = config["config"]["dtype"]["config"]["policy_map"]["transformer_layer_0/self_attention/query"]
    entry["class_name"] = "GPTQDTypePolicy"
    entry["config"] = {"mode": "gptq/4/128", "source_name": None}
    json.dump(config, open(tmp_path / "config.json", "w"))
    with pytest.raises(ValueError, match="'transformer_layer_0/self_attention/query'.*'gptq' needs calibration"):
        Backbone.from_preset(tmp_path)


def test_float_presets_do_not_load_into_a_user_quantized_map(tmp_path):
    tiny_backbone().save_to_preset(tmp_path)
    policy_map = keras.dtype_policies.DTypePolicyMap()
    policy_map["token_embedding"] = "int8_from_float32"
    with pytest.raises(ValueError, match="reversible_embedding/vars/0.*float32.*int8"):
        Backbone.from_preset(tmp_path, dtype=policy_map)


# === KerasHub-made quantized presets ===


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_keras_hub_quantized_presets_load_with_equal_outputs(mode):
    """`kh_<mode>/` was saved by KerasHub 0.32 after `backbone.quantize(mode)`
    (int4 in groups of 16, so several groups per kernel)."""
    path = os.path.join(FIXTURES, f"kh_{mode}")
    expected = np.load(os.path.join(path, "expected.npz"))
    token_ids, padding_mask = expected["token_ids"], expected["padding_mask"]
    lm = GPT2CausalLM.from_preset(path)
    assert quantization.quantization_modes(lm.backbone) == [mode]
    assert_close_on_mask(run_backbone(lm.backbone, token_ids, padding_mask), expected["outputs"], padding_mask)
    assert_close_on_mask(logits(lm, token_ids, padding_mask), expected["logits"], padding_mask)
    # KerasHub itself cannot load a quantized preset as a backbone alone; we can.
    backbone = Backbone.from_preset(path)
    assert_close_on_mask(run_backbone(backbone, token_ids, padding_mask), expected["outputs"], padding_mask)
    lm.generate(
        {"token_ids": token_ids[:1], "padding_mask": padding_mask[:1]}, max_length=12, stop_token_ids=None
    )


def test_keras_hub_reloads_int4_with_a_quantized_lm_head_input():
    """Why KerasHub's reloaded int4 logits differ from the model it saved.

    Keras 3.15 builds a reloaded int4 `ReversibleEmbedding` with an
    activation quantizer on the LM head's input, which `quantize("int4")`
    does not use; gpt2_lib computes as the saved model did. With that
    quantizer put back, our logits are KerasHub's reloaded ones.
    """
    path = os.path.join(FIXTURES, "kh_int4")
    expected = np.load(os.path.join(path, "expected.npz"))
    token_ids, padding_mask = expected["token_ids"], expected["padding_mask"]
    assert np.abs(expected["keras_hub_reloaded_logits"] - expected["logits"]).max() > 1e-4
    lm = GPT2CausalLM.from_preset(path)
    lm.backbone.token_embedding.inputs_quantizer = keras.quantizers.AbsMaxQuantizer(axis=-1)
    assert_close_on_mask(logits(lm, token_ids, padding_mask), expected["keras_hub_reloaded_logits"], padding_mask)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_presets_saved_here_load_in_keras_hub(mode, tmp_path):
    """`saved_by_gpt2_lib_<mode>/` was written by gpt2_lib and loaded by KerasHub
    0.32 (`make_fixtures.py`), which recorded its outputs. We load it, compare,
    and check that our writer still produces exactly those files."""
    path = os.path.join(FIXTURES, f"saved_by_gpt2_lib_{mode}")
    inputs = np.load(os.path.join(path, "inputs.npz"))
    keras_hub = np.load(os.path.join(path, "keras_hub_outputs.npz"))
    assert list(keras_hub["quantization_modes"]) == [mode]
    lm = GPT2CausalLM.from_preset(path)
    token_ids, padding_mask = inputs["token_ids"], inputs["padding_mask"]
    np.testing.assert_allclose(
        run_backbone(lm.backbone, token_ids, padding_mask), keras_hub["outputs"], atol=1e-5, rtol=0
    )
    if mode == "int4":  # see test_keras_hub_reloads_int4_with_a_quantized_lm_head_input
        lm.backbone.token_embedding.inputs_quantizer = keras.quantizers.AbsMaxQuantizer(axis=-1)
    np.testing.assert_allclose(logits(lm, token_ids, padding_mask), keras_hub["logits"], atol=1e-5, rtol=0)

    GPT2CausalLM.from_preset(path).save_to_preset(tmp_path)
    for filename in ("config.json", "task.json", "preprocessor.json", "tokenizer.json"):
        assert json.load(open(tmp_path / filename)) == json.load(open(os.path.join(path, filename))), filename
    ours, theirs = datasets(tmp_path / "model.weights.h5"), datasets(os.path.join(path, "model.weights.h5"))
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key])


# === Exporting to Transformers ===


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_transformers_export_dequantizes_with_a_warning(mode, tmp_path):
    import torch
    import transformers
    from safetensors.numpy import load_file

    backbone = tiny_backbone(vocabulary_size=61, intermediate_dim=40)
    float_logits = logits(GPT2CausalLM(backbone))
    backbone.quantize(mode)
    quantized_logits = logits(GPT2CausalLM(backbone))
    with pytest.warns(UserWarning, match=f"quantized \\({mode}\\).*dequantized to float32"):
        backbone.export_to_transformers(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert {str(value.dtype) for value in tensors.values()} == {"float32"}
    np.testing.assert_array_equal(
        tensors["transformer.wte.weight"],
        quantization.dequantized_weights(backbone.token_embedding)["embeddings"],
    )
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        hf = model(torch.tensor(TOKENS), attention_mask=torch.tensor(MASK)).logits.numpy()
    mask = MASK.astype(bool)
    if mode == "int4":
        # int4 is weight-only: the float export computes exactly what it does.
        np.testing.assert_allclose(hf[mask], quantized_logits[mask], atol=1e-5)
    else:
        # int8 also quantizes activations on the fly; the export has the
        # weights' error only, so it sits within the quantization error.
        quantization_error = np.abs(float_logits - quantized_logits)[mask].max()
        assert np.abs(hf - quantized_logits)[mask].max() <= 1.5 * quantization_error
        assert np.abs(hf - float_logits)[mask].max() <= 1.5 * quantization_error


def test_float_export_does_not_warn_about_quantization(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_backbone().export_to_transformers(tmp_path)
    assert not [w for w in caught if "quantized" in str(w.message)]
