"""Scaled dot-product attention: Keras' on torch, blocked causal on XLA.

Computes exactly what `keras.ops.dot_product_attention(query, key, value,
mask=mask, scale=scale, is_causal=is_causal)` computes (a query attends to
key `s` when `mask` allows it and, with `is_causal`, `s <= t`):

* PyTorch: `keras.ops.dot_product_attention`, which calls
  `torch.nn.functional.scaled_dot_product_attention`. With `is_causal` and a
  mask that removes nothing inside the causal triangle (no padding; checked
  on concrete values), the mask is dropped so that SDPA runs with
  `is_causal=True` and skips the blocks above the diagonal (0.6x the time of
  the masked call at 1x1024, `benchmarks/NOTES.md`).
* JAX and TensorFlow (XLA): plain einsum/softmax. With `is_causal` and long
  sequences, queries go in blocks of `CAUSAL_BLOCK_SIZE` that only look at
  the keys up to the block's end, which skips most of the masked half of the
  logits (their exp, and their matmuls): 1.12x at 4x512 and 1.15x at 1x1024
  over Keras' XLA attention, which computes the full logits.
"""

import functools

import keras
from keras import ops

# Queries per block in the blocked causal path (JAX/TensorFlow). Measured
# choice, see benchmarks/NOTES.md.
CAUSAL_BLOCK_SIZE = 256


def dot_product_attention(query, key, value, mask=None, scale=None, is_causal=False):
    """Attention of `(batch, q, heads, head_dim)` queries over keys/values.

    Args:
        query: `(batch, query_length, heads, head_dim)`.
        key: `(batch, key_length, heads, head_dim)`.
        value: `(batch, key_length, heads, head_dim)`.
        mask: optional boolean, broadcastable to
            `(batch, heads, query_length, key_length)`; `True` where a query
            may attend to a key.
        scale: float multiplying the logits; `1 / sqrt(head_dim)` if `None`.
        is_causal: bool, also forbid query `t` to attend to keys `s > t`
            (queries and keys aligned at position 0).

    Returns:
        `(batch, query_length, heads, head_dim)`, in the dtype of `query`.

    Example:
    >>> q = np.random.rand(2, 5, 4, 8).astype("float32")
    >>> out = dot_product_attention(q, q, q, is_causal=True)
    >>> tuple(out.shape)
    (2, 5, 4, 8)
    """
    if scale is None:
        scale = 1.0 / float(query.shape[-1]) ** 0.5
    if keras.config.backend() == "torch":
        return _torch_attention(query, key, value, mask, scale, is_causal)
    return _xla_attention(query, key, value, mask, scale, is_causal)


def cached_attention_supports(dtype):
    """Whether `cached_attention` serves a cached step in `dtype`.

    float32 on every backend, and every dtype on torch: there SDPA's fused
    CPU kernel (float32 logits and softmax, as the lower-precision formula,
    but without rounding the logits to the compute dtype first) replaces
    the formula's two batched products, which copied every block's keys
    and values per step at batch > 1 (GPT-2 base bfloat16 on a Xeon with
    AMX, batch 8, against the formula over the same windows: 32 + 96
    tokens 1.13x, 32 + 480 tokens 1.35x faster; `benchmarks/NOTES.md`).

    Example:
    >>> cached_attention_supports("float32")
    True
    """
    return keras.backend.standardize_dtype(dtype) == "float32" or keras.config.backend() == "torch"


def cached_attention(query, keys, values, mask, scale):
    """Attention of `(batch, q, heads, head_dim)` queries over a key/value cache.

    The cache holds heads before positions, `(batch, heads, key_length,
    head_dim)`: the layout the attention's two batched products read, so XLA
    multiplies the cache as stored. Stored positions first (KerasHub's
    layout), XLA:CPU copied every block's keys and values into that layout
    on every decoding step: GPT-2 base on JAX, batch 8, 0.91 s of a 4 s
    generation in those copies; heads first, decoding is 1.10x faster at
    batch 8 (1.25x to 232 tokens) and 1.06x at batch 1
    (`benchmarks/NOTES.md`). Only the mask decides which keys a query sees.

    Args:
        query: `(batch, query_length, heads, head_dim)`.
        keys: `(batch, heads, key_length, head_dim)`.
        values: `(batch, heads, key_length, head_dim)`.
        mask: boolean, broadcastable to `(batch, heads, query_length,
            key_length)`; `True` where a query may attend to a key.
        scale: float multiplying the logits.

    Returns:
        `(batch, query_length, heads, head_dim)`, in the dtype of `query`.

    Example:
    >>> q = np.random.rand(2, 1, 4, 8).astype("float32")
    >>> kv = np.random.rand(2, 4, 5, 8).astype("float32")
    >>> mask = np.ones((2, 1, 1, 5), bool)
    >>> out = cached_attention(q, kv, kv, mask, scale=0.35)
    >>> tuple(out.shape)
    (2, 1, 4, 8)
    """
    if keras.config.backend() == "torch":
        import torch

        # Tensors as they are: converting them through Keras took 20 of this
        # function's ~40 us per block and decoding step.
        query, keys, values = (
            x if isinstance(x, torch.Tensor) else ops.convert_to_tensor(x)
            for x in (query, keys, values)
        )
        if not (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool):
            mask = ops.convert_to_tensor(mask, "bool")
        attended = torch.nn.functional.scaled_dot_product_attention(
            query.transpose(1, 2),  # (batch, heads, q, head_dim)
            keys,
            values,
            attn_mask=mask,
            scale=scale,
        )
        return attended.transpose(1, 2)
    # `_attend` over heads-first keys, with the query turned heads-first too:
    # JAX batch-1 decoding 1.03x over einsums on the `(batch, q, ...)` query
    # (4 of 4 alternated processes, benchmarks/NOTES.md).
    query = ops.transpose(query, (0, 2, 1, 3))  # (batch, heads, q, head_dim)
    logits = ops.einsum("bnqh,bnkh->bnqk", query, keys) * ops.cast(scale, query.dtype)
    logits = ops.where(ops.cast(mask, "bool"), logits, ops.cast(-1e9, logits.dtype))
    probs = ops.softmax(logits, axis=-1)
    return ops.transpose(ops.einsum("bnqk,bnkh->bnqh", probs, values), (0, 2, 1, 3))


