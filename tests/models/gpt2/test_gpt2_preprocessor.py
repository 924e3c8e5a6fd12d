"""GPT2Preprocessor: packing, masks, labels pass-through, config, presets.

Expected values are built from tiktoken's reference ids and KerasHub's
packing rule (start id, tokens truncated to fit, end id, right padding).
"""

import functools
import json
import os

import numpy as np
import pytest

from gpt2_lib.models.gpt2.gpt2_preprocessor import GPT2Preprocessor
from gpt2_lib.tokenizers import GPT2Tokenizer
from tests.real_data import gpt2_encoder_files
from tests.real_data import tiktoken_gpt2_reference

EOT_ID = 50256
FIXTURES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    "fixtures",
    "keras_hub",
)
TEXTS = ["The quick brown fox.", "a", "", "Taco tuesday " * 10]


@functools.lru_cache(maxsize=None)
def tokenizer():
    return GPT2Tokenizer(*gpt2_encoder_files())


def expected_pack(text, length, add_start=True, add_end=True):
    ids = tiktoken_gpt2_reference().encode(text, allowed_special="all")
    keep = length - add_start - add_end
    row = [EOT_ID] * add_start + ids[:keep] + [EOT_ID] * add_end
    mask = [True] * len(row) + [False] * (length - len(row))
    return row + [EOT_ID] * (length - len(row)), mask


def test_batch_outputs():
    preprocessor = GPT2Preprocessor(tokenizer(), sequence_length=12)
    x = preprocessor(TEXTS)
    assert set(x) == {"token_ids", "padding_mask"}
    assert x["token_ids"].shape == (4, 12) and x["token_ids"].dtype == np.int32
    assert x["padding_mask"].shape == (4, 12) and x["padding_mask"].dtype == bool
    for i, text in enumerate(TEXTS):
        ids, mask = expected_pack(text, 12)
        np.testing.assert_array_equal(x["token_ids"][i], ids)
        np.testing.assert_array_equal(x["padding_mask"][i], mask)


def test_single_string_is_unbatched():
    preprocessor = GPT2Preprocessor(tokenizer(), sequence_length=8)
    x = preprocessor("The quick brown fox.")
    assert x["token_ids"].shape == (8,)
    ids, mask = expected_pack("The quick brown fox.", 8)
    np.testing.assert_array_equal(x["token_ids"], ids)
    np.testing.assert_array_equal(x["padding_mask"], mask)
    np.testing.assert_array_equal(
        x["token_ids"], [50256, 464, 2068, 7586, 21831, 13, 50256, 50256]
    )


@pytest.mark.parametrize(
    "add_start, add_end", [(False, True), (True, False), (False, False)]
)
def test_start_end_flags(add_start, add_end):
    preprocessor = GPT2Preprocessor(
        tokenizer(), sequence_length=5, add_start_token=add_start, add_end_token=add_end
    )
    x = preprocessor(TEXTS)
    for i, text in enumerate(TEXTS):
        ids, mask = expected_pack(text, 5, add_start, add_end)
        np.testing.assert_array_equal(x["token_ids"][i], ids)
        np.testing.assert_array_equal(x["padding_mask"][i], mask)


def test_labels_pass_through_and_tuple_unpacking():
    preprocessor = GPT2Preprocessor(tokenizer(), sequence_length=6)
    x, y = preprocessor(["Good", "Bad"], [1, 0])
    np.testing.assert_array_equal(y, [1, 0])
    x2, y2, w2 = preprocessor((["Good", "Bad"], np.array([1, 0]), np.array([0.5, 1.0])))
    np.testing.assert_array_equal(x2["token_ids"], x["token_ids"])
    np.testing.assert_array_equal(w2, [0.5, 1.0])
    only_x = preprocessor(["Good", "Bad"])
    assert isinstance(only_x, dict)


def test_sequence_length_override_and_tokenizer_padding_ignored():
    padded_tokenizer = GPT2Tokenizer(*gpt2_encoder_files(), sequence_length=3)
    preprocessor = GPT2Preprocessor(padded_tokenizer, sequence_length=4)
    x = preprocessor(TEXTS, sequence_length=9)
    assert x["token_ids"].shape == (4, 9)
    for i, text in enumerate(TEXTS):
        ids, mask = expected_pack(text, 9)
        np.testing.assert_array_equal(x["token_ids"][i], ids)
        np.testing.assert_array_equal(x["padding_mask"][i], mask)
    preprocessor.sequence_length = 3
    assert preprocessor(["abc"])["token_ids"].shape == (1, 3)


