"""Initializer helpers shared by GPT-2's layers."""

import keras


def clone_initializer(initializer):
    """A fresh copy of `initializer`, so that layers never share RNG state.

    Keras' `Initializer.clone()` (rebuilt from its config; not through
    `keras.initializers.serialize`, which imports TensorFlow when it is
    installed), also accepting names, configs and plain functions.

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
    return initializer.clone()