def updates_whole_cache():
    """Whether each block writes its keys/values into the whole cache (JAX).

    XLA updates a buffer carried through `generate()`'s loop in place with
    `dynamic_update_slice`, so on JAX each block writes its new entries
    straight into the whole `(batch, layers, 2, ...)` cache: no copy of a
    block's slot out of it, and no stacking of every slot back into a new
    cache on every step. GPT-2 base float32, batch 8: 205 -> 245 tok/s and
    XLA temporaries 173 -> 106 MB (`benchmarks/NOTES.md`). TensorFlow's
    own kernels and torch's `slice_update` copy the whole tensor per
    update, so their generation carries one cache per block
    (`GPT2Backbone.build_cache(per_block=True)`): an update copies only that
    block's keys and values (TensorFlow's XLA, its default for generation,
    updates them in place), and nothing is sliced out of a stacked cache or
    restacked (TensorFlow batch 8 without XLA: 1.22x). torch's fast path
    writes in place itself (`torch_gpt2`).

    Example:
    >>> updates_whole_cache() == (keras.config.backend() == "jax")
    True
    """
    return keras.config.backend() == "jax"


# === PyTorch ===


@functools.lru_cache(maxsize=16)
def _torch_above_diagonal(query_length, key_length, device):
    import torch

    ones = torch.ones((query_length, key_length), dtype=torch.bool, device=device)
    return torch.triu(ones, diagonal=1)


def _torch_attention(query, key, value, mask, scale, is_causal):
    import torch

    if mask is not None and is_causal:
        query = ops.convert_to_tensor(query)
        mask = ops.convert_to_tensor(mask, "bool")
        above = _torch_above_diagonal(query.shape[1], ops.shape(key)[1], query.device)
        # Data-dependent check, only outside of graph capture.
        if not torch.compiler.is_compiling() and bool(torch.all(mask | above)):
            mask = None  # the causal triangle alone
    return ops.dot_product_attention(
        query, key, value, mask=mask, scale=scale, is_causal=is_causal
    )


# === JAX / TensorFlow ===


def _attend(query, key, value, mask, scale):
    logits = ops.einsum("bqnh,bknh->bnqk", query, key) * ops.cast(scale, query.dtype)
    if mask is not None:
        logits = ops.where(mask, logits, ops.cast(-1e9, logits.dtype))
    probs = ops.softmax(logits, axis=-1)
    return ops.einsum("bnqk,bknh->bqnh", probs, value)


def _causal_mask(query_start, query_length, key_length):
    query_index = ops.arange(query_length)[:, None] + query_start
    return (ops.arange(key_length)[None, :] <= query_index)[None, None]


def _xla_attention(query, key, value, mask, scale, is_causal):
    query_length, key_length = query.shape[1], key.shape[1]
    if mask is not None:
        mask = ops.cast(mask, "bool")
        while len(mask.shape) < 4:
            mask = mask[None]
    if not is_causal:
        return _attend(query, key, value, mask, scale)
    blocked = (
        query_length is not None
        and query_length == key_length
        and query_length > CAUSAL_BLOCK_SIZE
    )
    if not blocked:
        # ops.shape: the lengths may be unknown while tracing a TF graph.
        causal = _causal_mask(0, ops.shape(query)[1], ops.shape(key)[1])
        mask = causal if mask is None else ops.logical_and(mask, causal)
        return _attend(query, key, value, mask, scale)
    outputs = []
    for start in range(0, query_length, CAUSAL_BLOCK_SIZE):
        end = min(start + CAUSAL_BLOCK_SIZE, query_length)
        block_mask = _causal_mask(start, end - start, end)
        if mask is not None:
            rows = mask[:, :, start:end, :end] if mask.shape[2] != 1 else mask[..., :end]
            block_mask = ops.logical_and(rows, block_mask)
        outputs.append(
            _attend(query[:, start:end], key[:, :end], value[:, :end], block_mask, scale)
        )
    return ops.concatenate(outputs, axis=1)


