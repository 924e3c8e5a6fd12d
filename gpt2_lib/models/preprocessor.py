"""Base class for preprocessors: a tokenizer plus packing into model inputs.

Preprocessors are plain Python objects (not Keras layers) that take strings
and return NumPy arrays, so they work with every Keras backend, from a
Python generator, a `keras.utils.PyDataset`, or inside `tf.data` through
`tf.numpy_function`.
"""

import keras
import numpy as np

from gpt2_lib.preset_io import load_preprocessor
from gpt2_lib.preset_io import save_preprocessor
from gpt2_lib.tokenizers.tokenizer import check_unknown_kwargs
from gpt2_lib.tokenizers.tokenizer import deserialize_tokenizer
from gpt2_lib.tokenizers.tokenizer import snake_case
from gpt2_lib.tokenizers.tokenizer import tokenize_unpadded

PREPROCESSOR_CONFIG_FILE = "preprocessor.json"


def check_sequence_length(value, name="sequence_length"):
    """Validate a packed sequence length (a positive int).

    Example:

    >>> check_sequence_length(8)
    8
    """
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, np.integer))
        or value < 1
    ):
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}."
        )
    return int(value)


def pack_start_end(
    token_lists,
    sequence_length,
    start_id=None,
    end_id=None,
    pad_id=0,
    add_start=True,
    add_end=True,
    dtype="int32",
):
    """Add start/end ids, then pad or truncate to `sequence_length`.

    Mirrors KerasHub's `StartEndPacker` (right padding): each sequence is
    truncated to leave room for the start and end ids, the ids are added,
    and the result is padded with `pad_id`. The mask is `True` on the start
    id, the tokens and the end id, `False` on padding.

    Args:
        token_lists: list of lists of int ids.
        sequence_length: int. Length of the packed sequences.
        start_id: int or `None`. Prepended when `add_start` is `True`.
        end_id: int or `None`. Appended when `add_end` is `True`.
        pad_id: int or `None` (meaning 0). Fills the padded positions.
        add_start: bool. Whether to prepend `start_id`.
        add_end: bool. Whether to append `end_id`.
        dtype: string. Dtype of the packed ids.

    Returns:
        `(token_ids, padding_mask)`: arrays of shape
        `(len(token_lists), sequence_length)`, of `dtype` and `bool`.

    Example:

    >>> token_ids, padding_mask = pack_start_end(
    ...     [[5, 6], [7, 8, 9, 10]], 5, start_id=1, end_id=2
    ... )
    >>> token_ids.tolist()
    [[1, 5, 6, 2, 0], [1, 7, 8, 9, 2]]
    >>> padding_mask.tolist()
    [[True, True, True, True, False], [True, True, True, True, True]]
    """
    start = [start_id] if add_start and start_id is not None else []
    end = [end_id] if add_end and end_id is not None else []
    keep = max(0, sequence_length - len(start) - len(end))
    pad_id = 0 if pad_id is None else pad_id
    token_ids = np.full((len(token_lists), sequence_length), pad_id, dtype)
    padding_mask = np.zeros((len(token_lists), sequence_length), dtype=bool)
    for i, tokens in enumerate(token_lists):
        row = (start + list(tokens[:keep]) + end)[:sequence_length]
        token_ids[i, : len(row)] = row
        padding_mask[i, : len(row)] = True
    return token_ids, padding_mask


