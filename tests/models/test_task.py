"""Task data plumbing: raw strings and tf.data batches go through the preprocessor."""

import keras
import numpy as np
import pytest

from gpt2_lib.models.task import Task
from gpt2_lib.utils.text_inputs import is_string_data as _is_string_data
from gpt2_lib.models.task import _PreprocessedArrays
from gpt2_lib.models.task import _PreprocessedIterable


def fake_preprocess(x, y=None, sample_weight=None):
    lengths = np.array([len(s) for s in x])
    return {"lengths": lengths}, y, sample_weight


def test_string_detection():
    assert _is_string_data("a") and _is_string_data(["a", "b"])
    assert _is_string_data(np.array(["a", "b"]))
    assert not _is_string_data({"token_ids": np.ones((1, 2))})
    assert not _is_string_data(np.ones((2, 3)))
    assert not _is_string_data([])


def test_arrays_are_batched_shuffled_and_cover_every_sample():
    texts = [f"{'x' * i}" for i in range(1, 11)]
    data = _PreprocessedArrays(fake_preprocess, texts, batch_size=4, shuffle=True)
    assert data.num_batches == 3
    seen = [v for i in range(3) for v in data[i][0]["lengths"].tolist()]
    assert sorted(seen) == list(range(1, 11))
    with pytest.raises(IndexError):
        data[3]
    labels = _PreprocessedArrays(fake_preprocess, texts, y=np.arange(10), batch_size=4)
    x, y, _ = labels[2]
    assert x["lengths"].tolist() == [9, 10] and y.tolist() == [8, 9]


def test_tf_dataset_batches_are_decoded_and_repeat_each_epoch():
    tf = pytest.importorskip("tensorflow")
    dataset = tf.data.Dataset.from_tensor_slices(["ab", "abc", "a"]).batch(2)
    data = _PreprocessedIterable(fake_preprocess, dataset.as_numpy_iterator)
    assert data.num_batches == 2
    for _ in range(2):  # two epochs
        assert data[0][0]["lengths"].tolist() == [2, 3]
        assert data[1][0]["lengths"].tolist() == [1]
        data.on_epoch_end()


def test_task_from_preset_on_the_base_class_is_an_error():
    with pytest.raises(ValueError, match="Task.from_preset"):
        Task.from_preset("gpt2_base_en")


def _tiny_lm():
    from gpt2_lib.models import GPT2Backbone
    from gpt2_lib.models import GPT2CausalLM
    keras.utils.set_random_seed(0)
    backbone = GPT2Backbone(vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=8,
                            intermediate_dim=16, max_sequence_length=16, dropout=0.0)
    lm = GPT2CausalLM(backbone, preprocessor=None)
    lm.compile(optimizer=keras.optimizers.SGD(0.1), sampler="greedy")
    return lm


@pytest.fixture
def made(monkeypatch):
    """Every `tf_data.array_dataset` result, in call order."""
    from gpt2_lib.backends import tf_data

    results = []
    original = tf_data.array_dataset
    monkeypatch.setattr(
        tf_data, "array_dataset", lambda *a: results.append(original(*a)) or results[-1]
    )
    return results


