import keras

from gpt2_lib.layers.initializers import clone_initializer


def test_clone_is_a_fresh_equal_initializer():
    original = keras.initializers.RandomNormal(stddev=0.02, seed=3)
    copy = clone_initializer(original)
    assert copy is not original and type(copy) is type(original)
    assert copy.get_config() == original.get_config()
    assert isinstance(clone_initializer("zeros"), keras.initializers.Zeros)
