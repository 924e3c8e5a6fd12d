"""GPT2CausalLMPreprocessor: shifted labels, generation helpers, pipelines.

Expected values are built from tiktoken's reference ids and KerasHub's
rule: pack to `sequence_length + 1` (start id, tokens, end id, right
padding), inputs are all but the last position, labels all but the first.
"""

import functools
import json
import os

import keras
import numpy as np
import pytest

from gpt2_lib.models.causal_lm_preprocessor import CausalLMPreprocessor
from gpt2_lib.models.gpt2.gpt2_causal_lm_preprocessor import GPT2CausalLMPreprocessor
from gpt2_lib.tokenizers import GPT2Tokenizer
from tests.real_data import gpt2_encoder_files
from tests.real_data import shakespeare_lines
from tests.real_data import tiktoken_gpt2_reference

EOT_ID = 50256
FIXTURES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    "fixtures",
    "keras_hub",
)
TEXTS = ["The quick brown fox.", "a", "", "Fish taco please! " * 5]


@functools.lru_cache(maxsize=None)
def tokenizer():
    return GPT2Tokenizer(*gpt2_encoder_files())


def expected_training(text, length):
    ids = tiktoken_gpt2_reference().encode(text, allowed_special="all")
    packed = ([EOT_ID] + ids[: length + 1 - 2] + [EOT_ID])[: length + 1]
    mask = [True] * len(packed) + [False] * (length + 1 - len(packed))
    packed = packed + [EOT_ID] * (length + 1 - len(packed))
    return packed[:-1], mask[:-1], packed[1:], mask[1:]


def test_batch_training_outputs():
    preprocessor = GPT2CausalLMPreprocessor(tokenizer(), sequence_length=9)
    x, y, sample_weight = preprocessor(TEXTS)
    assert x["token_ids"].shape == y.shape == sample_weight.shape == (4, 9)
    assert x["token_ids"].dtype == y.dtype == np.int32
    assert x["padding_mask"].dtype == sample_weight.dtype == bool
    for i, text in enumerate(TEXTS):
        ids, mask, labels, weights = expected_training(text, 9)
        np.testing.assert_array_equal(x["token_ids"][i], ids)
        np.testing.assert_array_equal(x["padding_mask"][i], mask)
        np.testing.assert_array_equal(y[i], labels)
        np.testing.assert_array_equal(sample_weight[i], weights)
    # Labels are the inputs shifted by one.
    np.testing.assert_array_equal(y[:, :-1], x["token_ids"][:, 1:])


