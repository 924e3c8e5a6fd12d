"""`gpt2_lib.utils.text_inputs`: the one place that recognises text and id inputs."""

import keras
import numpy as np
import pytest

from gpt2_lib.utils.text_inputs import canonicalize_ids
from gpt2_lib.utils.text_inputs import canonicalize_texts
from gpt2_lib.utils.text_inputs import decode_strings
from gpt2_lib.utils.text_inputs import describe
from gpt2_lib.utils.text_inputs import is_string_data
from gpt2_lib.utils.text_inputs import is_tensor
from gpt2_lib.utils.text_inputs import is_tf_dataset
from gpt2_lib.utils.text_inputs import is_tf_tensor
from gpt2_lib.utils.text_inputs import to_numpy


def test_canonicalize_texts_forms():
    single = (["é x"], False)
    batch = (["é x", "b"], True)
    assert canonicalize_texts("é x") == single
    assert canonicalize_texts("é x".encode()) == single
    assert canonicalize_texts(bytearray("é x".encode())) == single
    assert canonicalize_texts(np.str_("é x")) == single
    assert canonicalize_texts(np.array("é x")) == single
    assert canonicalize_texts(np.array("é x".encode(), dtype=object)) == single
    assert canonicalize_texts(["é x", b"b"]) == batch
    assert canonicalize_texts(("é x", "b")) == batch
    assert canonicalize_texts(np.array(["é x", "b"])) == batch
    assert canonicalize_texts(np.array(["é x".encode(), b"b"])) == batch
    assert canonicalize_texts([]) == ([], True)
    texts, _ = canonicalize_texts([np.str_("a")])
    assert type(texts[0]) is str


def test_canonicalize_texts_tensorflow():
    tf = pytest.importorskip("tensorflow")
    assert canonicalize_texts(tf.constant("é x")) == (["é x"], False)
    assert canonicalize_texts(tf.constant(["é x", "b"])) == (["é x", "b"], True)
    with pytest.raises(ValueError, match="ragged tensor of rank 2"):
        canonicalize_texts(tf.ragged.constant([["a"], ["b", "c"]]))


def test_canonicalize_texts_errors():
    with pytest.raises(TypeError, match="Item 1 of the batch .* int"):
        canonicalize_texts(["a", 3])
    with pytest.raises(TypeError, match="`encode\\(\\)` takes a string"):
        canonicalize_texts(None, caller="encode()")
    with pytest.raises(ValueError, match="shape \\(2, 1\\)"):
        canonicalize_texts(np.array([["a"], ["b"]]))
    with pytest.raises(ValueError, match="Item 1 .* not valid UTF-8 .* at byte 0"):
        canonicalize_texts(["a", b"\xff"])
    with pytest.raises(ValueError, match="The input is bytes that are not valid UTF-8"):
        canonicalize_texts(b"ok\xc3")


def test_canonicalize_ids_forms():
    ids = [3, 1, 2]
    assert canonicalize_ids(ids) == ([ids], False)
    assert canonicalize_ids(tuple(ids)) == ([ids], False)
    assert canonicalize_ids(np.int64(4)) == ([[4]], False)
    assert canonicalize_ids(7) == ([[7]], False)
    assert canonicalize_ids([]) == ([[]], False)
    assert canonicalize_ids(np.array(ids)) == ([ids], False)
    assert canonicalize_ids(np.array([ids, ids])) == ([ids, ids], True)
    assert canonicalize_ids([ids, []]) == ([ids, []], True)
    assert canonicalize_ids([np.array(ids), np.array([5])]) == ([ids, [5]], True)
    tensor = keras.ops.convert_to_tensor(np.array([ids, ids], dtype="int32"))
    assert canonicalize_ids(tensor) == ([ids, ids], True)
    assert canonicalize_ids(tensor[0]) == ([ids], False)
    assert canonicalize_ids([tensor[0], tensor[1]]) == ([ids, ids], True)


def test_canonicalize_ids_tensorflow():
    tf = pytest.importorskip("tensorflow")
    assert canonicalize_ids(tf.constant([1, 2])) == ([[1, 2]], False)
    assert canonicalize_ids(tf.ragged.constant([[1, 2], [3]])) == ([[1, 2], [3]], True)


def test_canonicalize_ids_errors():
    with pytest.raises(TypeError, match="must be integers"):
        canonicalize_ids(True)
    with pytest.raises(TypeError, match="dtype float"):
        canonicalize_ids(np.array([1.0]))
    with pytest.raises(ValueError, match="shape \\(1, 1, 1\\)"):
        canonicalize_ids(np.zeros((1, 1, 1), dtype="int32"))
    with pytest.raises(ValueError, match="Row 1 of the batch must be a 1-D"):
        canonicalize_ids([np.array([1]), np.array([[1]])])
    with pytest.raises(TypeError, match="Row 1 of the batch must be a sequence"):
        canonicalize_ids([[1], 2])
    with pytest.raises(TypeError, match="`detokenize\\(\\)` takes token ids"):
        canonicalize_ids("ids")


def test_string_data_detection():
    assert is_string_data("a") and is_string_data(b"a")
    assert is_string_data(["a", b"b"]) and is_string_data(("a",))
    assert is_string_data(np.array(["a", "b"])) and is_string_data(np.array([b"a"]))
    assert is_string_data(np.array(["a"], dtype=object))
    assert not is_string_data([])
    assert not is_string_data(["a", 1])
    assert not is_string_data({"token_ids": np.ones((1, 2))})
    assert not is_string_data(np.ones((2, 3)))
    assert not is_string_data(keras.ops.ones((2,)))


def test_string_data_detection_tensorflow():
    tf = pytest.importorskip("tensorflow")
    assert is_string_data(tf.constant(["a"]))
    assert not is_string_data(tf.constant([1]))
    dataset = tf.data.Dataset.from_tensor_slices(["ab", "c"]).batch(2)
    assert is_tf_dataset(dataset) and not is_tf_dataset(["ab"])
    assert is_tf_tensor(tf.constant(1)) and is_tensor(tf.constant(1))
    (batch,) = list(dataset.as_numpy_iterator())
    assert decode_strings(batch) == ["ab", "c"]


def test_decode_strings():
    assert decode_strings(np.array([b"a", "é".encode()])) == ["a", "é"]
    assert decode_strings(np.array([b"a", 3], dtype=object)) == ["a", 3]
    assert decode_strings(b"x") == "x"
    array = np.array([1, 2])
    assert decode_strings(array) is array
    with pytest.raises(ValueError, match="Item 1 .* not valid UTF-8"):
        decode_strings(np.array([b"a", b"\xff"], dtype=object))


def test_to_numpy():
    array = np.arange(3)
    assert to_numpy(array) is array
    np.testing.assert_array_equal(to_numpy([[1, 2]]), [[1, 2]])
    tensor = keras.ops.convert_to_tensor(np.array([[1.5, 2.0]], dtype="float32"))
    out = to_numpy(tensor)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, [[1.5, 2.0]])
    assert not is_tensor(array) and is_tensor(tensor) and not is_tensor([1])


def test_describe_cuts_long_values():
    assert describe("abc") == "'abc'"
    assert len(describe("x" * 1000)) == 80
    assert describe("x" * 1000).endswith("...")
