"""Base class for the tokenizers of `gpt2_lib`.

Tokenizers are plain Python objects, not Keras layers: they take Python or
NumPy inputs (strings, bytes, lists of them, NumPy string arrays, TensorFlow
string tensors) and return Python lists or NumPy arrays, so that they can be
used from a Python generator, a `keras.utils.PyDataset` or a `tf.data`
pipeline (through `tf.numpy_function`) with any Keras backend.

The public surface follows KerasHub's `keras_hub.tokenizers.Tokenizer`:
`tokenize()`, `detokenize()`, `__call__()`, `get_vocabulary()`,
`vocabulary_size()`, `id_to_token()`, `token_to_id()`, `get_config()`,
`from_config()`, `save_assets()`, `load_assets()`, `from_preset()` and
`save_to_preset()`.
"""

import re

import keras

from gpt2_lib.preset_io import load_tokenizer
from gpt2_lib.preset_io import save_tokenizer
from gpt2_lib.utils.text_inputs import canonicalize_texts
from gpt2_lib.utils.text_inputs import to_numpy

TOKENIZER_CONFIG_FILE = "tokenizer.json"

# Keys that KerasHub (through `keras.layers.Layer.get_config()`) writes into a
# tokenizer or preprocessor config. They have no effect on a plain Python
# tokenizer, so they are accepted and ignored when loading such a config.
HARMLESS_CONFIG_KEYS = frozenset(
    {
        "trainable",
        "autocast",
        "_allow_python_workflow",
        "input_dim",
        "batch_input_shape",
        "dtype_policy",
    }
)


def snake_case(name):
    """Convert `CamelCase` class names to `snake_case` default names.

    Example:

    >>> snake_case("GPT2CausalLMPreprocessor")
    'gpt2_causal_lm_preprocessor'
    """
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def dtype_name(dtype):
    """Return the plain name of a dtype given as a string or a Keras config.

    KerasHub writes `dtype` either as a string (`"int32"`) or as a serialized
    `DTypePolicy` (`{"class_name": "DTypePolicy", "config": {"name": ...}}`).

    Example:

    >>> dtype_name({"class_name": "DTypePolicy", "config": {"name": "int32"}})
    'int32'
    >>> dtype_name("int64")
    'int64'
    """
    if dtype is None:
        return None
    if isinstance(dtype, dict):
        config = dtype.get("config", {})
        name = config.get("name") if isinstance(config, dict) else None
        if not isinstance(name, str):
            raise ValueError(
                f"Could not read a dtype name from `dtype={dtype!r}`. Pass a "
                "dtype name such as `'int32'`."
            )
        return name
    name = getattr(dtype, "name", dtype)
    if not isinstance(name, str):
        raise TypeError(
            f"`dtype` must be a string such as `'int32'`. Received: "
            f"dtype={dtype!r} of type {type(dtype).__name__}."
        )
    return name


def check_unknown_kwargs(owner, kwargs):
    """Accept config keys that are harmless, raise on everything else.

    Example:

    >>> check_unknown_kwargs(object(), {"trainable": True})  # Ignored.
    >>> check_unknown_kwargs(object(), {"sequence_lenght": 8})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: object() got unexpected keyword argument(s) ['sequence_lenght']. ...
    """
    unknown = sorted(k for k in kwargs if k not in HARMLESS_CONFIG_KEYS)
    if unknown:
        raise TypeError(
            f"{owner.__class__.__name__}() got unexpected keyword "
            f"argument(s) {unknown}. Check the spelling; accepted extra "
            f"config keys (ignored) are {sorted(HARMLESS_CONFIG_KEYS)}."
        )


def deserialize_tokenizer(config):
    """Rebuild a tokenizer from a serialized `{class_name, config, ...}` dict.

    Configs written by KerasHub (module `keras_hub.src...`, registered name
    `keras_hub>GPT2Tokenizer`) are mapped onto the class of the same name
    registered by `gpt2_lib`, so that KerasHub presets load unchanged.

    Args:
        config: dict. A serialized tokenizer, as written in a preset's
            `tokenizer.json` or nested in a `preprocessor.json`.

    Returns:
        The tokenizer instance (assets, i.e. vocabulary and merges, are not
        loaded; call `load_assets()`).

    Example:

    >>> from gpt2_lib.tokenizers import GPT2Tokenizer
    >>> config = {
    ...     "class_name": "GPT2Tokenizer",
    ...     "registered_name": "keras_hub>GPT2Tokenizer",
    ...     "config": {"sequence_length": 8},
    ... }
    >>> tokenizer = deserialize_tokenizer(config)
    >>> type(tokenizer).__name__, tokenizer.sequence_length
    ('GPT2Tokenizer', 8)
    """
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(
            "A serialized tokenizer must be a dict with at least the keys "
            f"`class_name` and `config`. Received: {config!r}"
        )
    class_name = config["class_name"]
    cls = keras.saving.get_registered_object(f"gpt2_lib>{class_name}")
    if cls is None:
        registered = config.get("registered_name")
        if registered:
            cls = keras.saving.get_registered_object(registered)
    if cls is None:
        try:
            return keras.saving.deserialize_keras_object(config)
        except Exception as e:  # Re-raised with the fix in the message.
            raise ValueError(
                f"Unknown tokenizer class `{class_name}` (registered name "
                f"{config.get('registered_name')!r}). `gpt2_lib` provides the "
                "classes registered under the `gpt2_lib>` package, e.g. "
                "`GPT2Tokenizer`; register your own class with "
                "`keras.saving.register_keras_serializable(package="
                "'gpt2_lib')` to load it."
            ) from e
    return cls.from_config(dict(config.get("config", {})))


