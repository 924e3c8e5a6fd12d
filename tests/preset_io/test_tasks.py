"""Tasks and preprocessors: KerasHub's task layout, one atomic save."""

import json
import os

import keras
import numpy as np
import pytest

from gpt2_lib.models.gpt2.gpt2_causal_lm import GPT2CausalLM
from gpt2_lib.models.gpt2.gpt2_causal_lm_preprocessor import GPT2CausalLMPreprocessor
from tests.preset_io.helpers import KH_BACKBONE
from tests.preset_io.helpers import KH_CAUSAL_LM
from tests.preset_io.helpers import assert_close_on_mask


def _logits(task, token_ids, padding_mask):
    hidden = task.backbone({"token_ids": token_ids, "padding_mask": padding_mask})
    return keras.ops.convert_to_numpy(task.backbone.token_embedding(hidden, reverse=True))


def test_keras_hub_task_preset_loads_with_equal_logits():
    expected = np.load(os.path.join(KH_CAUSAL_LM, "expected.npz"))
    task = GPT2CausalLM.from_preset(KH_CAUSAL_LM)
    assert type(task.preprocessor) is GPT2CausalLMPreprocessor
    assert task.preprocessor.sequence_length == 8  # from preprocessor.json, not the default
    assert task.preprocessor.tokenizer.vocabulary_size() == 262  # assets loaded
    logits = _logits(task, expected["token_ids"], expected["padding_mask"])
    assert_close_on_mask(logits, expected["logits"], expected["padding_mask"])


def test_preprocessor_from_json_and_from_defaults():
    preprocessor = GPT2CausalLMPreprocessor.from_preset(KH_CAUSAL_LM)
    assert preprocessor.sequence_length == 8
    # A backbone-only preset has no preprocessor.json: class defaults + tokenizer,
    # except that the default sequence_length (1024) is lowered to what the
    # backbone can run (max_sequence_length=16 in this fixture).
    default = GPT2CausalLMPreprocessor.from_preset(KH_BACKBONE)
    assert GPT2CausalLMPreprocessor(tokenizer=default.tokenizer).sequence_length == 1024
    assert default.sequence_length == 16
    assert GPT2CausalLMPreprocessor.from_preset(KH_BACKBONE, sequence_length=32).sequence_length == 32
    assert default.tokenizer("the hat") == preprocessor.tokenizer("the hat")


def test_task_from_backbone_only_preset():
    task = GPT2CausalLM.from_preset(KH_BACKBONE)
    expected = np.load(os.path.join(KH_BACKBONE, "expected.npz"))
    hidden = keras.ops.convert_to_numpy(
        task.backbone({"token_ids": expected["token_ids"], "padding_mask": expected["padding_mask"]})
    )
    assert_close_on_mask(hidden, expected["outputs"], expected["padding_mask"])
    assert type(task.preprocessor) is GPT2CausalLMPreprocessor


def test_task_save_round_trip_in_keras_hub_layout(tmp_path):
    task = GPT2CausalLM.from_preset(KH_CAUSAL_LM)
    task.save_to_preset(tmp_path / "p")
    files = sorted(os.listdir(tmp_path / "p"))
    assert files == sorted(
        ["assets", "config.json", "metadata.json", "model.weights.h5", "preprocessor.json", "task.json", "tokenizer.json"]
    )  # GPT2CausalLM has no weights outside its backbone: no task.weights.h5, as in KerasHub
    for name in ("task.json", "preprocessor.json"):
        ours = json.load(open(tmp_path / "p" / name))
        theirs = json.load(open(os.path.join(KH_CAUSAL_LM, name)))
        assert ours["registered_name"] == theirs["registered_name"]
    ours = json.load(open(tmp_path / "p" / "task.json"))["config"]
    assert ours["backbone"]["registered_name"] == "keras_hub>GPT2Backbone"
    assert ours["preprocessor"]["config"]["tokenizer"]["registered_name"] == "keras_hub>GPT2Tokenizer"
    again = GPT2CausalLM.from_preset(tmp_path / "p")
    expected = np.load(os.path.join(KH_CAUSAL_LM, "expected.npz"))
    np.testing.assert_array_equal(
        _logits(again, expected["token_ids"], expected["padding_mask"]),
        _logits(task, expected["token_ids"], expected["padding_mask"]),
    )


def test_task_save_is_one_atomic_step(tmp_path, monkeypatch):
    task = GPT2CausalLM.from_preset(KH_CAUSAL_LM)

    def fail(*args, **kwargs):
        raise RuntimeError("injected failure while writing the tokenizer assets")

    # The tokenizer is written last: backbone and task files were already written.
    monkeypatch.setattr(type(task.preprocessor.tokenizer), "save_assets", fail)
    with pytest.raises(RuntimeError, match="injected"):
        task.save_to_preset(tmp_path / "p")
    assert os.listdir(tmp_path) == []


def test_nested_class_from_another_library_is_an_error(tmp_path):
    import shutil

    shutil.copytree(KH_CAUSAL_LM, tmp_path / "p")
    config = json.load(open(tmp_path / "p" / "task.json"))
    config["config"]["preprocessor"]["config"]["tokenizer"]["registered_name"] = "evil_lib>Tokenizer"
    json.dump(config, open(tmp_path / "p" / "task.json", "w"))
    with pytest.raises(ValueError, match="evil_lib"):
        GPT2CausalLM.from_preset(tmp_path / "p")
