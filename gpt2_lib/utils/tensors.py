"""Reading concrete tensor values on any backend, without breaking tracing;
the Keras `StatelessScope` a call runs in."""

import keras
import numpy as np


def concrete_numpy(value):
    """`value` as a NumPy array if it holds concrete data, else None.

    NumPy arrays, lists and eager backend tensors are concrete; symbolic
    Keras tensors, JAX tracers (inside `jax.jit`) and TensorFlow graph tensors
    (inside `tf.function`) are not, and give None so that callers skip
    data-dependent checks there instead of failing.

    Example:
    >>> concrete_numpy([[1, 2]]).shape
    (1, 2)
    >>> concrete_numpy(keras.KerasTensor((1, 2))) is None
    True
    """
    if value is None or isinstance(value, keras.KerasTensor):
        return None
    if isinstance(value, (np.ndarray, np.generic, list, tuple, int, float)):
        return np.asarray(value)
    module = type(value).__module__
    if module.startswith("jax"):
        import jax

        if isinstance(value, jax.core.Tracer):
            return None
        return np.asarray(value)
    if module.startswith("tensorflow"):
        if not hasattr(value, "numpy"):
            return None
        try:
            return value.numpy()
        except (AttributeError, NotImplementedError, TypeError):
            return None  # a symbolic tensor inside tf.function
    if module.startswith("torch"):
        if value.device.type == "meta":
            return None
        return value.detach().cpu().numpy()
    return np.asarray(value)


def enclosing_stateless_scope():
    """The innermost `keras.StatelessScope` entered, or None.

    Keras exports the scope but not a way to find it; with a Keras that
    lacks the private accessor this returns None (callers then act as
    outside one) rather than guess.
    """
    try:
        from keras.src.backend.common.stateless_scope import get_stateless_scope
    except ImportError:
        return None
    return get_stateless_scope()
