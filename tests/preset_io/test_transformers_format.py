"""Transformers checkpoints in, Transformers checkpoints out."""

import json
import os

import keras
import numpy as np
import pytest

from gpt2_lib.models import Backbone
from gpt2_lib.models import GPT2Backbone
from tests.hf_reference import random_transformers_gpt2
from tests.hf_reference import transformers_hidden_states
from tests.preset_io.helpers import KH_BACKBONE
from tests.preset_io.helpers import run_backbone
from tests.preset_io.helpers import tiny_backbone

TOKENS = np.array([[5, 9, 2, 33, 7, 1], [4, 4, 8, 60, 2, 3]])
MASK = np.ones_like(TOKENS)


@pytest.fixture(scope="module")
def hf_model():
    return random_transformers_gpt2(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_inner=48)


def test_transformers_directory_loads_with_equal_outputs(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "hf")
    backbone = Backbone.from_preset(str(tmp_path / "hf"))
    assert type(backbone) is GPT2Backbone
    assert backbone.intermediate_dim == 48  # n_inner is honoured
    expected = transformers_hidden_states(hf_model, TOKENS, MASK)
    np.testing.assert_allclose(run_backbone(backbone, TOKENS, MASK), expected, atol=1e-5, rtol=0)


def test_sharded_safetensors(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    backbone = Backbone.from_preset(tmp_path / "hf")
    expected = transformers_hidden_states(hf_model, TOKENS, MASK)
    np.testing.assert_allclose(run_backbone(backbone, TOKENS, MASK), expected, atol=1e-5, rtol=0)


def test_pickle_checkpoints_are_refused(hf_model, tmp_path):
    import torch

    (tmp_path / "hf").mkdir()
    hf_model.config.save_pretrained(tmp_path / "hf")
    torch.save(hf_model.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin.*refuses"):
        Backbone.from_preset(tmp_path / "hf")
    # The architecture alone still loads.
    assert Backbone.from_preset(tmp_path / "hf", load_weights=False).num_layers == 2


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("activation_function", "relu", "activation_function"),
        ("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx"),
        ("tie_word_embeddings", False, "tie_word_embeddings"),
        ("attn_pdrop", 0.3, "one dropout rate"),
        ("n_ctx", 16, "n_ctx"),
        ("model_type", "llama", "model_type"),
    ],
)
def test_unsupported_config_fields_are_errors(hf_model, tmp_path, field, value, match):
    hf_model.config.save_pretrained(tmp_path / "hf")
    config = json.load(open(tmp_path / "hf" / "config.json"))
    config[field] = value
    json.dump(config, open(tmp_path / "hf" / "config.json", "w"))
    with pytest.raises(ValueError, match=match):
        Backbone.from_preset(tmp_path / "hf", load_weights=False)


def test_config_fields_are_read(hf_model, tmp_path):
    hf_model.config.save_pretrained(tmp_path / "hf")
    config = json.load(open(tmp_path / "hf" / "config.json"))
    config.update(layer_norm_epsilon=1e-6, n_positions=24, n_ctx=24)
    json.dump(config, open(tmp_path / "hf" / "config.json", "w"))
    backbone = Backbone.from_preset(tmp_path / "hf", load_weights=False, dropout=0.0)
    assert (backbone.layer_norm_epsilon, backbone.max_sequence_length, backbone.dropout) == (1e-6, 24, 0.0)
    assert (backbone.hidden_dim, backbone.num_heads, backbone.intermediate_dim) == (32, 4, 48)


def test_mismatched_shapes_name_the_tensor(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "hf")
    config = json.load(open(tmp_path / "hf" / "config.json"))
    config["vocab_size"] = 98
    json.dump(config, open(tmp_path / "hf" / "config.json", "w"))
    with pytest.raises(ValueError, match="'transformer.wte.weight'.*\\(97, 32\\).*\\(98, 32\\)"):
        Backbone.from_preset(tmp_path / "hf")


