"""Preset config files are checked: errors name the file, the field and the fix (issue #15)."""

import json
import os
import shutil
import warnings

import pytest

from gpt2_lib.models import Backbone
from gpt2_lib.models import GPT2Backbone
from gpt2_lib.models.gpt2.gpt2_causal_lm import GPT2CausalLM
from gpt2_lib.models.gpt2.gpt2_causal_lm_preprocessor import GPT2CausalLMPreprocessor
from gpt2_lib.models.gpt2.gpt2_tokenizer import GPT2Tokenizer
from tests.preset_io.helpers import KH_BACKBONE
from tests.preset_io.helpers import KH_CAUSAL_LM


def _copy(tmp_path, source=KH_BACKBONE):
    target = tmp_path / "p"
    shutil.copytree(source, target)
    return target


def _edit(path, filename, edit):
    config = json.load(open(path / filename))
    edit(config)
    json.dump(config, open(path / filename, "w"))


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("dropout", "0.1", r"config\.json.*dropout='0\.1' \(str\).*must be a number.*pass `dropout=\.\.\.`"),
        ("max_sequence_length", 16.0, r"config\.json.*max_sequence_length=16\.0.*must be an integer"),
        ("layer_norm_epsilon", None, r"config\.json.*layer_norm_epsilon=None.*must be a number"),
        ("num_layers", "2", r"Could not build GPT2Backbone from the `config\.json` of preset .*num_layers"),
    ],
)
def test_wrong_typed_keras_hub_values_name_the_file_and_field(tmp_path, key, value, match):
    path = _copy(tmp_path)
    _edit(path, "config.json", lambda c: c["config"].update({key: value}))
    with pytest.raises(ValueError, match=match):
        Backbone.from_preset(path)


def test_wrong_typed_values_in_nested_configs(tmp_path):
    path = _copy(tmp_path, KH_CAUSAL_LM)
    _edit(path, "task.json", lambda c: c["config"]["preprocessor"]["config"].update(add_end_token="yes"))
    with pytest.raises(ValueError, match=r"task\.json.*add_end_token='yes'.*must be true or false"):
        GPT2CausalLM.from_preset(path)


def test_unknown_keys_warn_and_are_ignored(tmp_path):
    path = _copy(tmp_path)
    _edit(path, "config.json", lambda c: c["config"].update(rotary_dim=64))
    _edit(path, "tokenizer.json", lambda c: c["config"].update(lowercase=True))
    with pytest.warns(UserWarning, match=r"config\.json.*\['rotary_dim'\].*GPT2Backbone does not take"):
        backbone = Backbone.from_preset(path)
    assert backbone.num_layers == 2
    with pytest.warns(UserWarning, match=r"tokenizer\.json.*\['lowercase'\].*ignored"):
        GPT2Tokenizer.from_preset(path)


def test_keras_hub_fixtures_load_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GPT2CausalLM.from_preset(KH_CAUSAL_LM)
        GPT2CausalLMPreprocessor.from_preset(KH_BACKBONE)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.update(class_name="BertBackbone"), r"contradictory: class_name='BertBackbone'"),
        (lambda c: c.update(module="evil.module"), r"contradictory: module='evil\.module'"),
        (lambda c: c.update(module="gpt2_lib.models"), r"contradictory: module='gpt2_lib\.models'.*'keras_hub'"),
    ],
)
def test_names_contradicting_registered_name_are_refused(tmp_path, edit, match):
    path = _copy(tmp_path)
    _edit(path, "config.json", edit)
    with pytest.raises(ValueError, match=r"`config\.json` of preset .*" + match):
        Backbone.from_preset(path)


@pytest.mark.parametrize("key", ["vocabulary", "merges"])
@pytest.mark.parametrize("filename", ["tokenizer.json", "preprocessor.json"])
def test_tokenizer_files_outside_the_preset_are_refused(tmp_path, key, filename):
    path = _copy(tmp_path, KH_CAUSAL_LM)
    secret = tmp_path / "secret.txt"
    secret.write_text("{}")

    def edit(config):
        inner = config["config"] if filename == "tokenizer.json" else config["config"]["tokenizer"]["config"]
        inner[key] = str(secret)

    _edit(path, filename, edit)
    load = GPT2Tokenizer.from_preset if filename == "tokenizer.json" else GPT2CausalLMPreprocessor.from_preset
    with pytest.raises(ValueError, match=rf"{filename}.*`{key}` to the path .*secret\.txt.*remove `{key}`"):
        load(path)


def test_empty_and_wrong_type_presets():
    with pytest.raises(ValueError, match="non-empty string"):
        Backbone.from_preset("")
    with pytest.raises(TypeError, match="non-empty string.*int"):
        Backbone.from_preset(3)


def test_config_json_that_is_not_an_object(tmp_path):
    path = _copy(tmp_path)
    (path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"Unrecognized `config\.json`.*Keys: list"):
        GPT2Backbone.from_preset(path)


def test_tokenizer_only_preset_has_no_backbone(tmp_path):
    GPT2Tokenizer.from_preset(KH_BACKBONE).save_to_preset(tmp_path / "t")
    assert os.listdir(tmp_path / "t") and GPT2Tokenizer.from_preset(tmp_path / "t").vocabulary_size() == 262
    with pytest.raises(FileNotFoundError, match=r"`config\.json` is missing"):
        Backbone.from_preset(tmp_path / "t")
