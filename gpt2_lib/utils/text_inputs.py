"""Input canonicalisation shared by the tokenizers, the preprocessors and `Task`.

Text reaches gpt2_lib in many forms: a Python `str`, UTF-8 `bytes`, a list or
tuple of either, a NumPy array of `str`/`bytes` (what `tf.numpy_function`
and `tf.data`'s `as_numpy_iterator()` give), or a TensorFlow string tensor.
Token ids come as Python ints and lists, NumPy arrays, or tensors of any
Keras backend. This module is the one place that recognises those forms and
turns them into plain Python and NumPy values, with errors that name the
offending item and the fix:

- `canonicalize_texts(inputs)`: any accepted text input to
  `(list of str, batched)`.
- `canonicalize_ids(inputs)`: any accepted id input to
  `(list of id lists, batched)`.
- `is_string_data(x)`: whether `x` is raw text (a string or a batch of them).
- `decode_strings(batch)`: a `tf.data` batch of `bytes` to `str`.
- `to_numpy(value)`: lists, NumPy arrays and backend tensors to NumPy.
- `is_tf_tensor(value)`, `is_tf_dataset(value)`, `is_tensor(value)`:
  type checks that never import TensorFlow.
- `describe(value)`: a short `repr` for error messages.
"""

import keras
import numpy as np