@keras.saving.register_keras_serializable(package="gpt2_lib")
class Preprocessor:
    """Base class for preprocessors.

    A preprocessor holds a `tokenizer` and turns raw strings into the
    inputs of a model (token ids, padding mask, labels). It is called like a
    function and returns NumPy arrays, packed with
    `keras.utils.pack_x_y_sample_weight` as `Model.fit()` expects. As in
    KerasHub, calling it with a single `(x, y)` or `(x, y, sample_weight)`
    tuple unpacks the tuple.

    Subclasses implement `call()` and extend `get_config()`. The config
    nests the serialized tokenizer, as KerasHub's `preprocessor.json` does;
    the tokenizer's vocabulary is saved as preset assets, never in the
    config.

    Args:
        tokenizer: A `gpt2_lib.tokenizers.Tokenizer`.
        name: string. A name kept in the config. Defaults to the snake case
            class name.
        config_file: string. The preset file this config is saved to.
            Defaults to `"preprocessor.json"`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from gpt2_lib.models import Preprocessor
    >>> from gpt2_lib.tokenizers import GPT2Tokenizer
    >>> class LengthPreprocessor(Preprocessor):
    ...     def call(self, x, y=None, sample_weight=None):
    ...         lengths = np.array([len(ids) for ids in self.tokenizer(x)])
    ...         return keras.utils.pack_x_y_sample_weight(lengths, y, sample_weight)
    >>> tokenizer = GPT2Tokenizer.from_preset("gpt2_tiny_shakespeare_en")
    >>> preprocessor = LengthPreprocessor(tokenizer)
    >>> preprocessor(["To be", "or not to be"]).tolist()
    [3, 4]
    """

    backbone_cls = None
    tokenizer_cls = None

    def __init__(
        self,
        tokenizer=None,
        name=None,
        config_file=PREPROCESSOR_CONFIG_FILE,
        **kwargs,
    ):
        # `dtype` is written by KerasHub (a float policy) and means nothing
        # for a preprocessor that returns integer ids and boolean masks.
        kwargs.pop("dtype", None)
        check_unknown_kwargs(self, kwargs)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"`name` must be a string. Received: name={name!r}")
        self.name = name or snake_case(self.__class__.__name__)
        if not isinstance(config_file, str) or not config_file:
            raise TypeError(
                "`config_file` must be a non-empty file name such as "
                f"'preprocessor.json'. Received: config_file={config_file!r}"
            )
        self.config_file = config_file
        self.tokenizer = tokenizer

    def __repr__(self):
        return f"<{self.__class__.__name__} name={self.name!r}>"

    @property
    def tokenizer(self):
        """The tokenizer used to tokenize strings."""
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value):
        if value is not None and not (
            hasattr(value, "tokenize") and hasattr(value, "detokenize")
        ):
            raise TypeError(
                "`tokenizer` must be a tokenizer, e.g. "
                "`gpt2_lib.models.GPT2Tokenizer.from_preset('gpt2_base_en')`."
                f" Received: {value!r} of type {type(value).__name__}."
            )
        self._tokenizer = value

    def _require_tokenizer(self):
        if self._tokenizer is None:
            raise ValueError(
                f"{self.__class__.__name__} has no tokenizer. Pass "
                "`tokenizer=` when creating it, or use `from_preset()`."
            )
        return self._tokenizer

    def _tokenize(self, x):
        """Tokenize without padding: `(list of id lists, batched)`."""
        tokenizer = self._require_tokenizer()
        unpadded = getattr(tokenizer, "_tokenize_unpadded", None)
        if unpadded is not None:
            return unpadded(x)
        return tokenize_unpadded(tokenizer, x)

    def __call__(self, *args, **kwargs):
        if (
            len(args) == 1
            and type(args[0]) is tuple
            and len(args[0]) in (2, 3)
            and "y" not in kwargs
            and "sample_weight" not in kwargs
        ):
            args = args[0]
        return self.call(*args, **kwargs)

    def call(self, x, y=None, sample_weight=None):
        """Preprocess `x` (and pass `y`, `sample_weight` through)."""
        raise NotImplementedError(f"{self.__class__.__name__} must implement `call()`.")

    def get_config(self):
        """Returns the config, with the serialized tokenizer nested."""
        config = {
            "name": self.name,
            "trainable": True,
            "config_file": self.config_file,
        }
        if self.tokenizer is not None:
            config["tokenizer"] = keras.saving.serialize_keras_object(self.tokenizer)
        return config

    @classmethod
    def from_config(cls, config):
        """Creates a preprocessor (and its tokenizer) from its config.

        Accepts configs written by KerasHub, whose nested tokenizer names a
        `keras_hub` class; the `gpt2_lib` class of the same name is used. The
        tokenizer's assets are not loaded (see `load_assets()`).
        """
        config = dict(config)
        if isinstance(config.get("tokenizer"), dict):
            config["tokenizer"] = deserialize_tokenizer(config["tokenizer"])
        return cls(**config)

    def save_assets(self, dir_path):
        """Write the tokenizer's assets into `dir_path`."""
        self._require_tokenizer().save_assets(dir_path)

    def load_assets(self, dir_path):
        """Read the tokenizer's assets from `dir_path`."""
        self._require_tokenizer().load_assets(dir_path)

    @classmethod
    def from_preset(cls, preset, config_file=PREPROCESSOR_CONFIG_FILE, **kwargs):
        """Instantiate a preprocessor from a model preset.

        Args:
            preset: string. A built-in preset name or a path to a local
                preset directory.
            config_file: string. The config file to read. Defaults to
                `"preprocessor.json"`.
            **kwargs: Overrides for the config, e.g. `sequence_length=128`.

        Example:

        >>> from gpt2_lib.models import GPT2CausalLMPreprocessor
        >>> preprocessor = GPT2CausalLMPreprocessor.from_preset(
        ...     "gpt2_tiny_shakespeare_en", sequence_length=16
        ... )
        >>> x, y, sample_weight = preprocessor(["To be, or not to be"])
        >>> x["token_ids"].shape
        (1, 16)
        """
        return load_preprocessor(cls, preset, config_file=config_file, **kwargs)

    def save_to_preset(self, preset_dir):
        """Save the preprocessor config and its tokenizer to a preset.

        Args:
            preset_dir: The path to the local model preset directory.
        """
        save_preprocessor(self, preset_dir)


class PackingPreprocessor(Preprocessor):
    """A preprocessor that packs token ids to `sequence_length` with start/end tokens.

    The shared constructor and config of `GPT2Preprocessor` and
    `CausalLMPreprocessor`.

    Args:
        tokenizer: the tokenizer.
        sequence_length: int, the packed length. Defaults to `1024`.
        add_start_token: bool, whether to prepend the start token.
        add_end_token: bool, whether to append the end token.

    Example:

    >>> from gpt2_lib.models.preprocessor import PackingPreprocessor
    >>> preprocessor = PackingPreprocessor(tokenizer=None, sequence_length=16)
    >>> preprocessor.get_config()["sequence_length"]
    16
    """

    def __init__(
        self,
        tokenizer,
        sequence_length=1024,
        add_start_token=True,
        add_end_token=True,
        **kwargs,
    ):
        super().__init__(tokenizer=tokenizer, **kwargs)
        self.sequence_length = sequence_length
        self.add_start_token = bool(add_start_token)
        self.add_end_token = bool(add_end_token)

    @property
    def sequence_length(self):
        """The padded length of model input sequences."""
        return self._sequence_length

    @sequence_length.setter
    def sequence_length(self, value):
        self._sequence_length = check_sequence_length(value)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "add_start_token": self.add_start_token,
                "add_end_token": self.add_end_token,
            }
        )
        return config
