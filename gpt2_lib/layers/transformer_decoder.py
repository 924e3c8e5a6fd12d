"""GPT-2's decoder block: pre-LayerNorm causal self-attention and MLP."""

import keras
from keras import ops

from gpt2_lib.backends.gradient_barrier import gradient_barrier
from gpt2_lib.backends.dense import dense_on_rows
from gpt2_lib.layers.cached_multi_head_attention import CachedMultiHeadAttention
from gpt2_lib.layers.initializers import clone_initializer


@keras.saving.register_keras_serializable(package="gpt2_lib")
class TransformerDecoder(keras.layers.Layer):
    """One GPT-2 block.

    ```
    x = x + dropout(attention(layer_norm_1(x)))
    x = x + dropout(dense_2(gelu_tanh(dense_1(layer_norm_2(x)))))
    ```

    Attribute names follow the KerasHub weight layout
    (`_self_attention_layer`, `_feedforward_intermediate_dense`, ...), so
    presets map one to one.

    Args:
        num_heads: int, number of attention heads.
        intermediate_dim: int, width of the MLP.
        dropout: float, residual and attention dropout rate.
        layer_norm_epsilon: float, LayerNorm epsilon.
        kernel_initializer: initializer for all kernels.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        hidden_states: `(batch, seq, hidden)`.
        attention_mask: boolean `(batch, 1, seq, key_length)`, see
            `causal_attention_mask`.
        cache: optional keys and values of earlier positions,
            `(batch, 2, heads, max_length, head_dim)`; when given the block
            returns `(hidden_states, updated_cache)`.
        cache_update_index: where the new keys/values go in `cache`.
        cache_layer: optional int: `cache` is the whole model's cache and
            this block's slot in it is `cache_layer` (see
            `CachedMultiHeadAttention`).
        training: bool.

    Example:
    >>> block = TransformerDecoder(num_heads=2, intermediate_dim=16)
    >>> x = np.random.rand(1, 3, 8).astype("float32")
    >>> mask = np.tril(np.ones((3, 3), bool))[None, None]
    >>> tuple(block(x, mask).shape)
    (1, 3, 8)
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        dropout=0.0,
        layer_norm_epsilon=1e-5,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.dropout = float(dropout)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _initializer(self):
        return clone_initializer(self.kernel_initializer)

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        if hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden_dim={hidden_dim} is not divisible by "
                f"num_heads={self.num_heads}."
            )
        policy = self.dtype_policy
        self._self_attention_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=policy, name="self_attention_layer_norm"
        )
        self._self_attention_layer = CachedMultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=hidden_dim // self.num_heads,
            dropout=self.dropout,
            kernel_initializer=self._initializer(),
            dtype=policy,
            name="self_attention",
        )
        self._self_attention_dropout = keras.layers.Dropout(
            self.dropout, dtype=policy, name="self_attention_dropout"
        )
        self._feedforward_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=policy, name="feedforward_layer_norm"
        )
        self._feedforward_intermediate_dense = keras.layers.Dense(
            self.intermediate_dim,
            kernel_initializer=self._initializer(),
            dtype=policy,
            name="feedforward_intermediate_dense",
        )
        self._feedforward_output_dense = keras.layers.Dense(
            hidden_dim,
            kernel_initializer=self._initializer(),
            dtype=policy,
            name="feedforward_output_dense",
        )
        self._feedforward_dropout = keras.layers.Dropout(
            self.dropout, dtype=policy, name="feedforward_dropout"
        )
        self._self_attention_layer_norm.build(input_shape)
        self._self_attention_layer.build(input_shape)
        self._feedforward_layer_norm.build(input_shape)
        self._feedforward_intermediate_dense.build(input_shape)
        self._feedforward_output_dense.build(
            tuple(input_shape[:-1]) + (self.intermediate_dim,)
        )
        self.built = True

    def call(
        self,
        hidden_states,
        attention_mask,
        cache=None,
        cache_update_index=None,
        cache_layer=None,
        training=None,
    ):
        # Each sub-block's input is a gradient boundary (JAX; identity elsewhere).
        hidden_states = gradient_barrier(hidden_states)  # (batch, seq, hidden)
        attended = self._self_attention_layer(
            self._self_attention_layer_norm(hidden_states),
            attention_mask,
            cache=cache,
            cache_update_index=cache_update_index,
            cache_layer=cache_layer,
            training=training,
        )
        if cache is not None:
            attended, cache = attended
        hidden_states = gradient_barrier(
            hidden_states + self._self_attention_dropout(attended, training=training)
        )
        # MLP: hidden -> intermediate -> hidden.
        mlp = dense_on_rows(
            self._feedforward_intermediate_dense, self._feedforward_layer_norm(hidden_states)
        )  # (batch, seq, intermediate)
        mlp = dense_on_rows(self._feedforward_output_dense, ops.gelu(mlp, approximate=True))
        hidden_states = hidden_states + self._feedforward_dropout(mlp, training=training)
        if cache is None:
            return hidden_states
        return hidden_states, cache

    # === Weight table ===

    def named_sublayers(self):
        """The block's weight table: `{stable name: sublayer}`.

        The names are the sublayers' paths inside the block (the middle of
        `variable.path`, e.g. `transformer_layer_0/self_attention/query/kernel`)
        and are the only way code outside this class reaches a block's
        weights: preset formats, the backend fast paths, LoRA targets,
        quantization and layout maps all start from this table.

        Returns:
            A dict, in computation order: `self_attention_layer_norm`,
            `self_attention/query`, `.../key`, `.../value`,
            `.../attention_output`, `feedforward_layer_norm`,
            `feedforward_intermediate_dense`, `feedforward_output_dense`.
        """
        attention = self._self_attention_layer
        return {
            "self_attention_layer_norm": self._self_attention_layer_norm,
            "self_attention/query": attention.query_dense,
            "self_attention/key": attention.key_dense,
            "self_attention/value": attention.value_dense,
            "self_attention/attention_output": attention.output_dense,
            "feedforward_layer_norm": self._feedforward_layer_norm,
            "feedforward_intermediate_dense": self._feedforward_intermediate_dense,
            "feedforward_output_dense": self._feedforward_output_dense,
        }

    def compute_output_spec(self, hidden_states, attention_mask, cache=None, **kwargs):
        # Same shapes as the attention layer: hidden states, and the cache if given.
        return CachedMultiHeadAttention.compute_output_spec(
            self, hidden_states, attention_mask, cache=cache
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
