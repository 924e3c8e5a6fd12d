"""Multi-head self-attention with an optional key/value cache."""

import math

import keras
from keras import ops

from gpt2_lib.backends.attention import cached_attention
from gpt2_lib.backends.attention import cached_attention_supports
from gpt2_lib.backends.attention import dot_product_attention
from gpt2_lib.backends.attention import windowed_attention
from gpt2_lib.backends.dense import dense
from gpt2_lib.layers.initializers import clone_initializer


@keras.saving.register_keras_serializable(package="gpt2_lib")
class CachedMultiHeadAttention(keras.layers.Layer):
    """Causal multi-head self-attention that can update a key/value cache.

    Projections are `EinsumDense` layers with kernels `(hidden, heads,
    head_dim)` for query/key/value and `(heads, head_dim, hidden)` for the
    output, the layout KerasHub presets use. Without a cache the attention is
    causal whatever the mask says (query `t` never sees key `s > t`; the mask
    removes padding on top); with a cache, the mask alone decides (see
    `causal_attention_mask(query_start=...)`) and only the cache up to the
    last query's position is read (`windowed_attention`). The cache stores
    heads before positions, the layout its attention reads
    (`gpt2_lib.backends.attention.cached_attention`). In float32, and over
    the cache on torch, the attention goes through
    `gpt2_lib.backends.attention` (each backend's fastest form); otherwise
    in lower precision, or with attention dropout, the logits and softmax
    are computed in float32 and the probabilities cast back.

    Args:
        num_heads: int, number of attention heads.
        key_dim: int, size of each head.
        dropout: float, dropout rate on the attention probabilities.
        kernel_initializer: initializer for the projection kernels.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        hidden_states: `(batch, query_length, hidden)`.
        attention_mask: boolean, broadcastable to
            `(batch, heads, query_length, key_length)`.
        cache: optional keys and values of earlier positions, this
            block's `(batch, 2, heads, max_length, head_dim)` (keys, then
            values).
            When given, the new keys/values are written at
            `cache_update_index` and the layer returns `(output,
            updated_cache)`.
        cache_update_index: int or scalar tensor, where to write in the cache.
        cache_layer: optional int. When given, `cache` is the whole model's
            `(batch, layers, 2, heads, max_length, head_dim)` cache; the
            layer writes its new keys/values into slot `cache_layer` of it
            and returns the whole cache (`updates_whole_cache`).
        training: bool, whether dropout is active.

    Example:
    >>> layer = CachedMultiHeadAttention(num_heads=2, key_dim=4)
    >>> x = np.random.rand(1, 3, 8).astype("float32")
    >>> mask = np.tril(np.ones((3, 3), bool))[None, None]
    >>> tuple(layer(x, mask).shape)
    (1, 3, 8)
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.key_dim = int(key_dim)
        self.dropout = float(dropout)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self._probs_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="attention_dropout"
        )

    def _dense(self, equation, output_shape, bias_axes, name):
        return keras.layers.EinsumDense(
            equation,
            output_shape=output_shape,
            bias_axes=bias_axes,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        heads_shape = (None, self.num_heads, self.key_dim)
        self.query_dense = self._dense("btd,dnh->btnh", heads_shape, "nh", "query")
        self.key_dense = self._dense("btd,dnh->btnh", heads_shape, "nh", "key")
        self.value_dense = self._dense("btd,dnh->btnh", heads_shape, "nh", "value")
        self.output_dense = self._dense(
            "btnh,nhd->btd", (None, hidden_dim), "d", "attention_output"
        )
        for projection in (self.query_dense, self.key_dense, self.value_dense):
            projection.build(input_shape)
        self.output_dense.build((None, None, self.num_heads, self.key_dim))
        self.built = True

    def _attend(self, query, key, value, attention_mask, training, cached):
        """`(batch, q, heads, head_dim)` attention over keys and values.

        Causal over this call's `(batch, k, heads, head_dim)` projections, or
        (`cached`) over the cache's `(batch, heads, k, head_dim)`, where the
        mask alone decides.
        """
        scale = 1.0 / math.sqrt(self.key_dim)
        use_dropout = training and self.dropout > 0
        if cached and not use_dropout and cached_attention_supports(self.compute_dtype):
            return cached_attention(query, key, value, attention_mask, scale)
        if self.compute_dtype == "float32" and not use_dropout and not cached:
            return dot_product_attention(
                query, key, value, mask=attention_mask, scale=scale, is_causal=True
            )
        keys_axes = "bnkh" if cached else "bknh"
        logits = ops.einsum(f"bqnh,{keys_axes}->bnqk", query, key)
        logits = ops.cast(logits, "float32") * scale
        if not cached:
            query_length, key_length = ops.shape(query)[1], ops.shape(key)[1]
            causal = ops.arange(key_length)[None, :] <= ops.arange(query_length)[:, None]
            attention_mask = ops.logical_and(attention_mask, causal[None, None])
        logits = ops.where(attention_mask, logits, -1e9)
        probs = ops.softmax(logits, axis=-1)
        probs = self._probs_dropout(probs, training=training)
        probs = ops.cast(probs, self.compute_dtype)
        return ops.einsum(f"bnqk,{keys_axes}->bqnh", probs, value)

    def call(
        self,
        hidden_states,
        attention_mask,
        cache=None,
        cache_update_index=None,
        cache_layer=None,
        training=None,
    ):
        query = dense(self.query_dense, hidden_states)  # (batch, q, heads, head_dim)
        key = dense(self.key_dense, hidden_states)
        value = dense(self.value_dense, hidden_states)
        if cache is None:
            attended = self._attend(query, key, value, attention_mask, training, cached=False)
            return dense(self.output_dense, attended)  # (batch, q, hidden)
        # The cache stores heads before positions.
        key = ops.transpose(key, (0, 2, 1, 3))  # (batch, heads, q, head_dim)
        value = ops.transpose(value, (0, 2, 1, 3))
        new = ops.cast(ops.stack([key, value], axis=1), cache.dtype)  # (batch, 2, heads, q, head_dim)
        if cache_layer is None:
            # This block's (batch, 2, heads, max_length, head_dim).
            cache = ops.slice_update(cache, [0, 0, 0, cache_update_index, 0], new)

            def keys_values(cache, end):
                return cache[:, 0, :, :end], cache[:, 1, :, :end]

        else:
            # The whole model's cache: one write into slot `cache_layer`.
            cache = ops.slice_update(cache, [0, cache_layer, 0, 0, cache_update_index, 0], new[:, None])

            def keys_values(cache, end):
                return cache[:, cache_layer, 0, :, :end], cache[:, cache_layer, 1, :, :end]

        def attend(query, cache, attention_mask, end):
            key, value = keys_values(cache, end)
            return self._attend(query, key, value, attention_mask[..., :end], training, cached=True)

        # Keys past the last query's position are masked: attend over a
        # window of the cache that holds the keys up to it.
        attended = windowed_attention(
            attend, query, cache, attention_mask, key_end=cache_update_index + ops.shape(query)[1]
        )
        return dense(self.output_dense, attended), cache

    def compute_output_spec(self, hidden_states, attention_mask, cache=None, **kwargs):
        output = keras.KerasTensor(hidden_states.shape, dtype=self.compute_dtype)
        if cache is None:
            return output
        return output, keras.tree.map_structure(
            lambda part: keras.KerasTensor(part.shape, dtype=part.dtype), cache
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
