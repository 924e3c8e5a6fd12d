"""GPT-2's backbone: embeddings, causal pre-LayerNorm decoder blocks, final LayerNorm."""

import keras
import numpy as np
from keras import ops

from gpt2_lib.backends import torch_gpt2
from gpt2_lib.backends.attention import updates_whole_cache
from gpt2_lib.backends.embedding import embedding_lookup
from gpt2_lib.backends.embedding import supports_int4_lookup
from gpt2_lib.backends.loop_weights import per_layer_weights
from gpt2_lib.layers.attention_mask import CausalAttentionMask
from gpt2_lib.layers.attention_mask import causal_attention_mask
from gpt2_lib.layers.position_embedding import PositionEmbedding
from gpt2_lib.layers.position_embedding import position_ids_from_padding_mask
from gpt2_lib.layers.transformer_decoder import TransformerDecoder
from gpt2_lib.layers.weight_table import WeightTableEntry
from gpt2_lib.models.backbone import Backbone
from gpt2_lib.models.backbone import get_dtype_policy
from gpt2_lib.models.distribution import BuildScope
from gpt2_lib.models.distribution import layout_map_for
from gpt2_lib.preset_io.fast_init import is_skipping
from gpt2_lib.utils.validation import check_ids
from gpt2_lib.utils.validation import check_number
from gpt2_lib.utils.validation import check_positive_int

INPUT_KEYS = ("token_ids", "padding_mask")
OPTIONAL_INPUT_KEYS = ("position_ids",)


def _gpt2_initializer():
    # Inside `preset_io.skip_weight_init()` (a preset load that overwrites
    # every weight) skip the random draw.
    if is_skipping():
        return keras.initializers.Zeros()
    return keras.initializers.RandomNormal(stddev=0.02)


def _static_shape(value):
    """The shape of a NumPy array, list or backend tensor; None where unknown."""
    shape = value.shape if hasattr(value, "shape") else np.shape(value)
    return tuple(None if dim is None else int(dim) for dim in shape)


