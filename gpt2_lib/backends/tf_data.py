"""NumPy training data as a `tf.data` pipeline without autotuning (TensorFlow).

On TensorFlow, `fit()`, `evaluate()` and `predict()` on arrays go through a
tf.data pipeline whose autotuning thread can hold up the end of the call for
seconds (up to ~12 s for a training run) while the iterator is deleted
(`benchmarks/NOTES.md`). The same batches, in a pipeline with autotuning
off, end at once. `Task.fit/evaluate/predict` call `array_dataset` once
each; it returns None (keep Keras' own handling) whenever `supports` does
not hold.
"""

import keras
import numpy as np


def _is_arrays(data):
    if isinstance(data, dict):
        return bool(data) and all(isinstance(v, np.ndarray) for v in data.values())
    return isinstance(data, np.ndarray)


def supports(x, y=None, sample_weight=None, keras_kwargs=None):
    """True on TensorFlow for NumPy `x` (and `y`, `sample_weight`) that Keras
    would batch itself: no `validation_split`, `steps_per_epoch` or `steps`.
    """
    keras_kwargs = keras_kwargs or {}
    if keras.config.backend() != "tensorflow" or not _is_arrays(x):
        return False
    if any(v is not None and not isinstance(v, np.ndarray) for v in (y, sample_weight)):
        return False
    if any(keras_kwargs.get(name) for name in ("validation_split", "steps_per_epoch", "steps")):
        return False
    return not (sample_weight is not None and y is None)


def array_dataset(x, y=None, sample_weight=None, batch_size=None, shuffle=False, keras_kwargs=None):
    """The batches Keras would make of `(x, y, sample_weight)`, or None.

    Args:
        x: a NumPy array or a dict of them.
        y: optional NumPy labels.
        sample_weight: optional NumPy weights.
        batch_size: int, 32 by default (as Keras).
        shuffle: bool, reshuffled every epoch.
        keras_kwargs: the other `fit`/`evaluate`/`predict` arguments.

    Returns:
        A `tf.data.Dataset` with autotuning off, or None where `supports`
        does not hold (the caller then passes its data to Keras as is).
    """
    if not supports(x, y, sample_weight, keras_kwargs):
        return None
    import tensorflow as tf

    parts = (x,) + tuple(v for v in (y, sample_weight) if v is not None)
    dataset = tf.data.Dataset.from_tensor_slices(parts if len(parts) > 1 else x)
    if shuffle:
        first = next(iter(x.values())) if isinstance(x, dict) else x
        dataset = dataset.shuffle(len(first), reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size or 32).prefetch(1)
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
