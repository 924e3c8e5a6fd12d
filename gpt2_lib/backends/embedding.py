"""Token embedding lookup: int4 tables unpacked row by row.

Keras' int4 `Embedding` unpacks its whole packed table on every call and
then takes the rows it needs: for GPT-2 base, a single-token lookup made
and dropped 38.6M unpacked values plus their float copy, peaking 540 MB
above resident on torch and 135 MB on JAX (a thread sampling
`/proc/self/statm`, `benchmarks/NOTES.md`). Rows are packed along the
hidden axis, so taking the packed rows first and unpacking only those
gives the same values. Every other layer is called as is.
"""

import keras
from keras import ops

from gpt2_lib.utils.quantization import dequantize_int4_rows
from gpt2_lib.utils.quantization import grouped_int4


def supports_int4_lookup(layer):
    """True for an int4 `Embedding` without LoRA (Keras adds LoRA rows itself)."""
    return (
        getattr(layer, "quantization_mode", None) == "int4"
        and not getattr(layer, "lora_enabled", False)
    )


def embedding_lookup(layer, token_ids):
    """`layer(token_ids)`, an `Embedding`'s rows; int4 ones without unpacking the table.

    Args:
        layer: a `keras.layers.Embedding` (e.g. a `ReversibleEmbedding`).
        token_ids: integer ids, any shape.

    Returns:
        `token_ids.shape + (output_dim,)`, equal to `layer(token_ids)`.

    Example:
    >>> layer = keras.layers.Embedding(1000, 256)
    >>> layer.build((None,))
    >>> layer.quantize("int4")
    >>> ids = np.array([[3, 999]], "int32")
    >>> bool(np.array_equal(embedding_lookup(layer, ids), layer(ids)))
    True
    """
    if not supports_int4_lookup(layer):
        return layer(token_ids)
    ids = ops.convert_to_tensor(token_ids)
    if keras.backend.standardize_dtype(ids.dtype) not in ("int32", "int64"):
        ids = ops.cast(ids, "int32")
    shape = tuple(ops.shape(ids))
    ids = ops.reshape(ids, (-1,))
    packed = ops.take(layer._embeddings, ids, axis=0)  # (n, ceil(hidden / 2))
    scale = ops.take(layer.embeddings_scale, ids, axis=0)  # (n,) or (n, groups)
    zero = ops.take(layer.embeddings_zero, ids, axis=0) if grouped_int4(layer) else None
    rows = dequantize_int4_rows(layer, packed, scale, zero, layer.compute_dtype)
    return ops.reshape(rows, shape + (layer.output_dim,))
