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
