"""Task data plumbing: raw strings and tf.data batches go through the preprocessor."""

import numpy as np
import pytest

from gpt2_lib.models.task import Task
from gpt2_lib.models.task import _is_string_data
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
