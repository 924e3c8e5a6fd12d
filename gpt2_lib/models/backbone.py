"""`Backbone`: the base class of every model's core network."""

import keras

from gpt2_lib import preset_io
from gpt2_lib.models import lora
from gpt2_lib.models import lora_file
from gpt2_lib.utils import quantization
from gpt2_lib.utils.classproperty import classproperty

SUPPORTED_DTYPES = ("float32", "bfloat16", "float16", "mixed_bfloat16", "mixed_float16")


def _check_policy_map(policy_map):
    """Check a `DTypePolicyMap`'s policies: float, or a supported quantization."""
    default = policy_map._default_policy_arg
    if default is not None:
        get_dtype_policy(default)
    for path, policy in policy_map.items():
        mode = policy.quantization_mode
        try:
            if mode is None:
                get_dtype_policy(policy)
            else:
                quantization.check_mode(mode, compute_dtype=policy.compute_dtype)
        except ValueError as e:
            raise ValueError(f"The dtype policy map's entry {path!r} ({policy.name}): {e}") from None
    return policy_map


def get_dtype_policy(dtype):
    """A `keras.DTypePolicy` from None, a string, a policy or a policy map.

    Args:
        dtype: None (the global policy), one of `SUPPORTED_DTYPES`, a float
            `keras.DTypePolicy`, a `keras.dtype_policies.DTypePolicyMap` of
            per-layer policies (what a quantized backbone's config holds:
            quantized layers by path, the rest at its default policy), or a
            serialized policy or map dict.

    Example:
    >>> get_dtype_policy("bfloat16").name
    'bfloat16'
    """
    if dtype is None:
        return keras.dtype_policies.get(keras.config.dtype_policy().name)
    if isinstance(dtype, dict):
        try:
            dtype = keras.dtype_policies.deserialize(dtype)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"Unsupported dtype={dtype!r}: it is not a serialized Keras dtype "
                f"policy ({e})."
            ) from None
    if isinstance(dtype, keras.dtype_policies.DTypePolicyMap):
        return _check_policy_map(dtype)
    if isinstance(dtype, keras.DTypePolicy):
        if dtype.quantization_mode is not None:
            raise ValueError(
                f"dtype={dtype.name!r} is a quantized policy, which would quantize "
                "every layer at construction with empty weights. Build (or load) the "
                "model with a float dtype, then call `quantize(mode)`."
            )
        return dtype
    if isinstance(dtype, str) and dtype in SUPPORTED_DTYPES:
        return keras.dtype_policies.get(dtype)
    raise ValueError(
        f"Unsupported dtype={dtype!r}. Pass one of {', '.join(SUPPORTED_DTYPES)}, "
        "or a `keras.DTypePolicy`."
    )