def test_fit_on_arrays_matches_keras_and_avoids_autotuned_pipeline_on_tensorflow(made):
    token_ids = np.random.default_rng(0).integers(0, 40, (6, 9)).astype("int32")
    ours = _tiny_lm()
    history = ours.fit({"token_ids": token_ids}, batch_size=4, epochs=2, shuffle=False, verbose=0)
    # Keras' own array handling, on the same prepared data, from the same start.
    reference = _tiny_lm()
    x, y, sample_weight, _ = reference._prepare_data({"token_ids": token_ids})
    expected = keras.Model.fit(
        reference, x, y, sample_weight=sample_weight, batch_size=4, epochs=2, shuffle=False, verbose=0
    )
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-5)
    for a, b in zip(ours.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    if keras.config.backend() == "tensorflow":
        assert made[0] is not None and made[0].options().autotune.enabled is False
        ours.fit({"token_ids": token_ids}, batch_size=4, epochs=1, shuffle=True, verbose=0)
        ours.fit({"token_ids": token_ids}, batch_size=4, epochs=1, validation_split=0.5, verbose=0)
        assert made[1] is not None and made[2] is None  # validation_split: Keras' own path
    else:
        assert made == [None]


def test_evaluate_and_predict_on_arrays_match_keras(made):
    token_ids = np.random.default_rng(1).integers(0, 40, (6, 9)).astype("int32")
    lm = _tiny_lm()
    x, y, sample_weight, _ = lm._prepare_data({"token_ids": token_ids})
    ours = lm.evaluate({"token_ids": token_ids}, batch_size=4, verbose=0)
    expected = keras.Model.evaluate(lm, x, y, sample_weight=sample_weight, batch_size=4, verbose=0)
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    logits = lm.predict(x, batch_size=4, verbose=0)
    np.testing.assert_allclose(logits, keras.Model.predict(lm, x, batch_size=4, verbose=0), rtol=1e-6)
    assert logits.shape == (6, 8, 40)  # every position of the given token ids
    if keras.config.backend() == "tensorflow":
        assert len(made) == 2 and all(d is not None for d in made)
        assert all(d.options().autotune.enabled is False for d in made)
        lm.evaluate({"token_ids": token_ids}, batch_size=4, steps=1, verbose=0)
        assert made[2] is None  # `steps`: Keras' own path
    else:
        assert made == [None, None]


def test_task_is_registered_for_keras_saving():
    assert keras.saving.get_registered_object("gpt2_lib>Task") is Task


def test_keras_file_keeps_the_tokenizer_and_sampler(tmp_path):
    from gpt2_lib.models import GPT2CausalLM
    """`.keras` files (Keras' own format) hold the tokenizer assets and the sampler."""
    lm = GPT2CausalLM.from_preset("gpt2_tiny_shakespeare_en")
    lm.compile(sampler="greedy")
    lm.fit(["ROMEO: hello there, good friend."], batch_size=1, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    lm.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored.sampler).__name__ == "GreedySampler"
    assert type(restored.optimizer) is type(lm.optimizer)
    assert int(restored.optimizer.iterations.value) == 1  # optimizer state restored
    assert restored.preprocessor.tokenizer.vocabulary_size() == lm.preprocessor.tokenizer.vocabulary_size()
    assert restored.generate("ROMEO:", max_length=24) == lm.generate("ROMEO:", max_length=24)


def test_empty_data_is_a_clear_error():
    from gpt2_lib.models import GPT2CausalLM

    lm = GPT2CausalLM.from_preset("gpt2_tiny_shakespeare_en")
    for data in ([], np.zeros((0, 8), "int32"), {"token_ids": np.zeros((0, 8), "int32")}):
        with pytest.raises(ValueError, match="data is empty"):
            lm.fit(data)


def test_out_of_range_ids_are_refused_at_every_entry_point():
    """Backend tensors too: JAX would gather NaN, TensorFlow garbage."""
    from gpt2_lib.models import GPT2CausalLM

    lm = GPT2CausalLM.from_preset("gpt2_tiny_shakespeare_en")
    size = lm.backbone.vocabulary_size
    ids = np.array([[1, 2, size]], "int32")
    tensor = keras.ops.convert_to_tensor(ids)
    mask = np.ones((1, 3), bool)
    with pytest.raises(ValueError, match=f"Token id {size}"):
        lm.backbone({"token_ids": tensor, "padding_mask": mask})
    with pytest.raises(ValueError, match=f"Token id {size}"):
        lm.score(tensor, mask)
    with pytest.raises(ValueError, match=f"Token id {size}"):
        lm.generate({"token_ids": tensor, "padding_mask": mask}, max_length=6)
    with pytest.raises(ValueError, match=f"Token id {size}"):
        lm.fit({"token_ids": ids, "padding_mask": mask})
    with pytest.raises(ValueError, match="max_sequence_length"):
        lm.score(np.ones((1, lm.backbone.max_sequence_length + 1), "int32"))