# === Attention over a key/value cache ===

# Cache slots per window of `windowed_attention` on XLA. Each window is an
# `ops.switch` branch in every block, and XLA compiles each: GPT-2 base on JAX,
# 32 -> 1024 tokens, windows of 64 / 128 / 256 / 1024 slots: first call minus a
# steady one 31 / 23 / 11 / 6 s, decoding 16.4 / 15.9 / 16.6 / 13.7 tok/s
# (benchmarks/NOTES.md). 256 decodes as fast as smaller windows and compiles
# in half the time of 128.
CACHE_WINDOW = 256


# Cache slots per window of `torch_key_end` (lower precisions on torch).
# GPT-2 base bfloat16 on a Xeon with AMX, batch 1 / 8, 32 + 480 tokens:
# 586-691 / 710-828 MB above the built model with a key length per step
# (the formula's batched products on oneDNN), 86 / 186-222 MB in windows of
# 64 (benchmarks/NOTES.md).
TORCH_CACHE_WINDOW = 64


def torch_key_end(key_end, max_length, dtype):
    """The cache slots a cached step attends over on torch.

    `key_end` itself in float32. In lower precisions the attention's
    kernels are compiled and kept per shape (oneDNN's batched GEMM on AMX:
    ~1.3 MB per key length, 511 lengths +650 MB; SDPA's fused kernel at
    batch 8: 1023 lengths +78 MB). There `key_end` is rounded up to a
    multiple of `TORCH_CACHE_WINDOW` (or `max_length`), so that a
    generation makes a few shapes, not one per step. The extra keys are
    masked: they carry zero probability.

    Example:
    >>> torch_key_end(40, 1024, "float32"), torch_key_end(40, 1024, "bfloat16")
    (40, 64)
    """
    key_end = int(key_end)
    if keras.backend.standardize_dtype(dtype) == "float32":
        return key_end
    return min(max_length, -(-key_end // TORCH_CACHE_WINDOW) * TORCH_CACHE_WINDOW)


def windowed_attention(attend, query, cache, mask, key_end):
    """`attend` over the part of a cache that holds keys `[0, key_end)`.

    A cached step's queries may only see keys before `key_end` (the causal
    mask removes the rest), yet the cache has `max_length` slots: attending
    over all of them reads and multiplies every slot on every step. This
    calls `attend(query, cache, mask, end)` with a static `end >= key_end`
    and the caller slices the cache and the mask to `end`. On XLA (static
    shapes) `end` is `key_end` rounded up to a multiple of `CACHE_WINDOW`
    (or `max_length`), one `ops.switch` branch per window, so the cost of a
    step grows with its position, not with `max_length`; on torch it is
    `torch_key_end`. The result is the same: the keys left out carry zero
    probability.

    Args:
        attend: `fn(query, cache, mask, end)` -> attention output.
        query: `(batch, q, heads, head_dim)` queries.
        cache: the cache (any structure of tensors `attend` reads).
        mask: boolean `(batch, 1, q, max_length)` attention mask.
        key_end: int or scalar tensor, one past the last key any query sees.

    Returns:
        What `attend` returns.

    Example:
    >>> q = np.random.rand(1, 1, 2, 4).astype("float32")
    >>> kv = np.random.rand(1, 300, 2, 4).astype("float32")
    >>> mask = np.arange(300)[None, None, None, :] < 10
    >>> def attend(query, cache, mask, end):
    ...     return dot_product_attention(query, cache[:, :end], cache[:, :end], mask[..., :end])
    >>> out = windowed_attention(attend, q, kv, mask, key_end=10)
    >>> full = dot_product_attention(q, kv, kv, mask)
    >>> bool(np.allclose(out, full, atol=1e-6))
    True
    """
    max_length = mask.shape[-1]
    if max_length is None:  # unknown while tracing a TensorFlow graph
        return attend(query, cache, mask, None)
    if keras.config.backend() == "torch":
        return attend(query, cache, mask, torch_key_end(key_end, max_length, query.dtype))
    ends = list(range(CACHE_WINDOW, max_length, CACHE_WINDOW)) + [max_length]
    if len(ends) == 1:
        return attend(query, cache, mask, max_length)
    branches = [functools.partial(attend, end=end) for end in ends]
    window = ops.clip((ops.cast(key_end, "int32") - 1) // CACHE_WINDOW, 0, len(ends) - 1)
    return ops.switch(window, branches, query, cache, mask)
