"""Load and save presets: KerasHub's format, Transformers' format, built-ins.

The entry points the model classes' `from_preset`/`save_to_preset` call:

- `load_backbone`, `save_backbone`, `export_to_transformers`
- `load_tokenizer`, `save_tokenizer`
- `load_preprocessor`, `save_preprocessor`
- `load_task`, `save_task`

and the building blocks of one atomic save of several objects:
`atomic_preset_dir()` plus `write_backbone()`, `write_tokenizer()`,
`write_preprocessor()`, `write_task()`.

The package is generic: classes are found through Keras' registry
(`registry`), a backbone's weights through its `weight_table()`
(`weight_table`), and it imports nothing else from gpt2_lib but `utils`.

| module | job |
| --- | --- |
| `handles` | a name, `kaggle://`, `hf://` or directory -> a local directory; `preset_file` containment |
| `builtin` | built-in preset metadata (`presets/*.json`; `gpt2_lib.utils.builtin_presets`, Keras-free) |
| `registry` | the classes a preset names, via Keras' registry |
| `keras_hub_config` | KerasHub's config files: read, check, translate, write |
| `keras_hub_weights` | KerasHub's `model.weights.h5` (and shards) via the weight table |
| `transformers_format` | Transformers' `config.json` and safetensors via the weight table |
| `weight_table` | a backbone's weights as the formats see them |
| `loaders` | `KerasHubPreset`, `TransformersPreset`: one loader per format |
| `saver` | saving in KerasHub's layout |
| `exporter` | exporting a Transformers checkpoint |
| `fast_init` | deferred variables: each weight allocated once, from the file (into its shards under a `keras.distribution`) |

Example:
>>> import gpt2_lib
>>> tokenizer = load_tokenizer(gpt2_lib.models.GPT2Tokenizer, "gpt2_tiny_shakespeare_en")
>>> tokenizer.detokenize(tokenizer("ROMEO:"))
'ROMEO:'
"""

import os

from gpt2_lib.utils import builtin_presets as builtin
from gpt2_lib.preset_io.exporter import export_to_transformers
from gpt2_lib.preset_io.fast_init import skip_weight_init
from gpt2_lib.preset_io.handles import resolve_preset
from gpt2_lib.preset_io.keras_hub_config import PREPROCESSOR_CONFIG_FILE
from gpt2_lib.preset_io.keras_hub_config import TOKENIZER_CONFIG_FILE
from gpt2_lib.preset_io.loaders import builtin_backbone
from gpt2_lib.preset_io.loaders import open_preset
from gpt2_lib.preset_io.registry import presets_for_class
from gpt2_lib.preset_io.saver import atomic_preset_dir
from gpt2_lib.preset_io.saver import save_backbone
from gpt2_lib.preset_io.saver import save_preprocessor
from gpt2_lib.preset_io.saver import save_task
from gpt2_lib.preset_io.saver import save_tokenizer
from gpt2_lib.preset_io.saver import write_backbone
from gpt2_lib.preset_io.saver import write_preprocessor
from gpt2_lib.preset_io.saver import write_task
from gpt2_lib.preset_io.saver import write_tokenizer

__all__ = [
    "atomic_preset_dir",
    "export_to_transformers",
    "load_backbone",
    "load_preprocessor",
    "load_task",
    "load_tokenizer",
    "presets_for_class",
    "resolve_preset",
    "save_backbone",
    "save_preprocessor",
    "save_task",
    "save_tokenizer",
    "skip_weight_init",
    "write_backbone",
    "write_preprocessor",
    "write_task",
    "write_tokenizer",
]


def load_backbone(cls, preset, load_weights=True, **kwargs):
    """Build a backbone of class `cls` (or a subclass) from `preset`.

    Args:
        cls: the class `from_preset` was called on (`Backbone` infers the
            subclass from the preset).
        preset: a built-in name, `kaggle://` or `hf://` handle, or directory.
        load_weights: bool. If False, the weights are freshly initialized
            (a built-in name then needs no download).
        **kwargs: config overrides (`dtype`, `dropout`, `trainable`, ...).

    Returns:
        The backbone.

    Example:
    >>> import gpt2_lib
    >>> backbone = load_backbone(gpt2_lib.models.Backbone, "gpt2_tiny_shakespeare_en")
    >>> backbone.num_layers
    4
    """
    if (
        not load_weights
        and isinstance(preset, str)
        and builtin.get_preset(preset)
        and not os.path.isdir(preset)
    ):
        return builtin_backbone(cls, preset, kwargs)
    return open_preset(preset).backbone(cls, load_weights, **kwargs)


def load_tokenizer(cls, preset, config_file=TOKENIZER_CONFIG_FILE, **kwargs):
    """Build a tokenizer (of class `cls` or a subclass) from `preset`.

    A KerasHub preset gives `tokenizer.json` plus the assets under
    `assets/tokenizer/`; a Transformers directory gives a GPT-2 tokenizer
    from `vocab.json` and `merges.txt`.

    Args:
        cls: the class `from_preset` was called on.
        preset: a built-in name, a handle or a directory.
        config_file: the config file name, `"tokenizer.json"` by default.
        **kwargs: config overrides (e.g. `sequence_length`).
    """
    return open_preset(preset).tokenizer(cls, config_file, **kwargs)


def load_preprocessor(cls, preset, config_file=PREPROCESSOR_CONFIG_FILE, **kwargs):
    """Build a preprocessor (of class `cls` or a subclass) from `preset`.

    With a `preprocessor.json` of a matching class, the saved config is used
    (with the tokenizer's assets). Otherwise, as in KerasHub, the
    preprocessor is `cls(tokenizer=cls.tokenizer_cls.from_preset(preset))`
    with the class's defaults, its `sequence_length` at most the backbone's
    `max_sequence_length`.

    Example:
    >>> import gpt2_lib
    >>> preprocessor = load_preprocessor(
    ...     gpt2_lib.models.GPT2CausalLMPreprocessor, "gpt2_tiny_shakespeare_en"
    ... )
    >>> preprocessor.sequence_length <= 256
    True
    """
    return open_preset(preset).preprocessor(cls, config_file, **kwargs)


def load_task(cls, preset, load_weights=True, **kwargs):
    """Build a task (of class `cls` or a subclass) from `preset`.

    With a `task.json` of a matching class (KerasHub format), the task is
    rebuilt from it, then the backbone weights and `task.weights.h5`
    (weights not in the backbone, if any) are loaded. Otherwise the task is
    `cls(backbone=..., preprocessor=...)` from the preset's backbone and
    (if `cls.preprocessor_cls`) its preprocessor.

    Args:
        cls: the task class.
        preset: a built-in name, a handle or a directory.
        load_weights: bool.
        **kwargs: `dtype` goes to the backbone, the rest to the task config.
    """
    return open_preset(preset).task(cls, load_weights, **kwargs)