def describe(value, limit=80):
    """`repr(value)`, cut to `limit` characters for error messages.

    Example:

    >>> describe("x" * 100, limit=12)
    "'xxxxxxxx..."
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_tf_tensor(value):
    """Whether `value` is an eager TensorFlow tensor (TensorFlow not imported).

    Example:

    >>> import numpy as np
    >>> is_tf_tensor(np.zeros(2))
    False
    """
    return type(value).__module__.startswith("tensorflow") and hasattr(value, "numpy")


def is_tf_dataset(value):
    """Whether `value` is a `tf.data.Dataset` (TensorFlow not imported).

    Example:

    >>> is_tf_dataset(["a", "b"])
    False
    """
    return type(value).__module__.startswith("tensorflow") and hasattr(
        value, "as_numpy_iterator"
    )


def is_tensor(value):
    """Whether `value` is a tensor of TensorFlow or of the Keras backend.

    NumPy arrays are not tensors here.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> is_tensor(keras.ops.ones((2,))), is_tensor(np.ones((2,)))
    (True, False)
    """
    if isinstance(value, np.ndarray):
        return False
    if is_tf_tensor(value):
        return True
    try:
        return bool(keras.ops.is_tensor(value))
    except Exception:  # Backends may raise on exotic objects: not a tensor.
        return False


def to_numpy(value):
    """Convert a list, a NumPy array or a backend tensor to a NumPy array.

    Example:

    >>> import keras
    >>> to_numpy(keras.ops.arange(3)).tolist()
    [0, 1, 2]
    >>> to_numpy([[1, 2]]).shape
    (1, 2)
    """
    if isinstance(value, np.ndarray):
        return value
    if is_tf_tensor(value):
        return value.numpy()
    if keras.ops.is_tensor(value):
        return keras.ops.convert_to_numpy(value)
    return np.asarray(value)


def is_string_data(x):
    """Whether `x` is raw text: a string or a non-empty batch of strings.

    Strings are `str` or `bytes`; batches are lists and tuples of strings,
    NumPy arrays of dtype `str`, `bytes` or `object`, and TensorFlow string
    tensors. Dicts (model inputs) and numeric arrays are not raw text.

    Example:

    >>> import numpy as np
    >>> is_string_data("a"), is_string_data(["a", b"b"]), is_string_data([])
    (True, True, False)
    >>> is_string_data(np.array(["a"])), is_string_data(np.ones(3))
    (True, False)
    """
    if isinstance(x, (str, bytes)):
        return True
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "USO"
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(item, (str, bytes)) for item in x)
    if type(x).__module__.startswith("tensorflow") and hasattr(x, "dtype"):
        return getattr(x.dtype, "name", "") == "string"
    return False


def to_text(item, index=None):
    """Convert one string input (`str` or UTF-8 `bytes`) to `str`.

    Args:
        item: the value to convert.
        index: its position in the batch, for the error message; `None` for
            a single input.

    Example:

    >>> to_text(b"caf\\xc3\\xa9")
    'café'
    """
    if isinstance(item, str):
        return str(item)
    where = "The input" if index is None else f"Item {index} of the batch"
    if isinstance(item, (bytes, bytearray)):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{where} is bytes that are not valid UTF-8 ({e.reason} at "
                f"byte {e.start}). Decode it first, e.g. "
                "`data.decode('utf-8', errors='replace')`."
            ) from None
    raise TypeError(
        f"{where} must be a string or UTF-8 bytes. Received: "
        f"{describe(item)} of type {type(item).__name__}."
    )


def decode_strings(batch):
    """Decode a `tf.data` batch of `bytes` into `str`; other values unchanged.

    `tf.data.Dataset.as_numpy_iterator()` yields string elements as `bytes`
    (a NumPy array of them for a batch). A NumPy array of `bytes` or objects
    becomes a list with each `bytes` item decoded; a `bytes` value becomes a
    `str`; anything else is returned as is.

    Example:

    >>> import numpy as np
    >>> decode_strings(np.array([b"ab", b"c"], dtype=object))
    ['ab', 'c']
    >>> decode_strings(b"ab"), decode_strings(3)
    ('ab', 3)
    """
    if isinstance(batch, np.ndarray) and batch.dtype.kind in "SO":
        return [
            to_text(item, i) if isinstance(item, bytes) else item
            for i, item in enumerate(batch.tolist())
        ]
    if isinstance(batch, bytes):
        return to_text(batch)
    return batch


def canonicalize_texts(inputs, caller="tokenize()"):
    """Turn any accepted text input into `(list of str, batched)`.

    Accepted: a `str` or UTF-8 `bytes` (`batched=False`), a list or tuple of
    them, a 1-D NumPy array of `str`/`bytes`/objects, or a TensorFlow string
    tensor of rank 0 or 1 (`batched` for rank 1).

    Args:
        inputs: the text input.
        caller: the public call named in error messages.

    Example:

    >>> import numpy as np
    >>> canonicalize_texts("a")
    (['a'], False)
    >>> canonicalize_texts(np.array([b"a", b"b"]))
    (['a', 'b'], True)
    """
    cls = inputs.__class__
    if cls is str:
        return [inputs], False
    if cls is list or cls is tuple:
        texts = list(inputs)
        for i, item in enumerate(texts):
            if item.__class__ is not str:
                texts[i] = to_text(item, i)
        return texts, True
    if isinstance(inputs, str):
        return [str(inputs)], False
    if isinstance(inputs, (bytes, bytearray)):
        return [to_text(inputs)], False
    if not isinstance(inputs, np.ndarray) and is_tf_tensor(inputs):
        if hasattr(inputs, "to_list"):  # tf.RaggedTensor
            raise ValueError(
                f"`{caller}` takes a string or a 1-D batch of strings. "
                f"Received a ragged tensor of rank {inputs.shape.rank}; "
                "flatten it first."
            )
        return canonicalize_texts(inputs.numpy(), caller)
    if isinstance(inputs, np.ndarray):
        if inputs.ndim == 0:
            return [to_text(inputs.item())], False
        if inputs.ndim == 1:
            return [to_text(item, i) for i, item in enumerate(inputs.tolist())], True
        raise ValueError(
            f"`{caller}` takes a string or a 1-D batch of strings. Received "
            f"an array of shape {inputs.shape}; reshape it to 1-D (e.g. "
            "`x.reshape(-1)`) first."
        )
    if isinstance(inputs, np.generic):
        return [to_text(inputs.item())], False
    raise TypeError(
        f"`{caller}` takes a string, bytes, or a batch of them (list, tuple, "
        "1-D NumPy array, TensorFlow string tensor). Received: "
        f"{describe(inputs)} of type {type(inputs).__name__}."
    )


def _check_int_array(array):
    array = np.asarray(array)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            "Token ids must be integers. Received an array of dtype "
            f"{array.dtype}; cast it with `.astype('int32')` if it holds ids."
        )
    return array


def _row_to_list(row, index):
    if isinstance(row, np.ndarray) or is_tensor(row):
        row = _check_int_array(to_numpy(row))
        if row.ndim != 1:
            raise ValueError(
                f"Row {index} of the batch must be a 1-D sequence of ids. "
                f"Received shape {row.shape}."
            )
        return row.tolist()
    if not isinstance(row, (list, tuple)):
        where = "The input" if index is None else f"Row {index} of the batch"
        raise TypeError(
            f"{where} must be a sequence of integer ids. Received: {describe(row)}."
        )
    # The item types are the caller's to check (a lookup fails on non-ints).
    return row if isinstance(row, list) else list(row)


def canonicalize_ids(inputs, caller="detokenize()"):
    """Turn any accepted token-id input into `(list of id lists, batched)`.

    Accepted: an int (one sequence of one id), a list or tuple of ints, a list
    of such rows (or of 1-D arrays/tensors), a 1-D or 2-D NumPy array or
    backend tensor of integers, a `tf.RaggedTensor`. The items of Python
    lists are not checked here (the caller's lookup rejects non-ints).

    Args:
        inputs: the token ids.
        caller: the public call named in error messages.

    Example:

    >>> import numpy as np
    >>> canonicalize_ids([1, 2])
    ([[1, 2]], False)
    >>> canonicalize_ids(np.array([[1, 2], [3, 4]]))
    ([[1, 2], [3, 4]], True)
    """
    if isinstance(inputs, (bool, np.bool_)):
        raise TypeError(f"Token ids must be integers. Received: {inputs!r}.")
    if isinstance(inputs, (int, np.integer)):
        return [[int(inputs)]], False
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            return [[]], False
        first = inputs[0]
        if isinstance(first, (list, tuple, np.ndarray)) or is_tensor(first):
            return [_row_to_list(row, i) for i, row in enumerate(inputs)], True
        return [_row_to_list(inputs, None)], False
    if is_tf_tensor(inputs):
        if hasattr(inputs, "to_list"):  # tf.RaggedTensor
            rows = inputs.to_list()
            if rows and not isinstance(rows[0], list):
                return [_row_to_list(rows, None)], False
            return [_row_to_list(row, i) for i, row in enumerate(rows)], True
        inputs = inputs.numpy()
    if not isinstance(inputs, np.ndarray):
        if is_tensor(inputs):
            inputs = keras.ops.convert_to_numpy(inputs)
        elif hasattr(inputs, "__array__"):  # E.g. another framework's tensor.
            inputs = np.asarray(inputs)
        else:
            raise TypeError(
                f"`{caller}` takes token ids: an int, a list of ints, a list "
                "of lists of ints, a NumPy array or a backend tensor. "
                f"Received: {describe(inputs)} of type {type(inputs).__name__}."
            )
    array = _check_int_array(inputs)
    if array.ndim == 0:
        return [[int(array)]], False
    if array.ndim == 1:
        return [array.tolist()], False
    if array.ndim == 2:
        return array.tolist(), True
    raise ValueError(
        f"`{caller}` takes a 1-D sequence or a 2-D batch of ids. Received an "
        f"array of shape {array.shape}."
    )