def test_numpy_and_tensorflow_inputs():
    preprocessor = GPT2Preprocessor(tokenizer(), sequence_length=7)
    expected = preprocessor(TEXTS)["token_ids"]
    np.testing.assert_array_equal(
        preprocessor(np.array([t.encode() for t in TEXTS], dtype=object))["token_ids"],
        expected,
    )
    tf = pytest.importorskip("tensorflow")
    np.testing.assert_array_equal(
        preprocessor(tf.constant(TEXTS))["token_ids"], expected
    )


def test_config_round_trip():
    import keras

    preprocessor = GPT2Preprocessor(
        tokenizer(), sequence_length=10, add_end_token=False
    )
    config = preprocessor.get_config()
    assert config["sequence_length"] == 10 and config["add_end_token"] is False
    assert config["tokenizer"]["registered_name"] == "gpt2_lib>GPT2Tokenizer"
    assert "vocabulary" not in json.dumps(config)
    restored = GPT2Preprocessor.from_config(config)
    assert isinstance(restored.tokenizer, GPT2Tokenizer)
    restored.tokenizer.set_vocabulary_and_merges(*gpt2_encoder_files())
    assert restored.get_config() == config
    for key, value in preprocessor(TEXTS).items():
        np.testing.assert_array_equal(restored(TEXTS)[key], value)
    serialized = keras.saving.serialize_keras_object(preprocessor)
    assert serialized["registered_name"] == "gpt2_lib>GPT2Preprocessor"
    assert isinstance(
        keras.saving.deserialize_keras_object(serialized), GPT2Preprocessor
    )


def test_from_keras_hub_config():
    with open(os.path.join(FIXTURES, "kh_causal_lm", "preprocessor.json")) as f:
        saved = json.load(f)
    preprocessor = GPT2Preprocessor.from_config(saved["config"])
    assert preprocessor.sequence_length == 8
    assert isinstance(preprocessor.tokenizer, GPT2Tokenizer)
    preprocessor.load_assets(
        os.path.join(FIXTURES, "kh_causal_lm", "assets", "tokenizer")
    )
    x = preprocessor("the fox")
    vocab = preprocessor.tokenizer.vocabulary
    eot = vocab["<|endoftext|>"]
    expected = [
        eot,
        vocab["t"],
        vocab["he"],
        vocab["Ġ"],
        vocab["f"],
        vocab["o"],
        vocab["x"],
        eot,
    ]
    np.testing.assert_array_equal(x["token_ids"], expected)
    assert x["padding_mask"].all()


def test_errors():
    with pytest.raises(
        ValueError, match="`sequence_length` must be a positive integer"
    ):
        GPT2Preprocessor(tokenizer(), sequence_length=0)
    with pytest.raises(
        ValueError, match="`sequence_length` must be a positive integer"
    ):
        GPT2Preprocessor(tokenizer(), sequence_length=2.5)
    with pytest.raises(
        ValueError, match="`sequence_length` must be a positive integer"
    ):
        GPT2Preprocessor(tokenizer())(["a"], sequence_length=-1)
    with pytest.raises(TypeError, match="`tokenizer` must be a tokenizer"):
        GPT2Preprocessor("gpt2_base_en")
    with pytest.raises(ValueError, match="has no tokenizer"):
        GPT2Preprocessor(None)(["a"])
    with pytest.raises(TypeError, match="unexpected keyword.*seq_len"):
        GPT2Preprocessor(tokenizer(), seq_len=3)
    with pytest.raises(TypeError, match="Item 1 of the batch"):
        GPT2Preprocessor(tokenizer())(["a", 3])


def _preset_io_available():
    try:
        from gpt2_lib.preset_io import load_preprocessor  # noqa: F401
        from gpt2_lib.preset_io import save_preprocessor  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(
    not _preset_io_available(), reason="gpt2_lib.preset_io not available yet"
)
def test_save_to_preset_and_from_preset(tmp_path):
    preprocessor = GPT2Preprocessor(tokenizer(), sequence_length=16)
    preset = str(tmp_path / "preset")
    preprocessor.save_to_preset(preset)
    assert os.path.isfile(os.path.join(preset, "preprocessor.json"))
    assert os.path.isfile(os.path.join(preset, "assets", "tokenizer", "merges.txt"))
    loaded = GPT2Preprocessor.from_preset(preset)
    assert loaded.sequence_length == 16
    for key, value in preprocessor(TEXTS).items():
        np.testing.assert_array_equal(loaded(TEXTS)[key], value)
