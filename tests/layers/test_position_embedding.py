import keras
import numpy as np

from gpt2_lib.layers import PositionEmbedding
from gpt2_lib.layers import position_ids_from_padding_mask


def test_positions_count_real_tokens():
    mask = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    expected = np.array([[0, 1, 2, 2, 2], [0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])
    actual = keras.ops.convert_to_numpy(position_ids_from_padding_mask(mask))
    np.testing.assert_array_equal(actual, expected)


def test_lookup_by_position_ids_and_by_mask():
    layer = PositionEmbedding(sequence_length=8, hidden_dim=3)
    table = keras.ops.convert_to_numpy(layer(np.ones((1, 8), "int32")))[0]
    by_mask = keras.ops.convert_to_numpy(layer(np.array([[0, 1, 1]])))
    np.testing.assert_array_equal(by_mask[0], table[[0, 0, 1]])
    explicit = keras.ops.convert_to_numpy(layer(np.ones((1, 2)), np.array([[5, 7]])))
    np.testing.assert_array_equal(explicit[0], table[[5, 7]])


def test_config_round_trip():
    layer = PositionEmbedding(sequence_length=8, hidden_dim=3, name="pos")
    clone = PositionEmbedding.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