def test_export_to_transformers_loads_with_equal_logits(tmp_path):
    import torch
    import transformers

    backbone = tiny_backbone(vocabulary_size=61, intermediate_dim=40)
    rng = np.random.default_rng(0)
    for weight in backbone.weights:
        if len(weight.shape) == 1:
            weight.assign(keras.ops.convert_to_numpy(weight) + 0.1 * rng.normal(size=weight.shape).astype("float32"))
    backbone.export_to_transformers(tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    tokens = TOKENS % 61
    with torch.no_grad():
        logits = model(torch.tensor(tokens)).logits.numpy()
    hidden = backbone({"token_ids": tokens, "padding_mask": MASK})
    ours = keras.ops.convert_to_numpy(backbone.token_embedding(hidden, reverse=True))
    np.testing.assert_allclose(ours, logits, atol=1e-5, rtol=0)


def test_tokenizer_from_transformers_directory(tmp_path, hf_model):
    from gpt2_lib.models.gpt2.gpt2_tokenizer import GPT2Tokenizer
    from gpt2_lib.tokenizers.tokenizer import Tokenizer

    hf_model.config.save_pretrained(tmp_path / "hf")
    assets = os.path.join(KH_BACKBONE, "assets", "tokenizer")
    (tmp_path / "hf" / "vocab.json").write_text(open(os.path.join(assets, "vocabulary.json")).read())
    (tmp_path / "hf" / "merges.txt").write_text(open(os.path.join(assets, "merges.txt")).read())
    tokenizer = Tokenizer.from_preset(tmp_path / "hf")
    assert type(tokenizer) is GPT2Tokenizer
    reference = GPT2Tokenizer.from_preset(KH_BACKBONE)
    assert tokenizer("the hat in a cat") == reference("the hat in a cat")


# --- issue #15 -----------------------------------------------------------------


def _hf_dir_with_tokenizer(tmp_path, n_positions):
    from tests.hf_reference import random_transformers_gpt2

    hf_model = random_transformers_gpt2(vocab_size=262, n_positions=n_positions, n_embd=32, n_layer=2, n_head=4)
    hf_model.save_pretrained(tmp_path / "hf")
    assets = os.path.join(KH_BACKBONE, "assets", "tokenizer")
    (tmp_path / "hf" / "vocab.json").write_text(open(os.path.join(assets, "vocabulary.json")).read())
    (tmp_path / "hf" / "merges.txt").write_text(open(os.path.join(assets, "merges.txt")).read())
    return tmp_path / "hf"


def test_default_sequence_length_is_the_model_context(tmp_path):
    from gpt2_lib.models.gpt2.gpt2_causal_lm import GPT2CausalLM

    path = _hf_dir_with_tokenizer(tmp_path, n_positions=24)
    lm = GPT2CausalLM.from_preset(path)
    assert lm.preprocessor.sequence_length == 24  # not the class default, 1024
    lm.compile(sampler="greedy")
    assert isinstance(lm.generate("the hat"), str)
    lm.fit(["the hat in a cat", "a cat"], batch_size=2, epochs=1, verbose=0)
    lm.save_to_preset(tmp_path / "converted")  # what `gpt2-lib convert` does
    saved = json.load(open(tmp_path / "converted" / "preprocessor.json"))
    assert saved["config"]["sequence_length"] == 24
    # An explicit value is kept.
    assert GPT2CausalLM.from_preset(path, preprocessor=None).preprocessor is None
    from gpt2_lib.models.gpt2.gpt2_causal_lm_preprocessor import GPT2CausalLMPreprocessor

    assert GPT2CausalLMPreprocessor.from_preset(path, sequence_length=8).sequence_length == 8


def _rewrite_safetensors(path, edit):
    from safetensors.numpy import load_file
    from safetensors.numpy import save_file

    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_integer_safetensors_are_refused(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    key = "transformer.h.1.mlp.c_fc.weight"
    _rewrite_safetensors(path, lambda t: t.update({key: (t[key] * 100).astype("int64")}))
    with pytest.raises(ValueError, match=rf"'{key}' in `model.safetensors`.*dtype int64.*floating point"):
        Backbone.from_preset(tmp_path / "hf")


def test_bfloat16_checkpoint_loads(tmp_path):
    import torch

    hf_model = random_transformers_gpt2(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    hf_model.to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    backbone = Backbone.from_preset(tmp_path / "hf")
    expected = {
        name: tensor.to(torch.bfloat16).float().numpy() for name, tensor in hf_model.state_dict().items()
    }
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(backbone.token_embedding.embeddings), expected["transformer.wte.weight"]
    )
    bf16 = Backbone.from_preset(tmp_path / "hf", dtype="bfloat16")
    assert keras.backend.standardize_dtype(bf16.token_embedding.embeddings.dtype) == "bfloat16"


@pytest.mark.parametrize(
    "index, error, match",
    [
        ('{"weight_map": ["a", "b"]}', ValueError, "is corrupt: expected a JSON object whose 'weight_map'"),
        ('{"weight_map": {"transformer.wte.weight": 3}}', ValueError, "is corrupt"),
        ('[1, 2]', ValueError, "is corrupt"),
        ('{"weight_map": ', ValueError, "is corrupt"),
        ('{"weight_map": {"transformer.wte.weight": "../outside.safetensors"}}', ValueError, "escapes the preset"),
        ('{"weight_map": {"transformer.wte.weight": "gone.safetensors"}}', FileNotFoundError, "gone.safetensors"),
    ],
)
def test_malformed_safetensors_index(hf_model, tmp_path, index, error, match):
    hf_model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(index)
    with pytest.raises(error, match=match):
        Backbone.from_preset(tmp_path / "hf")


def test_index_pointing_to_the_wrong_shard(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    index_path = tmp_path / "hf" / "model.safetensors.index.json"
    index = json.load(open(index_path))
    files = sorted(set(index["weight_map"].values()))
    wrong = [f for f in files if f != index["weight_map"]["transformer.wte.weight"]][0]
    index["weight_map"]["transformer.wte.weight"] = wrong
    json.dump(index, open(index_path, "w"))
    with pytest.raises(ValueError, match=rf"puts tensor 'transformer.wte.weight' in `{wrong}`, which does not hold it"):
        Backbone.from_preset(tmp_path / "hf")


def test_truncated_safetensors(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match=r"`model.safetensors` in .*does not fit.*corrupt or truncated"):
        Backbone.from_preset(tmp_path / "hf")
    path.write_bytes(b"\x00" * 4)
    with pytest.raises(ValueError, match=r"`model.safetensors` in .*corrupt or truncated"):
        Backbone.from_preset(tmp_path / "hf")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("n_embd", None, r"`config.json` of preset .*n_embd=null; `n_embd` must be a positive integer.*remove it"),
        ("n_layer", "2", r"`config.json` of preset .*n_layer=\"2\".*positive integer"),
        ("layer_norm_epsilon", None, r"layer_norm_epsilon=null.*non-negative number"),
        ("resid_pdrop", None, r"resid_pdrop=null"),
        ("vocab_size", 0, r"vocab_size=0.*positive integer"),
    ],
)
def test_null_and_wrong_typed_transformers_fields(hf_model, tmp_path, field, value, match):
    hf_model.config.save_pretrained(tmp_path / "hf")
    config = json.load(open(tmp_path / "hf" / "config.json"))
    config[field] = value
    json.dump(config, open(tmp_path / "hf" / "config.json", "w"))
    with pytest.raises(ValueError, match=match):
        Backbone.from_preset(tmp_path / "hf", load_weights=False)


def test_n_inner_null_means_four_times_hidden(hf_model, tmp_path):
    hf_model.config.save_pretrained(tmp_path / "hf")
    config = json.load(open(tmp_path / "hf" / "config.json"))
    config["n_inner"] = None
    json.dump(config, open(tmp_path / "hf" / "config.json", "w"))
    assert Backbone.from_preset(tmp_path / "hf", load_weights=False).intermediate_dim == 128


def test_unknown_transformers_fields_warn(hf_model, tmp_path):
    import warnings

    hf_model.config.save_pretrained(tmp_path / "hf")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Backbone.from_preset(tmp_path / "hf", load_weights=False)
    assert not [w for w in caught if "config.json" in str(w.message)]  # a real config: no warning
    config = json.load(open(tmp_path / "hf" / "config.json"))
    config["rotary_dim"] = 16
    json.dump(config, open(tmp_path / "hf" / "config.json", "w"))
    with pytest.warns(UserWarning, match=r"`config.json` of preset .*\['rotary_dim'\].*does not read"):
        Backbone.from_preset(tmp_path / "hf", load_weights=False)


def test_loaded_weights_do_not_alias_the_safetensors_file(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "hf")
    backbone = Backbone.from_preset(tmp_path / "hf")
    before = [keras.ops.convert_to_numpy(w).copy() for w in backbone.weights]
    path = tmp_path / "hf" / "model.safetensors"
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    with open(path, "r+b") as f:  # overwrite the tensors in place
        f.seek(header)
        f.write(b"\x00" * (len(data) - header))
    for expected, weight in zip(before, backbone.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), expected)


def test_task_export_writes_the_tokenizer_for_transformers(tmp_path):
    import transformers

    from gpt2_lib.models.gpt2.gpt2_causal_lm import GPT2CausalLM
    from tests.preset_io.helpers import KH_CAUSAL_LM

    lm = GPT2CausalLM.from_preset(KH_CAUSAL_LM)
    lm.export_to_transformers(tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "merges.txt", "model.safetensors", "vocab.json"]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    text = "the hat in a cat"
    assert hf_tokenizer(text)["input_ids"] == lm.preprocessor.tokenizer(text)
    again = GPT2CausalLM.from_preset(tmp_path / "out")
    assert again.preprocessor.tokenizer(text) == lm.preprocessor.tokenizer(text)