@keras.saving.register_keras_serializable(package="gpt2_lib")
class GPT2Backbone(Backbone):
    """The GPT-2 decoder network (Radford et al., 2019), without the LM head.

    Token embedding (tied, so a task projects back to the vocabulary with
    `token_embedding(x, reverse=True)`) plus a learned position embedding,
    dropout, `num_layers` pre-LayerNorm causal decoder blocks and a final
    LayerNorm. The output is the last hidden state, `(batch, seq, hidden_dim)`,
    equal to Hugging Face's `GPT2Model` (which applies `ln_f`).

    Positions are counted over the real tokens of `padding_mask`, so a prompt
    padded on the left gets the same positions as the unpadded prompt. Pass
    `position_ids` to choose them yourself.

    Args:
        vocabulary_size: int, size of the token vocabulary.
        num_layers: int, number of decoder blocks.
        num_heads: int, attention heads per block; must divide `hidden_dim`.
        hidden_dim: int, width of the residual stream.
        intermediate_dim: int, width of each block's MLP.
        dropout: float in [0, 1), dropout rate for embeddings, attention and
            residual branches.
        max_sequence_length: int, the number of learned positions; longer
            inputs are an error.
        layer_norm_epsilon: float, LayerNorm epsilon (1e-5 for GPT-2).
        dtype: None, a string (`"float32"`, `"bfloat16"`, `"float16"`,
            `"mixed_bfloat16"`, `"mixed_float16"`) or a `keras.DTypePolicy`
            for weights and computation. LayerNorm and softmax always compute
            in float32.
        **kwargs: `keras.Model` arguments such as `name` and `trainable`.

    Inputs:
        A dict with `"token_ids"` `(batch, seq)` int, `"padding_mask"`
        `(batch, seq)` (1/True for real tokens) and optionally
        `"position_ids"` `(batch, seq)` int.

    Example:
    >>> import numpy as np, gpt2_lib
    >>> input_data = {
    ...     "token_ids": np.ones((1, 12), "int32"),
    ...     "padding_mask": np.array([[1] * 10 + [0] * 2]),
    ... }
    >>> model = gpt2_lib.models.GPT2Backbone(
    ...     vocabulary_size=50257, num_layers=2, num_heads=4,
    ...     hidden_dim=64, intermediate_dim=256, max_sequence_length=128,
    ... )
    >>> tuple(model(input_data).shape)
    (1, 12, 64)
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        dropout=0.1,
        max_sequence_length=1024,
        layer_norm_epsilon=1e-5,
        dtype=None,
        **kwargs,
    ):
        vocabulary_size = check_positive_int("vocabulary_size", vocabulary_size)
        num_layers = check_positive_int("num_layers", num_layers)
        num_heads = check_positive_int("num_heads", num_heads)
        hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        intermediate_dim = check_positive_int("intermediate_dim", intermediate_dim)
        max_sequence_length = check_positive_int("max_sequence_length", max_sequence_length)
        if hidden_dim % num_heads:
            raise ValueError(
                f"`hidden_dim` must be divisible by `num_heads`. Received: "
                f"hidden_dim={hidden_dim}, num_heads={num_heads} "
                f"(remainder {hidden_dim % num_heads})."
            )
        dropout = check_number("dropout", dropout, low=0.0, high=1.0, high_inclusive=False)
        layer_norm_epsilon = check_number("layer_norm_epsilon", layer_norm_epsilon, low=0.0, low_inclusive=False)
        policy = get_dtype_policy(dtype)

        # Under ModelParallel, variables are deferred and then allocated
        # once, directly sharded (`models.distribution.BuildScope`).
        with BuildScope() as scope:
            # === Layers ===
            token_embedding = keras.layers.ReversibleEmbedding(
                input_dim=vocabulary_size,
                output_dim=hidden_dim,
                tie_weights=True,
                embeddings_initializer=_gpt2_initializer(),
                dtype=policy,
                name="token_embedding",
            )
            position_embedding = PositionEmbedding(
                sequence_length=max_sequence_length,
                hidden_dim=hidden_dim,
                initializer=_gpt2_initializer(),
                dtype=policy,
                name="position_embedding",
            )
            embeddings_add = keras.layers.Add(dtype=policy, name="embeddings_add")
            embeddings_dropout = keras.layers.Dropout(
                dropout, dtype=policy, name="embeddings_dropout"
            )
            transformer_layers = [
                TransformerDecoder(
                    num_heads=num_heads,
                    intermediate_dim=intermediate_dim,
                    dropout=dropout,
                    layer_norm_epsilon=layer_norm_epsilon,
                    kernel_initializer=_gpt2_initializer(),
                    dtype=policy,
                    name=f"transformer_layer_{i}",
                )
                for i in range(num_layers)
            ]
            layer_norm = keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon, dtype=policy, name="layer_norm"
            )

            # === Functional graph ===
            token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
            padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
            position_ids = keras.Input(
                shape=(None,), dtype="int32", name="position_ids", optional=True
            )
            tokens = token_embedding(token_ids)  # (batch, seq, hidden)
            positions = position_embedding(padding_mask, position_ids)  # (batch, seq, hidden)
            hidden_states = embeddings_dropout(embeddings_add([tokens, positions]))
            attention_mask = CausalAttentionMask(name="attention_mask")(padding_mask)  # (batch, 1, seq, seq)
            for block in transformer_layers:
                hidden_states = block(hidden_states, attention_mask)
            sequence_output = layer_norm(hidden_states)
            super().__init__(
                inputs={
                    "token_ids": token_ids,
                    "padding_mask": padding_mask,
                    "position_ids": position_ids,
                },
                outputs=sequence_output,
                dtype=policy,
                **kwargs,
            )

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = float(dropout)
        self.max_sequence_length = max_sequence_length
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self._token_embedding = token_embedding
        self.position_embedding = position_embedding
        self.transformer_layers = transformer_layers
        self.layer_norm = layer_norm
        scope.finish(self)

    # === Inputs ===

    def _standardize_inputs(self, inputs):
        """Check the input dict and fill in `position_ids=None`."""
        if not isinstance(inputs, dict):
            raise ValueError(
                "GPT2Backbone expects a dict with keys 'token_ids' and "
                "'padding_mask' (and optionally 'position_ids'). Received: "
                f"{type(inputs).__name__}."
            )
        missing = [key for key in INPUT_KEYS if key not in inputs]
        unknown = sorted(set(inputs) - set(INPUT_KEYS) - set(OPTIONAL_INPUT_KEYS))
        if missing or unknown:
            raise ValueError(
                f"GPT2Backbone inputs must have keys {list(INPUT_KEYS)} "
                f"(optionally {list(OPTIONAL_INPUT_KEYS)}). Missing: {missing}; "
                f"unexpected: {unknown}. Received keys: {sorted(inputs)}."
            )
        shapes = {}
        for key in INPUT_KEYS + OPTIONAL_INPUT_KEYS:
            value = inputs.get(key)
            if value is None:
                continue
            shape = _static_shape(value)
            if len(shape) != 2:
                raise ValueError(
                    f"'{key}' must have rank 2, (batch, sequence). Received "
                    f"shape {shape}."
                )
            shapes[key] = shape
        known = {key: shape for key, shape in shapes.items() if None not in shape}
        if len(set(known.values())) > 1:
            raise ValueError(
                f"All inputs must have the same (batch, sequence) shape. Received: {shapes}."
            )
        sequence_length = shapes["token_ids"][1]
        if sequence_length is not None and sequence_length > self.max_sequence_length:
            raise ValueError(
                f"Input sequence length {sequence_length} is longer than this "
                f"model's max_sequence_length={self.max_sequence_length}. "
                "Truncate the input (e.g. a preprocessor with a smaller "
                "`sequence_length`)."
            )
        check_ids(inputs["token_ids"], "token_ids", self.vocabulary_size)
        check_ids(inputs.get("position_ids"), "position_ids", self.max_sequence_length)
        return {**inputs, "position_ids": inputs.get("position_ids")}

    def __call__(self, inputs, *args, **kwargs):
        return super().__call__(self._standardize_inputs(inputs), *args, **kwargs)

    def call(self, inputs, training=None, mask=None, **kwargs):
        inputs = self._standardize_inputs(inputs)
        if torch_gpt2.supports(self, inputs["token_ids"], training):
            # The same computation as the graph below, without per-layer overhead.
            hidden_states, attention_mask = self.embed(
                inputs["token_ids"], inputs["padding_mask"], inputs["position_ids"]
            )
            return torch_gpt2.TorchBlocks(self)(hidden_states, attention_mask)
        if supports_int4_lookup(self.token_embedding):
            # The graph's own layers, but the int4 lookup row by row: Keras'
            # unpacks the whole table per call (`backends.embedding`).
            return self._layer_by_layer(
                inputs["token_ids"], inputs["padding_mask"], inputs["position_ids"], training
            )
        return super().call(inputs, training=training, mask=mask, **kwargs)

    # === Weight table ===

    def weight_table(self):
        """Every layer with weights, under stable names, in computation order.

        This is the one place that says where GPT-2's weights live. Preset
        formats (KerasHub's h5 paths, Transformers' names), the backend fast
        paths, LoRA targets, quantization and layout maps all derive from it.

        Returns:
            A list of `gpt2_lib.layers.WeightTableEntry(path, role, block,
            layer)`: the token and position embeddings, each block's
            sublayers (`TransformerDecoder.named_sublayers`), the final
            LayerNorm.

        Example:
        >>> backbone = gpt2_lib.models.GPT2Backbone(
        ...     vocabulary_size=10, num_layers=1, num_heads=2, hidden_dim=4,
        ...     intermediate_dim=8, max_sequence_length=6,
        ... )
        >>> [entry.path for entry in backbone.weight_table()][:3]
        ['token_embedding', 'position_embedding', 'transformer_layer_0/self_attention_layer_norm']
        """
        table = [
            WeightTableEntry("token_embedding", "token_embedding", None, self.token_embedding),
            WeightTableEntry(
                "position_embedding", "position_embedding", None, self.position_embedding
            ),
        ]
        for index, block in enumerate(self.transformer_layers):
            for role, layer in block.named_sublayers().items():
                table.append(WeightTableEntry(f"{block.name}/{role}", role, index, layer))
        table.append(WeightTableEntry("layer_norm", "layer_norm", None, self.layer_norm))
        return table

    # === Cached forward pass, for generation ===

    def build_cache(self, batch_size, max_length, per_block=False):
        """A zero key/value cache.

        Args:
            batch_size: int.
            max_length: int, positions the cache holds.
            per_block: bool. False: one `(batch, num_layers, 2, heads,
                max_length, head_dim)` tensor. True: a tuple with each
                block's keys and values, `(batch, 2, heads, max_length,
                head_dim)`, which `call_with_cache` updates without slicing
                a block's keys and values out of a stacked cache and
                restacking them on every step (copies where updates are not
                in place: TensorFlow's own kernels, torch's Keras path).

        Heads come before positions, the layout the cached attention reads
        (`gpt2_lib.backends.attention.cached_attention`). KerasHub's cache
        puts positions first; reading it that way made XLA copy every
        block's keys and values on every decoding step.

        Example:
        >>> backbone = GPT2Backbone(vocabulary_size=10, num_layers=2,
        ...     num_heads=2, hidden_dim=8, intermediate_dim=16,
        ...     max_sequence_length=6)
        >>> tuple(backbone.build_cache(1, 6).shape)
        (1, 2, 2, 2, 6, 4)
        >>> tuple(backbone.build_cache(1, 6, per_block=True)[0].shape)
        (1, 2, 2, 6, 4)
        """
        head_dim = self.hidden_dim // self.num_heads
        if per_block:
            shape = [batch_size, 2, self.num_heads, max_length, head_dim]
            return tuple(ops.zeros(shape, self.compute_dtype) for _ in range(self.num_layers))
        shape = [batch_size, self.num_layers, 2, self.num_heads, max_length, head_dim]
        return ops.zeros(shape, dtype=self.compute_dtype)

    def embed(self, token_ids, padding_mask, position_ids=None, query_start=0, blocks=None):
        """Input embeddings and attention mask of `token_ids`.

        Args:
            token_ids: `(batch, seq)` ids, at positions `[query_start, +seq)`
                of `padding_mask`.
            padding_mask: `(batch, key_length)` mask of real tokens (the
                whole cache length when decoding).
            position_ids: `(batch, seq)` positions; by default counted over
                `padding_mask` (so left padding does not shift them).
            query_start: int or scalar tensor, where `token_ids` start.
            blocks: optional fast path (see `call_with_cache`) whose
                `embeddings(token_ids, position_ids)` looks the rows up in
                place of the embedding layers.

        Returns:
            `(hidden_states, attention_mask)`: `(batch, seq, hidden)` token +
            position embeddings (before dropout) and the boolean
            `(batch, 1, seq, key_length)` causal mask.
        """
        batch, seq = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        if position_ids is None:
            position_ids = position_ids_from_padding_mask(padding_mask)
            position_ids = ops.slice(position_ids, [0, query_start], [batch, seq])
        if blocks is not None:
            hidden_states = blocks.embeddings(token_ids, position_ids)
        else:
            # int4: only these rows unpacked
            tokens = embedding_lookup(self.token_embedding, token_ids)
            hidden_states = tokens + self.position_embedding(padding_mask, position_ids)
        attention_mask = causal_attention_mask(
            padding_mask, query_start=query_start, query_length=seq
        )
        return hidden_states, attention_mask

    def call_with_cache(
        self,
        token_ids,
        padding_mask,
        cache,
        cache_update_index,
        position_ids=None,
        training=False,
        blocks=None,
    ):
        """Run `token_ids` at positions `[cache_update_index, +seq)` of the cache.

        Args:
            token_ids: `(batch, seq)` ids to process (the prompt at prefill, one
                token per step when decoding).
            padding_mask: `(batch, max_length)` mask of real tokens over the
                whole cache length.
            cache: `(batch, num_layers, 2, heads, max_length, head_dim)`,
                or a tuple of per-block caches (`build_cache(per_block=True)`).
            cache_update_index: int or scalar tensor, the cache position of
                `token_ids[:, 0]`.
            position_ids: `(batch, seq)` positions of `token_ids`; by default
                counted over `padding_mask`.
            training: bool.
            blocks: optional callable `(hidden_states, attention_mask, cache,
                cache_update_index) -> (hidden_states, cache)` computing the
                blocks and final LayerNorm in place of the Keras layers (the
                torch fast path, `gpt2_lib.backends.torch_gpt2.TorchBlocks`),
                with an `embeddings(token_ids, position_ids)` method for the
                input rows (see `embed`).

        Returns:
            `(hidden_states, cache)`: `(batch, seq, hidden)` after the final
            LayerNorm, and the updated cache (in the form it was given).
        """
        with per_layer_weights([self.token_embedding, self.position_embedding], token_ids):
            hidden_states, attention_mask = self.embed(
                token_ids, padding_mask, position_ids, query_start=cache_update_index, blocks=blocks
            )
        if blocks is not None:
            return blocks(hidden_states, attention_mask, cache, cache_update_index)
        stacked = not isinstance(cache, (tuple, list))
        # Each block writes into the whole cache (JAX: in place), or updates
        # its own keys and values: those of a per-block cache, or sliced out
        # of a stacked cache and restacked at the end.
        whole = stacked and updates_whole_cache()
        if not whole and stacked:
            per_block = [cache[:, i] for i in range(self.num_layers)]
        elif not whole:
            per_block = list(cache)
        for i, block in enumerate(self.transformer_layers):
            with per_layer_weights(block, hidden_states):
                hidden_states, block_cache = block(
                    hidden_states,
                    attention_mask,
                    cache=cache if whole else per_block[i],
                    cache_update_index=cache_update_index,
                    cache_layer=i if whole else None,
                    training=training,
                )
            if whole:
                cache = block_cache
            else:
                per_block[i] = block_cache
        if not whole and stacked:
            cache = ops.stack(per_block, axis=1)
        elif not whole:
            cache = tuple(per_block)
        return self.layer_norm(hidden_states), cache

    def call_with_intercept(self, token_ids, padding_mask, layer_intercept_fn):
        """The forward pass with `layer_intercept_fn(x, i)` after each stage.

        `layer_intercept_fn` sees the embeddings (`i=-1`) and each block's
        output (`i=0, 1, ...`) and returns a tensor of the same shape that
        replaces it (for interpretability; see `GPT2CausalLM.score`).

        Returns:
            `(batch, seq, hidden)` after the final LayerNorm.
        """
        return self._layer_by_layer(token_ids, padding_mask, layer_intercept_fn=layer_intercept_fn)

    def _layer_by_layer(
        self, token_ids, padding_mask, position_ids=None, training=None, layer_intercept_fn=None
    ):
        """The functional graph's computation, one layer call after another."""
        intercept = layer_intercept_fn or (lambda hidden_states, i: hidden_states)
        hidden_states, attention_mask = self.embed(token_ids, padding_mask, position_ids)
        dropout = self.get_layer("embeddings_dropout")
        hidden_states = intercept(dropout(hidden_states, training=training), -1)
        for i, block in enumerate(self.transformer_layers):
            hidden_states = intercept(block(hidden_states, attention_mask, training=training), i)
        return self.layer_norm(hidden_states)

    # === Distribution ===

    @classmethod
    def get_layout_map(cls, device_mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch"):
        """A `keras.distribution.LayoutMap` for `ModelParallel`, from the weight table.

        Attention projections are split by heads, the MLP along its
        intermediate axis and the embeddings along the hidden axis over
        `model_parallel_dim_name` (Megatron style); each large matrix's
        other axis is split over `data_parallel_dim_name` as well when that
        mesh axis has more than one device (FSDP style, as KerasHub). The
        map checks each weight's real shape when a backbone is built under
        it: where the model axis does not divide the heads (12 heads on 8
        devices, GPT-2 XL's 25 on 4), attention is split along `head_dim`
        (then `hidden`) instead, with a one-line warning naming the layers.
        Quantized kernels and LoRA adapters are laid out like the kernels
        they belong to. Variables without a rule (LayerNorms, a few biases)
        are replicated. `keras.distribution` places variables on the JAX
        backend only.

        Args:
            device_mesh: a `keras.distribution.DeviceMesh`.
            model_parallel_dim_name: the mesh axis to split weights over.
            data_parallel_dim_name: the mesh axis of the batch (ignored if
                the mesh has no such axis).

        Returns:
            A `gpt2_lib.models.distribution.WeightTableLayoutMap`.

        Example:
        ```python
        mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"])
        layout_map = GPT2Backbone.get_layout_map(mesh)
        keras.distribution.set_distribution(
            keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
        )
        causal_lm = gpt2_lib.models.GPT2CausalLM.from_preset("gpt2_base_en")
        ```
        """
        return layout_map_for(device_mesh, model_parallel_dim_name, data_parallel_dim_name)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "max_sequence_length": self.max_sequence_length,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
