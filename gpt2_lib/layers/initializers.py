"""Initializer helpers shared by GPT-2's layers."""

import keras


def clone_initializer(initializer):
    """A fresh copy of `initializer`, so that layers never share RNG state.

    Rebuilt from its config rather than through `keras.initializers.serialize`:
    Keras' serializer imports TensorFlow when it is installed (seconds and
    hundreds of MB on the JAX and torch backends).

    Args:
        initializer: a `keras.initializers.Initializer`, or a name or config
            that `keras.initializers.get` accepts.

    Returns:
        A new initializer of the same class and config.

    Example:
    ```python
    init = keras.initializers.RandomNormal(stddev=0.02)
    copy = clone_initializer(init)
    assert copy is not init and copy.get_config() == init.get_config()
    ```
    """
    initializer = keras.initializers.get(initializer)
    if not isinstance(initializer, keras.initializers.Initializer):
        return initializer  # A plain function: stateless, nothing to copy.
    return initializer.__class__.from_config(initializer.get_config())
