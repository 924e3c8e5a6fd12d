"""`Backbone`: the base class of every model's core network."""

import keras

from gpt2_lib import preset_io
from gpt2_lib.models import lora
from gpt2_lib.models import lora_file
from gpt2_lib.utils.classproperty import classproperty

SUPPORTED_DTYPES = ("float32", "bfloat16", "float16", "mixed_bfloat16", "mixed_float16")


def get_dtype_policy(dtype):
    """A `keras.DTypePolicy` from None, a string or a policy, with a clear error.

    Args:
        dtype: None (the global policy), one of `SUPPORTED_DTYPES`, a
            `keras.DTypePolicy`, or a serialized policy dict.
    """
    if dtype is None:
        return keras.dtype_policies.get(keras.config.dtype_policy().name)
    if isinstance(dtype, keras.DTypePolicy):
        return dtype
    if isinstance(dtype, dict):
        return keras.dtype_policies.deserialize(dtype)
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
        # A functional model does not keep the policy it is given.
        self.dtype_policy = policy
        # Subclasses assign `self._token_embedding` (not through a property
        # setter: torch's Module.__setattr__ would bypass it).
        self._token_embedding = None

    @property
    def token_embedding(self):
        """The `keras.layers.ReversibleEmbedding` for token ids.

        `token_embedding(ids)` embeds `(batch, seq)` ids to
        `(batch, seq, hidden)`; `token_embedding(hidden, reverse=True)`
        projects hidden states back to `(batch, seq, vocabulary)` logits.
        """
        return self._token_embedding

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

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
