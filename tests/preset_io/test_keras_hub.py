"""KerasHub's preset format, both ways, against KerasHub-made fixtures."""

import json
import os
import shutil

import h5py
import keras
import numpy as np
import pytest

import gpt2_lib
from gpt2_lib.models import Backbone
from gpt2_lib.models import GPT2Backbone
from gpt2_lib.preset_io import keras_hub_weights
from tests.preset_io.helpers import KH_BACKBONE
from tests.preset_io.helpers import KH_SHARDED
from tests.preset_io.helpers import SAVED_BY_US
from tests.preset_io.helpers import assert_close_on_mask
from tests.preset_io.helpers import run_backbone
from tests.preset_io.helpers import tiny_backbone
from tests.preset_io.helpers import weights_of


@pytest.mark.parametrize("fixture", [KH_BACKBONE, KH_SHARDED])
def test_keras_hub_preset_loads_with_equal_outputs(fixture):
    expected = np.load(os.path.join(fixture, "expected.npz"))
    backbone = Backbone.from_preset(fixture)
    assert type(backbone) is GPT2Backbone
    out = run_backbone(backbone, expected["token_ids"], expected["padding_mask"])
    assert_close_on_mask(out, expected["outputs"], expected["padding_mask"])


def test_preset_saved_here_matches_keras_hub_outputs(tmp_path):
    """`saved_by_gpt2_lib/` was loaded by KerasHub 0.32 (make_fixtures.py).

    We re-save it now and check our writer still produces that exact
    format, so KerasHub still loads what we write today.
    """
    inputs = np.load(os.path.join(SAVED_BY_US, "inputs.npz"))
    keras_hub_out = np.load(os.path.join(SAVED_BY_US, "keras_hub_outputs.npz"))
    backbone = GPT2Backbone.from_preset(SAVED_BY_US)
    out = run_backbone(backbone, inputs["token_ids"], inputs["padding_mask"])
    np.testing.assert_allclose(out, keras_hub_out["outputs"], atol=1e-5, rtol=0)

    backbone.save_to_preset(tmp_path / "again")
    for name in ("config.json",):
        with open(tmp_path / "again" / name) as f, open(os.path.join(SAVED_BY_US, name)) as g:
            assert json.load(f) == json.load(g)
    with h5py.File(tmp_path / "again" / "model.weights.h5") as f, h5py.File(
        os.path.join(SAVED_BY_US, "model.weights.h5")
    ) as g:
        def datasets(h):
            names = []
            h.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            return sorted(names)
        assert datasets(f) == datasets(g)
        for name in datasets(f):
            np.testing.assert_array_equal(f[name][()], g[name][()])


def test_save_load_round_trip_sharded(tmp_path):
    backbone = tiny_backbone()
    token_ids = np.array([[1, 2, 3, 4]])
    mask = np.ones_like(token_ids)
    backbone.save_to_preset(tmp_path / "p", max_shard_size=0.00003)
    files = sorted(os.listdir(tmp_path / "p"))
    assert "model.weights.json" in files and "model_00001.weights.h5" in files
    assert "model.weights.h5" not in files
    loaded = Backbone.from_preset(str(tmp_path / "p"))
    np.testing.assert_array_equal(
        run_backbone(loaded, token_ids, mask), run_backbone(backbone, token_ids, mask)
    )
    # Re-saving unsharded into the same directory removes the shards.
    loaded.save_to_preset(tmp_path / "p")
    files = sorted(os.listdir(tmp_path / "p"))
    assert "model.weights.h5" in files and not any(f.startswith("model_") for f in files)