def tokenize_unpadded(tokenizer, inputs):
    """Tokenize text with any tokenizer: `(list of id lists, batched)`.

    The inputs are recognised by `gpt2_lib.utils.text_inputs` (a string,
    bytes, or a batch of them), and `tokenizer.tokenize()` is called on each
    string, so this works for any object with a `tokenize(str)` method.

    Args:
        tokenizer: an object with a `tokenize(str)` method.
        inputs: a string or a batch of strings.

    Example:

    >>> class CharTokenizer:
    ...     def tokenize(self, text):
    ...         return [ord(c) for c in text]
    >>> tokenize_unpadded(CharTokenizer(), ["ab", "c"])
    ([[97, 98], [99]], True)
    >>> tokenize_unpadded(CharTokenizer(), b"ab")
    ([[97, 98]], False)
    """
    texts, batched = canonicalize_texts(inputs)
    rows = []
    for text in texts:
        ids = tokenizer.tokenize(text)
        rows.append(list(ids) if isinstance(ids, (list, tuple)) else to_numpy(ids).tolist())
    return rows, batched


@keras.saving.register_keras_serializable(package="gpt2_lib")
class Tokenizer:
    """A base class for tokenizers.

    Tokenizers turn strings into sequences of integer token ids
    (`tokenize()`, also available as `__call__()`) and back (`detokenize()`).
    Unlike KerasHub's tokenizers they are not Keras layers: inputs and outputs
    are plain Python and NumPy values, which works with every Keras backend,
    from a Python generator, a `keras.utils.PyDataset`, or inside `tf.data`
    through `tf.numpy_function`.

    Subclasses implement `tokenize()` and, if the tokenization is reversible,
    `detokenize()`, plus `get_vocabulary()`, `vocabulary_size()`,
    `token_to_id()` and `id_to_token()` where they apply. Tokenizers with
    file assets (a vocabulary, merge rules) implement `save_assets()` and
    `load_assets()`; the assets are never part of `get_config()`.

    Args:
        name: string. A name for the tokenizer, kept in its config. Defaults
            to the snake case class name.
        dtype: string. The integer dtype of dense outputs. Defaults to
            `"int32"`.
        config_file: string. The preset file this tokenizer's config is saved
            to. Defaults to `"tokenizer.json"`.

    Example:

    >>> from gpt2_lib.tokenizers import Tokenizer
    >>> class WhitespaceTokenizer(Tokenizer):
    ...     def tokenize(self, inputs):
    ...         return inputs.split()
    ...
    ...     def detokenize(self, inputs):
    ...         return " ".join(inputs)
    >>> tokenizer = WhitespaceTokenizer()
    >>> tokenizer("This is a test")
    ['This', 'is', 'a', 'test']
    >>> tokenizer.detokenize(["This", "is"])
    'This is'
    """

    backbone_cls = None

    def __init__(
        self, name=None, dtype="int32", config_file=TOKENIZER_CONFIG_FILE, **kwargs
    ):
        check_unknown_kwargs(self, kwargs)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"`name` must be a string. Received: name={name!r}")
        self.name = name or snake_case(self.__class__.__name__)
        self.dtype = dtype_name(dtype) or "int32"
        if not isinstance(config_file, str) or not config_file:
            raise TypeError(
                "`config_file` must be a non-empty file name such as "
                f"'tokenizer.json'. Received: config_file={config_file!r}"
            )
        self.config_file = config_file
        self.file_assets = None

    def __repr__(self):
        return f"<{self.__class__.__name__} name={self.name!r}>"

    def tokenize(self, inputs, *args, **kwargs):
        """Transform strings into token ids.

        Args:
            inputs: A string or a batch of strings.
        """
        raise NotImplementedError(
            "No implementation of `tokenize()` was found for "
            f"{self.__class__.__name__}. All tokenizers should implement "
            "`tokenize()`."
        )

    def detokenize(self, inputs, *args, **kwargs):
        """Transform token ids back into strings.

        Args:
            inputs: A sequence of token ids or a batch of them.
        """
        raise NotImplementedError(
            "No implementation of `detokenize()` was found for "
            f"{self.__class__.__name__}."
        )

    def __call__(self, inputs, *args, **kwargs):
        """Same as `tokenize()`."""
        return self.tokenize(inputs, *args, **kwargs)

    def get_vocabulary(self):
        """Get the tokenizer vocabulary as a list of string tokens."""
        raise NotImplementedError(
            "No implementation of `get_vocabulary()` was found for "
            f"{self.__class__.__name__}."
        )

    def vocabulary_size(self):
        """Returns the total size of the token id space."""
        raise NotImplementedError(
            "No implementation of `vocabulary_size()` was found for "
            f"{self.__class__.__name__}."
        )

    def id_to_token(self, id):
        """Convert an integer id to a string token."""
        raise NotImplementedError(
            "No implementation of `id_to_token()` was found for "
            f"{self.__class__.__name__}."
        )

    def token_to_id(self, token):
        """Convert a string token to an integer id."""
        raise NotImplementedError(
            "No implementation of `token_to_id()` was found for "
            f"{self.__class__.__name__}."
        )

    def save_assets(self, dir_path):
        """Write the tokenizer's file assets (vocabulary, ...) to `dir_path`."""
        pass

    def load_assets(self, dir_path):
        """Read the tokenizer's file assets (vocabulary, ...) from `dir_path`."""
        pass

    def _tokenize_unpadded(self, inputs):
        """Tokenize without padding: returns `(list of id lists, batched)`.

        Preprocessors call this so that a `sequence_length` set on the
        tokenizer never leaks padding into packed sequences. Subclasses with a
        faster path override it.
        """
        return tokenize_unpadded(self, inputs)

    @property
    def special_tokens(self):
        """List all built-in special tokens for the tokenizer."""
        if not hasattr(self, "_special_token_attrs"):
            return []
        tokens = []
        for attr in self._special_token_attrs:
            token = getattr(self, attr)
            if token not in tokens:
                tokens.append(token)
        return tokens

    @property
    def special_token_ids(self):
        """List all built-in special token ids for the tokenizer."""
        if not hasattr(self, "_special_token_attrs"):
            return []
        ids = []
        for attr in self._special_token_attrs:
            id = getattr(self, f"{attr}_id")
            if id is None:
                raise ValueError(
                    "Cannot access `special_token_ids` before a vocabulary "
                    "has been set on the tokenizer."
                )
            if id not in ids:
                ids.append(id)
        return ids

    def _add_special_token(self, token, name):
        if not hasattr(self, "_special_token_attrs"):
            self._special_token_attrs = []
        if name not in self._special_token_attrs:
            self._special_token_attrs.append(name)
        setattr(self, name, token)
        setattr(self, f"{name}_id", None)

    def _update_special_token_ids(self):
        if not hasattr(self, "_special_token_attrs"):
            return
        for attr in self._special_token_attrs:
            token = getattr(self, attr)
            try:
                id = self.token_to_id(token)
            except ValueError:
                raise ValueError(
                    f"Cannot find special token {token!r} (`{attr}`) in the "
                    f"provided vocabulary for `{self.__class__.__name__}`. "
                    f"Add {token!r} to the vocabulary when creating the "
                    "tokenizer."
                ) from None
            setattr(self, f"{attr}_id", id)

    def get_config(self):
        """Returns the config of the tokenizer (without its assets)."""
        return {
            "name": self.name,
            "trainable": True,
            "dtype": self.dtype,
            "config_file": self.config_file,
        }

    @classmethod
    def from_config(cls, config):
        """Creates a tokenizer from its config (assets are not loaded)."""
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, config_file=TOKENIZER_CONFIG_FILE, **kwargs):
        """Instantiate a tokenizer from a model preset.

        A preset is a directory (or a built-in preset name) holding a
        `tokenizer.json` config and the tokenizer assets, either KerasHub's
        layout (`assets/tokenizer/vocabulary.json` and `merges.txt`) or
        Transformers' (`vocab.json` and `merges.txt`).

        Args:
            preset: string. A built-in preset name or a path to a local
                preset directory.
            config_file: string. The config file to read. Defaults to
                `"tokenizer.json"`.
            **kwargs: Overrides for the config, e.g. `sequence_length=128`.

        Example:

        >>> from gpt2_lib.tokenizers import GPT2Tokenizer
        >>> tokenizer = GPT2Tokenizer.from_preset("gpt2_tiny_shakespeare_en")
        >>> tokenizer.detokenize(tokenizer("The quick brown fox."))
        'The quick brown fox.'

        With a preset that is downloaded:

        ```python
        tokenizer = gpt2_lib.models.GPT2Tokenizer.from_preset("gpt2_base_en")
        tokenizer("The quick brown fox.")  # [464, 2068, 7586, 21831, 13]
        ```
        """
        return load_tokenizer(cls, preset, config_file=config_file, **kwargs)

    def save_to_preset(self, preset_dir):
        """Save the tokenizer config and assets to a preset directory.

        Args:
            preset_dir: The path to the local model preset directory.

        Example:

        >>> import os, tempfile
        >>> from gpt2_lib.tokenizers import GPT2Tokenizer
        >>> tokenizer = GPT2Tokenizer.from_preset("gpt2_tiny_shakespeare_en")
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     preset_dir = os.path.join(tmp, "my_tokenizer")
        ...     tokenizer.save_to_preset(preset_dir)
        ...     loaded = GPT2Tokenizer.from_preset(preset_dir)
        >>> loaded("Romeo") == tokenizer("Romeo")
        True
        """
        save_tokenizer(self, preset_dir)