def test_single_string_and_issue_example():
    preprocessor = GPT2CausalLMPreprocessor(tokenizer(), sequence_length=128)
    x, y, sample_weight = preprocessor(["some training text"])
    assert x["token_ids"].shape == (1, 128)
    x, y, sample_weight = preprocessor("The quick brown fox.", sequence_length=8)
    np.testing.assert_array_equal(
        x["token_ids"], [50256, 464, 2068, 7586, 21831, 13, 50256, 50256]
    )
    np.testing.assert_array_equal(y, [464, 2068, 7586, 21831, 13, 50256, 50256, 50256])
    np.testing.assert_array_equal(sample_weight, [1, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(x["padding_mask"], [1, 1, 1, 1, 1, 1, 1, 0])


def test_labels_are_rejected():
    preprocessor = GPT2CausalLMPreprocessor(tokenizer(), sequence_length=4)
    with pytest.raises(ValueError, match="`y` and `sample_weight` must be `None`"):
        preprocessor(["a"], [1])
    with pytest.raises(ValueError, match="`y` and `sample_weight` must be `None`"):
        preprocessor((["a"], [1]))


def test_generate_preprocess_and_postprocess():
    preprocessor = GPT2CausalLMPreprocessor(tokenizer(), sequence_length=8)
    prompts = ["The quick", "a", "Fish taco please! Fish taco please!"]
    x = preprocessor.generate_preprocess(prompts)
    reference = tiktoken_gpt2_reference()
    for i, prompt in enumerate(prompts):
        ids = ([EOT_ID] + reference.encode(prompt))[:8]  # No end token.
        np.testing.assert_array_equal(x["token_ids"][i, : len(ids)], ids)
        np.testing.assert_array_equal(
            x["padding_mask"][i], [True] * len(ids) + [False] * (8 - len(ids))
        )
    assert preprocessor.generate_postprocess(x) == [
        "The quick",
        "a",
        reference.decode(reference.encode(prompts[2])[:7]),
    ]
    single = preprocessor.generate_preprocess("The quick", sequence_length=5)
    assert single["token_ids"].shape == (5,)
    assert preprocessor.generate_postprocess(single) == "The quick"


def test_generate_postprocess_drops_special_and_masked_tokens():
    preprocessor = GPT2CausalLMPreprocessor(tokenizer(), sequence_length=8)
    reference = tiktoken_gpt2_reference()
    fox = reference.encode(" fox")
    token_ids = np.array([[EOT_ID, 464, 2068] + fox + [EOT_ID, 7586, 13, 99]])
    padding_mask = np.array([[1, 1, 1, 1, 1, 1, 1, 0]], dtype=bool)
    # As backend tensors, as a causal LM's generate() produces them.
    out = preprocessor.generate_postprocess(
        {
            "token_ids": keras.ops.convert_to_tensor(token_ids),
            "padding_mask": keras.ops.convert_to_tensor(padding_mask),
        }
    )
    assert out == ["The quick fox brown."]
    as_lists = preprocessor.generate_postprocess(
        {"token_ids": token_ids.tolist(), "padding_mask": padding_mask.tolist()}
    )
    assert as_lists == out
    with pytest.raises(ValueError, match="'token_ids' and 'padding_mask'"):
        preprocessor.generate_postprocess(token_ids)
    with pytest.raises(ValueError, match="same 1-D or 2-D shape"):
        preprocessor.generate_postprocess(
            {"token_ids": token_ids, "padding_mask": padding_mask[:, :3]}
        )


class CharTokenizer:
    """A duck-typed tokenizer: only `tokenize(str)` and `detokenize(ids)`."""

    def tokenize(self, text):
        return [ord(c) for c in text]

    def detokenize(self, ids):
        return "".join(map(chr, ids))


def test_any_tokenizer_and_any_text_input():
    preprocessor = CausalLMPreprocessor(tokenizer=CharTokenizer(), sequence_length=3)
    expected_x = [[97, 98, 0], [233, 0, 0]]
    expected_y = [[98, 0, 0], [0, 0, 0]]
    for batch in (["ab", "é"], ["ab", "é".encode()], np.array([b"ab", "é".encode()])):
        x, y, sample_weight = preprocessor(batch)
        assert x["token_ids"].tolist() == expected_x
        assert y.tolist() == expected_y
        assert sample_weight.tolist() == [[True, False, False], [False, False, False]]
    x, y, _ = preprocessor(b"ab")
    assert x["token_ids"].tolist() == [97, 98, 0]
    # An empty batch is a batch of no rows, not one empty string.
    x, y, _ = preprocessor([])
    assert x["token_ids"].shape == (0, 3) and y.shape == (0, 3)
    with pytest.raises(TypeError, match="Item 1 of the batch"):
        preprocessor(["ab", 5])


def test_config_round_trip():
    preprocessor = GPT2CausalLMPreprocessor(
        tokenizer(), sequence_length=6, add_start_token=False
    )
    config = preprocessor.get_config()
    assert {
        "name",
        "config_file",
        "tokenizer",
        "sequence_length",
        "add_start_token",
        "add_end_token",
    } <= set(config)
    restored = GPT2CausalLMPreprocessor.from_config(json.loads(json.dumps(config)))
    restored.tokenizer.set_vocabulary_and_merges(*gpt2_encoder_files())
    assert restored.get_config() == config
    for a, b in zip(
        keras.tree.flatten(preprocessor(TEXTS)),
        keras.tree.flatten(restored(TEXTS)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert isinstance(restored, CausalLMPreprocessor)


def test_from_keras_hub_config_and_assets():
    with open(os.path.join(FIXTURES, "kh_causal_lm", "preprocessor.json")) as f:
        saved = json.load(f)
    preprocessor = GPT2CausalLMPreprocessor.from_config(saved["config"])
    assert preprocessor.name == "gpt2_causal_lm_preprocessor"
    assert preprocessor.sequence_length == 8
    preprocessor.load_assets(
        os.path.join(FIXTURES, "kh_causal_lm", "assets", "tokenizer")
    )
    vocab = preprocessor.tokenizer.vocabulary
    x, y, w = preprocessor(["the"])
    eot = vocab["<|endoftext|>"]
    np.testing.assert_array_equal(x["token_ids"][0, :3], [eot, vocab["t"], vocab["he"]])
    np.testing.assert_array_equal(y[0, :3], [vocab["t"], vocab["he"], eot])
    assert w[0].tolist() == [True] * 3 + [False] * 5


class TextBatches(keras.utils.PyDataset):
    """Feeds preprocessed Shakespeare batches to `fit()`."""

    def __init__(self, preprocessor, lines, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.preprocessor = preprocessor
        self.lines = lines
        self.batch_size = batch_size

    def __len__(self):
        return len(self.lines) // self.batch_size

    def __getitem__(self, index):
        batch = self.lines[index * self.batch_size : (index + 1) * self.batch_size]
        x, y, sample_weight = self.preprocessor(batch)
        return x["token_ids"], y, sample_weight


def test_py_dataset_feeds_fit():
    preprocessor = GPT2CausalLMPreprocessor(tokenizer(), sequence_length=16)
    lines = [line for line in shakespeare_lines()[:2000] if line.strip()][:64]
    dataset = TextBatches(preprocessor, lines, batch_size=16)
    x, y, w = dataset[1]
    expected_x, expected_y, expected_w = preprocessor(lines[16:32])
    np.testing.assert_array_equal(x, expected_x["token_ids"])
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(w, expected_w)
    inputs = keras.Input(shape=(16,), dtype="int32")
    hidden = keras.layers.Embedding(tokenizer().vocabulary_size(), 8)(inputs)
    outputs = keras.layers.Dense(tokenizer().vocabulary_size())(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_python_generator_feeds_fit():
    preprocessor = GPT2CausalLMPreprocessor(tokenizer(), sequence_length=8)

    def batches():
        for start in range(0, 32, 8):
            x, y, w = preprocessor(list(shakespeare_lines()[start : start + 8]))
            yield x["token_ids"], y, w.astype("float32")

    inputs = keras.Input(shape=(8,), dtype="int32")
    outputs = keras.layers.Dense(tokenizer().vocabulary_size())(
        keras.layers.Embedding(tokenizer().vocabulary_size(), 4)(inputs)
    )
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(
        batches(), epochs=1, steps_per_epoch=4, shuffle=False, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])


def test_tf_data_numpy_function():
    tf = pytest.importorskip("tensorflow")
    preprocessor = GPT2CausalLMPreprocessor(tokenizer(), sequence_length=10)
    lines = list(shakespeare_lines()[100:140])

    def preprocess(batch):
        x, y, w = preprocessor(batch)
        return x["token_ids"], x["padding_mask"], y, w

    ds = tf.data.Dataset.from_tensor_slices(lines).batch(8)
    ds = ds.map(
        lambda s: tf.numpy_function(
            preprocess, [s], [tf.int32, tf.bool, tf.int32, tf.bool]
        ),
        num_parallel_calls=2,
        deterministic=True,
    )
    got = [
        np.concatenate(parts) for parts in zip(*[[t.numpy() for t in b] for b in ds])
    ]
    x, y, w = preprocessor(lines)
    for a, b in zip(got, [x["token_ids"], x["padding_mask"], y, w], strict=True):
        np.testing.assert_array_equal(a, b)


def _preset_io_available():
    try:
        from gpt2_lib.preset_io import load_preprocessor  # noqa: F401
    except ImportError:
        return False
    return True


needs_preset_io = pytest.mark.skipif(
    not _preset_io_available(), reason="gpt2_lib.preset_io not available yet"
)


@needs_preset_io
def test_from_keras_hub_preset():
    preprocessor = GPT2CausalLMPreprocessor.from_preset(
        os.path.join(FIXTURES, "kh_causal_lm")
    )
    assert preprocessor.sequence_length == 8
    vocab = preprocessor.tokenizer.vocabulary
    x, _, _ = preprocessor("the")
    assert x["token_ids"][:3].tolist() == [
        vocab["<|endoftext|>"],
        vocab["t"],
        vocab["he"],
    ]
    override = GPT2CausalLMPreprocessor.from_preset(
        os.path.join(FIXTURES, "kh_causal_lm"), sequence_length=4
    )
    assert override("the")[0]["token_ids"].shape == (4,)


@needs_preset_io
def test_save_to_preset_and_from_preset(tmp_path):
    preprocessor = GPT2CausalLMPreprocessor(tokenizer(), sequence_length=12)
    preset = str(tmp_path / "preset")
    preprocessor.save_to_preset(preset)
    loaded = GPT2CausalLMPreprocessor.from_preset(preset)
    assert loaded.sequence_length == 12
    for a, b in zip(
        keras.tree.flatten(preprocessor(TEXTS)),
        keras.tree.flatten(loaded(TEXTS)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