def test_overrides_apply_and_load_weights_false(tmp_path):
    backbone = tiny_backbone()
    backbone.save_to_preset(tmp_path / "p")
    loaded = GPT2Backbone.from_preset(
        tmp_path / "p", dtype="bfloat16", dropout=0.25, trainable=False
    )
    assert loaded.dropout == 0.25 and not loaded.trainable
    assert keras.backend.standardize_dtype(loaded.token_embedding.embeddings.dtype) == "bfloat16"
    np.testing.assert_allclose(
        weights_of(loaded)[0].astype("float32"), weights_of(backbone)[0], atol=1e-2
    )
    fresh = GPT2Backbone.from_preset(tmp_path / "p", load_weights=False)
    assert fresh.get_config()["hidden_dim"] == 32
    assert not np.allclose(weights_of(fresh)[0], weights_of(backbone)[0])
    assert np.std(weights_of(fresh)[0]) > 0.01  # really random, not zeros
    with pytest.raises(TypeError, match="not_a_kwarg"):
        GPT2Backbone.from_preset(tmp_path / "p", not_a_kwarg=1)


def test_non_default_epsilon_kept_default_omitted(tmp_path):
    tiny_backbone().save_to_preset(tmp_path / "a")
    config = json.load(open(tmp_path / "a" / "config.json"))
    assert "layer_norm_epsilon" not in config["config"]
    assert config["registered_name"] == "keras_hub>GPT2Backbone"
    tiny_backbone(layer_norm_epsilon=1e-6).save_to_preset(tmp_path / "b")
    config = json.load(open(tmp_path / "b" / "config.json"))
    assert config["config"]["layer_norm_epsilon"] == 1e-6
    assert GPT2Backbone.from_preset(tmp_path / "b").layer_norm_epsilon == 1e-6


@keras.saving.register_keras_serializable(package="tests_preset_io")
class OtherBackbone(Backbone):
    pass


def _copy(tmp_path, source=KH_BACKBONE):
    target = tmp_path / "p"
    shutil.copytree(source, target)
    return target


def _edit_config(path, edit):
    config = json.load(open(path / "config.json"))
    edit(config)
    json.dump(config, open(path / "config.json", "w"))