@keras.saving.register_keras_serializable(package="gpt2_lib")
class Backbone(keras.Model):
    """Base class for the core network of a model, without a task head.

    A `Backbone` is a functional `keras.Model` that also knows how to load
    and save presets (`from_preset`, `save_to_preset`), how to add and share
    LoRA adapters (`enable_lora`, `save_lora_weights`, `load_lora_weights`,
    `merge_lora_weights`), and exposes the `token_embedding` layer a task can
    use to project back to the vocabulary.

    Subclasses build their functional graph and then call
    `super().__init__(inputs=..., outputs=..., dtype=..., name=...)`.

    Example:
    ```python
    backbone = gpt2_lib.models.Backbone.from_preset("gpt2_tiny_shakespeare_en")
    type(backbone).__name__  # "GPT2Backbone", inferred from the preset
    ```
    """

    def __init__(self, *args, dtype=None, **kwargs):
        policy = get_dtype_policy(dtype)
        super().__init__(*args, dtype=policy, **kwargs)
        # A functional model does not keep the policy it is given. (A policy
        # map is set as is: the setter would file it under our own path.)
        if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
            self._dtype_policy = policy
            # Built quantized (a loaded model): compute as the saved one did.
            quantization.match_quantize_time_activations(self)
        else:
            self.dtype_policy = policy
        # Subclasses assign `self._token_embedding` (not through a property
        # setter: torch's Module.__setattr__ would bypass it).
        self._token_embedding = None
        # Our checks (clear errors naming the supported modes) before Keras'.
        self.quantize = quantization.checked_quantize(self.quantize, self.check_quantize)

    @property
    def token_embedding(self):
        """The `keras.layers.ReversibleEmbedding` for token ids.

        `token_embedding(ids)` embeds `(batch, seq)` ids to
        `(batch, seq, hidden)`; `token_embedding(hidden, reverse=True)`
        projects hidden states back to `(batch, seq, vocabulary)` logits.
        """
        return self._token_embedding

    def get_config(self):
        """The constructor arguments; `dtype` as KerasHub writes it.

        A float backbone's `dtype` is its policy. Once any layer is quantized
        it is a `DTypePolicyMap` from each quantized layer's path to its
        policy, with no default (KerasHub's layout: the other layers take
        the global policy, or the `dtype` passed to `from_preset()`).
        """
        policy_map = quantization.quantized_policy_map(self)
        if policy_map is not None:
            dtype = policy_map
        elif isinstance(self.dtype_policy, keras.dtype_policies.DTypePolicyMap):
            dtype = self.dtype_policy.default_policy
        else:
            dtype = self.dtype_policy
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(dtype),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # Quantization ----------------------------------------------------------

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        """Quantize the weights in place: integer kernels plus scales.

        Keras quantizes every `Dense` and `EinsumDense` kernel and the token
        embedding (`ReversibleEmbedding`, whose tied weights also serve as
        the LM head), as KerasHub does; the position embedding, LayerNorms
        and biases stay float. The float kernels are freed. The quantized
        backbone saves with `save_to_preset()` in KerasHub's layout and
        loads back with `from_preset()`.

        Modes:
        - `"int8"`: per-channel int8 kernels; activations are quantized per
          token on the fly. GPT-2 base's weights take 122 MiB instead of
          475 MiB (0.26x); perplexity stays within 1% of float32.
        - `"int4"`: int4 kernels packed two per byte, in groups of 128 input
          rows with their own scale and zero point (Keras' default; pass a
          `keras.quantizers.Int4QuantizationConfig(block_size=...)` to
          change it); weight-only. 67 MiB for GPT-2 base (0.14x), with more
          quality loss (+3.4% perplexity on the Shakespeare preset).
        - `"float8"`: float8 training (`Dense`/`EinsumDense` only, kernels
          stay float; for GPUs with float8 matmuls). Saves no memory.

        `"gptq"` and `"awq"` need calibration data and are refused. An
        already quantized model and one with LoRA adapters are refused
        (merge them first); LoRA can be enabled after quantizing, to
        fine-tune adapters on a frozen quantized base (QLoRA).

        Args:
            mode: `"int8"`, `"int4"` or `"float8"` (or None with `config`).
            config: optional `keras.quantizers.QuantizationConfig`.
            filters: optional layers to quantize, as in Keras: a regex
                searched in each layer's name (`"query|value"`), a list of
                them, or a callable `layer -> bool` (e.g. on `layer.path`).
            **kwargs: passed to `keras.Model.quantize`.

        Example:
        >>> import numpy as np, gpt2_lib
        >>> backbone = gpt2_lib.models.GPT2Backbone(
        ...     vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8,
        ...     intermediate_dim=16, max_sequence_length=8,
        ... )
        >>> backbone.quantize("int8")
        >>> backbone.get_config()["dtype"]["class_name"]
        'DTypePolicyMap'
        >>> x = {"token_ids": np.ones((1, 4), "int32"), "padding_mask": np.ones((1, 4), "int32")}
        >>> tuple(backbone(x).shape)
        (1, 4, 8)
        """
        mode = self.check_quantize(mode, config)
        quantization.resolve_policy_maps(self)
        lora.release_torch_parameters(self)
        try:
            quantization.quiet_quantize(
                super().quantize, mode, config=config, filters=filters, **kwargs
            )
        finally:
            lora.refresh_torch_parameters(self)
        if not quantization.quantized_layers(self):
            raise ValueError(
                f"quantize({mode!r}, filters={filters!r}) quantized no layer of "
                f"{self.name}: no Dense, EinsumDense or Embedding layer matched."
            )

    def check_quantize(self, mode=None, config=None):
        """Raise a clear ValueError if `quantize(mode, config)` cannot run.

        Returns:
            The mode (from `config` when `mode` is None).
        """
        if lora.lora_enabled(self):
            raise ValueError(
                f"Cannot quantize {type(self).__name__} '{self.name}': LoRA is "
                "enabled. Call `merge_lora_weights()` first and quantize the merged "
                "model, or quantize before `enable_lora()` (QLoRA)."
            )
        mode = quantization.check_mode(mode, config, self.compute_dtype)
        modes = quantization.quantization_modes(self)
        if modes:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' is already quantized "
                f"({', '.join(modes)}); quantizing twice would compound the error. "
                "Quantize the float model (e.g. reload it from its float preset)."
            )
        return mode

    # Presets ---------------------------------------------------------------

    @classproperty
    def presets(cls):
        """Built-in presets this class can load: `{name: metadata}`."""
        return preset_io.presets_for_class(cls)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Build a backbone from a preset.

        Args:
            preset: a built-in name (see `presets`), a `kaggle://` or `hf://`
                handle, or a local directory in KerasHub's or Hugging Face
                Transformers' format.
            load_weights: bool. False gives the architecture with freshly
                initialized weights.
            **kwargs: overrides of the config (`dtype`, `dropout`,
                `trainable`, ...).

        Example:
        ```python
        backbone = gpt2_lib.models.GPT2Backbone.from_preset("gpt2_base_en")
        backbone = gpt2_lib.models.Backbone.from_preset(
            "hf://openai-community/gpt2", dtype="bfloat16"
        )
        ```
        """
        return preset_io.load_backbone(cls, preset, load_weights=load_weights, **kwargs)

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """Save config and weights to a KerasHub-format preset directory.

        The write is atomic: files go to a temporary directory which is
        renamed into place only when complete.

        Args:
            preset_dir: the directory to write.
            max_shard_size: int or float, in GB; weights larger than this
                are written as several `model_XXXXX.weights.h5` shards.
        """
        lora.check_lora_disabled(self)
        preset_io.save_backbone(self, preset_dir, max_shard_size=max_shard_size)

    def export_to_transformers(self, path):
        """Write a Hugging Face Transformers checkpoint directory.

        The directory (`config.json` + `model.safetensors`) loads with
        `transformers.GPT2LMHeadModel.from_pretrained(path)`.

        Args:
            path: the directory to write (atomically).
        """
        lora.check_lora_disabled(self)
        preset_io.export_to_transformers(self, path)

    # LoRA ------------------------------------------------------------------

    def default_lora_layer_names(self):
        """Names of the layers `enable_lora` adapts by default."""
        return ["query", "value"]

    def enable_lora(self, rank, target_layer_names=None, alpha=None):
        """Freeze the backbone and add rank-`rank` LoRA adapters.

        Args:
            rank: int, the rank of the adapters.
            target_layer_names: names of the layers to adapt; defaults to
                `default_lora_layer_names()` (attention query and value).
            alpha: float, the adapters are scaled by `alpha / rank`;
                defaults to `rank` (scale 1, as in Keras).
        """
        lora.enable_lora(self, rank, target_layer_names=target_layer_names, alpha=alpha)

    def save_lora_weights(self, filepath):
        """Save only the LoRA adapters (and their rank, alpha and targets)."""
        lora_file.save_lora_weights(self, filepath)

    def load_lora_weights(self, filepath):
        """Load adapters saved by `save_lora_weights`, enabling LoRA if needed."""
        lora_file.load_lora_weights(self, filepath)

    def merge_lora_weights(self):
        """Fold the adapters into the base kernels and remove them."""
        lora.merge_lora_weights(self)