def test_bad_presets_give_specific_errors(tmp_path):
    with pytest.raises(ValueError, match="GPT2Backbone.*not a OtherBackbone"):
        OtherBackbone.from_preset(KH_BACKBONE)

    path = _copy(tmp_path)
    _edit_config(path, lambda c: c.update(registered_name="other_lib>GPT2Backbone"))
    with pytest.raises(ValueError, match="other_lib"):
        Backbone.from_preset(path)

    _edit_config(path, lambda c: c.update(registered_name="keras_hub>BertBackbone"))
    with pytest.raises(ValueError, match="BertBackbone"):
        Backbone.from_preset(path)

    (path / "config.json").write_text('{"module": "keras_hub.src')
    with pytest.raises(ValueError, match="config.json.*not valid JSON"):
        Backbone.from_preset(path)

    os.remove(path / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        Backbone.from_preset(path)


def test_truncated_and_mismatched_weights(tmp_path):
    path = _copy(tmp_path)
    weights = path / "model.weights.h5"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.weights.h5"):
        Backbone.from_preset(path)

    path = _copy(tmp_path / "b")
    _edit_config(path, lambda c: c["config"].update(intermediate_dim=128))
    with pytest.raises(ValueError, match=r"_feedforward_intermediate_dense/vars/0.*model.weights.h5"):
        Backbone.from_preset(path)

    path = _copy(tmp_path / "c")
    _edit_config(path, lambda c: c["config"].update(num_layers=3))
    with pytest.raises(ValueError, match=r"transformer_decoder_2.*truncated or was saved"):
        Backbone.from_preset(path)


def test_external_links_refused(tmp_path):
    path = _copy(tmp_path)
    with h5py.File(path / "model.weights.h5", "a") as f:
        del f["layers/layer_normalization/vars/0"]
        f["layers/layer_normalization/vars/0"] = h5py.ExternalLink("/etc/other.h5", "/x")
    with pytest.raises(ValueError, match="links are not allowed"):
        Backbone.from_preset(path)


def test_save_is_atomic(tmp_path, monkeypatch):
    backbone = tiny_backbone()
    target = tmp_path / "p"
    backbone.save_to_preset(target)
    before = {name: (target / name).read_bytes() for name in ("config.json", "model.weights.h5")}

    calls = []
    original = keras_hub_weights._write_h5

    def failing_write(filepath, model, pairs):
        calls.append(filepath)
        original(filepath, model, pairs[: len(pairs) // 2])  # half written...
        raise KeyboardInterrupt("injected failure mid-save")

    monkeypatch.setattr(keras_hub_weights, "_write_h5", failing_write)
    other = tiny_backbone(seed=1, hidden_dim=16)
    with pytest.raises(KeyboardInterrupt):
        other.save_to_preset(target)
    with pytest.raises(KeyboardInterrupt):
        other.save_to_preset(tmp_path / "new")
    assert calls
    assert not (tmp_path / "new").exists()
    assert sorted(os.listdir(tmp_path)) == ["p"]  # no temporary directories left
    after = {name: (target / name).read_bytes() for name in before}
    assert after == before


def test_tokenizer_round_trip_and_class_inference(tmp_path):
    from gpt2_lib.models.gpt2.gpt2_tokenizer import GPT2Tokenizer
    from gpt2_lib.tokenizers.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_preset(KH_BACKBONE)
    assert type(tokenizer) is GPT2Tokenizer
    ids = tokenizer("the hat in a cat")
    assert ids[:2] == [83, 257]  # "t", "he" (merge "h e" in the fixture)
    tokenizer.save_to_preset(tmp_path / "p")
    config = json.load(open(tmp_path / "p" / "tokenizer.json"))
    assert config["registered_name"] == "keras_hub>GPT2Tokenizer"
    assert sorted(os.listdir(tmp_path / "p" / "assets" / "tokenizer")) == ["merges.txt", "vocabulary.json"]
    assert GPT2Tokenizer.from_preset(tmp_path / "p", sequence_length=20)("the hat in a cat")[:len(ids)].tolist() == ids


def test_asset_path_cannot_escape(tmp_path):
    from gpt2_lib.models.gpt2.gpt2_tokenizer import GPT2Tokenizer

    path = _copy(tmp_path)
    config = json.load(open(path / "tokenizer.json"))
    config["config"]["config_file"] = "../../../../etc/passwd.json"
    json.dump(config, open(path / "tokenizer.json", "w"))
    with pytest.raises(ValueError, match="not a plain file name"):
        GPT2Tokenizer.from_preset(path)


def test_keras_hub_metadata_written(tmp_path):
    backbone = tiny_backbone()
    backbone.save_to_preset(tmp_path / "p")
    metadata = json.load(open(tmp_path / "p" / "metadata.json"))
    assert metadata["parameter_count"] == backbone.count_params()
    assert metadata["keras_version"] == keras.version()


def test_quantized_layers_use_keras_hub_layout_without_special_cases(tmp_path):
    from gpt2_lib.preset_io import keras_hub_weights

    source = tiny_backbone()
    source.quantize("int8")
    keras_hub_weights.save_backbone_weights(source, str(tmp_path))
    with h5py.File(tmp_path / "model.weights.h5") as f:
        query = f["layers/transformer_decoder_1/_self_attention_layer/query_dense/vars"]
        assert sorted(query) == ["0", "1", "2"]  # kernel, bias, kernel_scale
        assert query["0"].dtype == np.int8 and query["2"].dtype == np.float32
        assert f["layers/reversible_embedding/vars/0"].dtype == np.int8
    target = tiny_backbone(seed=3)
    target.quantize("int8")
    keras_hub_weights.load_backbone_weights(target, str(tmp_path))
    for expected, actual in zip(weights_of(source), weights_of(target)):
        np.testing.assert_array_equal(actual, expected)
    tokens = np.array([[1, 2, 3, 4]])
    np.testing.assert_array_equal(
        run_backbone(target, tokens, np.ones_like(tokens)), run_backbone(source, tokens, np.ones_like(tokens))
    )
    # Integer data never loads into a float variable.
    with pytest.raises(ValueError, match=r"reversible_embedding/vars/0.*dtype int8.*float32.*quantized"):
        keras_hub_weights.load_backbone_weights(tiny_backbone(), str(tmp_path))
