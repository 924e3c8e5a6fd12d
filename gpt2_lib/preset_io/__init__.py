"""Load and save presets: KerasHub's format, Transformers' format, built-ins.

Public entry points (called by `from_preset`/`save_to_preset` of the model
classes):

- `load_backbone`, `save_backbone`, `export_to_transformers`
- `load_tokenizer`, `save_tokenizer`
- `load_preprocessor`, `save_preprocessor`
- `load_task`, `save_task`

Building blocks for one atomic save of several objects:
`atomic_preset_dir()` plus `write_backbone()`, `write_tokenizer()`,
`write_preprocessor()`, `write_task()`.

Example:
```python
backbone = gpt2_lib.models.Backbone.from_preset("./my_preset")
with atomic_preset_dir("./other_preset") as tmp:
    write_backbone(backbone, tmp)
    write_tokenizer(tokenizer, tmp)
```
"""

import os

import keras

from gpt2_lib.preset_io import builtin
from gpt2_lib.preset_io import keras_format
from gpt2_lib.preset_io import transformers_format
from gpt2_lib.preset_io.atomic import atomic_preset_dir
from gpt2_lib.preset_io.atomic import fresh_path
from gpt2_lib.preset_io.atomic import remove_matching
from gpt2_lib.preset_io.fast_init import build_and_load
from gpt2_lib.preset_io.fast_init import skip_weight_init
from gpt2_lib.preset_io.handles import preset_file
from gpt2_lib.preset_io.handles import resolve_preset
from gpt2_lib.preset_io.keras_format import ASSET_DIR
from gpt2_lib.preset_io.keras_format import CONFIG_FILE
from gpt2_lib.preset_io.keras_format import PREPROCESSOR_CONFIG_FILE
from gpt2_lib.preset_io.keras_format import TASK_CONFIG_FILE
from gpt2_lib.preset_io.keras_format import TASK_WEIGHTS_FILE
from gpt2_lib.preset_io.keras_format import TOKENIZER_CONFIG_FILE

__all__ = [
    "atomic_preset_dir",
    "export_to_transformers",
    "load_backbone",
    "load_preprocessor",
    "load_task",
    "load_tokenizer",
    "resolve_preset",
    "save_backbone",
    "save_preprocessor",
    "save_task",
    "save_tokenizer",
    "write_backbone",
    "write_preprocessor",
    "write_task",
    "write_tokenizer",
]

KERAS = "keras"
TRANSFORMERS = "transformers"


# ---------------------------------------------------------------------------
# Format detection.


def preset_format(preset_dir):
    """`("keras", config)` or `("transformers", config)` from `config.json`."""
    path = preset_file(preset_dir, CONFIG_FILE, required=False)
    if path is None:
        raise FileNotFoundError(
            f"`{CONFIG_FILE}` is missing from the preset directory {preset_dir!r}. "
            "A preset is a directory saved by `save_to_preset()` (KerasHub "
            "format) or a Transformers checkpoint directory."
        )
    config = keras_format.read_json(preset_dir, CONFIG_FILE)
    if isinstance(config, dict) and "registered_name" in config:
        keras_format.check_serialized(config, CONFIG_FILE, preset_dir)
        return KERAS, config
    if isinstance(config, dict) and "model_type" in config:
        return TRANSFORMERS, config
    raise ValueError(
        f"Unrecognized `{CONFIG_FILE}` in preset {preset_dir!r}: it has neither "
        "'registered_name' (KerasHub format) nor 'model_type' (Transformers "
        f"format). Keys: {sorted(config) if isinstance(config, dict) else type(config).__name__}."
    )


def _check_subclass(found, cls, preset, what):
    if not (isinstance(cls, type) and issubclass(found, cls)):
        raise ValueError(
            f"Preset {preset!r} holds a {found.__name__} {what}, which is not a "
            f"{cls.__name__}. Call `{found.__name__}.from_preset()` (or a base "
            f"class such as `{found.__mro__[1].__name__}`) instead."
        )


class _Models:
    """`_models().X`: gpt2_lib's class X, wherever it is defined."""

    def __getattr__(self, name):
        cls = keras_format.our_class(name)
        if cls is None:
            raise ValueError(f"gpt2_lib has no class {name!r}.")
        return cls


def _models():
    return _Models()


_MODEL_KWARGS = ("name", "trainable", "dtype")


def check_overrides(cls, kwargs):
    """Raise a TypeError for overrides `cls.__init__` does not accept.

    A functional `keras.Model` silently drops unknown keyword arguments, so
    a misspelled override (`dropuot=0.2`) would be ignored without this.
    """
    import inspect

    parameters = inspect.signature(cls.__init__).parameters
    accepted = {
        name
        for name, p in parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self"
    } | set(_MODEL_KWARGS)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"{cls.__name__}.from_preset() got unexpected keyword argument(s) "
            f"{unknown}. Accepted overrides: {sorted(accepted)}."
        )


# ---------------------------------------------------------------------------
# Backbones.


def load_backbone(cls, preset, load_weights=True, **kwargs):
    """Build a backbone of class `cls` (or a subclass) from `preset`.

    Args:
        cls: the class `from_preset` was called on (`Backbone` infers the
            subclass from the preset).
        preset: a built-in name, `kaggle://` or `hf://` handle, or directory.
        load_weights: bool. If False, the weights are freshly initialized.
        **kwargs: config overrides (`dtype`, `dropout`, `trainable`, ...).

    Returns:
        The backbone.
    """
    if not load_weights and isinstance(preset, str) and builtin.get_preset(preset):
        # The built-in metadata holds the config: no download needed.
        metadata = builtin.get_preset(preset)
        found = getattr(_models(), metadata["class_name"])
        _check_subclass(found, cls, preset, "backbone")
        check_overrides(found, kwargs)
        config = {**metadata["config"], "dtype": None, **kwargs}
        return found.from_config(config)
    preset_dir = resolve_preset(preset)
    return _load_backbone_from_dir(cls, preset_dir, load_weights, preset, **kwargs)


def _load_backbone_from_dir(cls, preset_dir, load_weights, preset, **kwargs):
    kind, config = preset_format(preset_dir)
    if kind == TRANSFORMERS:
        found = _models().GPT2Backbone
        _check_subclass(found, cls, preset, "backbone")
        check_overrides(found, kwargs)
        backbone_config = transformers_format.backbone_config_from_transformers(
            config, overrides=kwargs
        )
        backbone_config = {**backbone_config, **kwargs}
        return build_and_load(
            lambda: found.from_config(backbone_config),
            _loader(load_weights, transformers_format.load_weights_from_dir, preset_dir),
        )
    config = keras_format.to_gpt2_lib_names(config, where=f"{CONFIG_FILE} of {preset!r}")
    found = keras_format.lookup_class(config["registered_name"], config["class_name"])
    _check_subclass(found, cls, preset, "backbone")
    check_overrides(found, kwargs)
    # Like KerasHub: without a `dtype` argument, the global dtype policy.
    backbone_config = {**config["config"], "dtype": None, **kwargs}
    def build():
        try:
            return found.from_config(backbone_config)
        except TypeError as e:
            raise TypeError(
                f"Could not build {found.__name__} from preset {preset!r}: {e}. "
                "Check the keyword overrides and config.json."
            ) from e

    return build_and_load(
        build, _loader(load_weights, keras_format.load_backbone_weights, preset_dir)
    )


def _loader(load_weights, load_from_dir, preset_dir):
    """`model -> load_from_dir(model, preset_dir)`, or None without weights."""
    if not load_weights:
        return None
    return lambda model: load_from_dir(model, preset_dir)


def write_backbone(backbone, directory, max_shard_size=10):
    """Write `config.json`, `metadata.json` and weights into `directory`."""
    from gpt2_lib.models import lora

    lora.check_lora_disabled(backbone)
    remove_matching(
        directory, ["model.weights.h5", "model.weights.json", "model_*.weights.h5"]
    )
    keras_format.write_json(
        directory, fresh_name(directory, CONFIG_FILE), keras_format.serialize(backbone)
    )
    keras_format.write_json(
        directory,
        fresh_name(directory, keras_format.METADATA_FILE),
        keras_format.metadata_for(backbone),
    )
    keras_format.save_backbone_weights(backbone, directory, max_shard_size=max_shard_size)


def fresh_name(directory, filename):
    fresh_path(directory, filename)
    return filename


def save_backbone(backbone, preset_dir, max_shard_size=10):
    """Save `backbone` to `preset_dir` in KerasHub's format, atomically.

    Args:
        backbone: the backbone.
        preset_dir: the directory to create or update.
        max_shard_size: int/float in GB (None: never shard).

    Example:
    ```python
    backbone.save_to_preset("./my_preset")
    ```
    """
    with atomic_preset_dir(preset_dir) as tmp:
        write_backbone(backbone, tmp, max_shard_size=max_shard_size)


def export_to_transformers(backbone, path, tokenizer=None):
    """Write a Transformers GPT-2 checkpoint directory, atomically.

    Args:
        backbone: the `GPT2Backbone` (without LoRA adapters: merge them first).
        path: the directory to write: `config.json`, `model.safetensors`
            and, with a tokenizer, `vocab.json` and `merges.txt`.
        tokenizer: optional `GPT2Tokenizer` whose files to include.
    """
    from gpt2_lib.models import lora

    lora.check_lora_disabled(backbone)
    with atomic_preset_dir(path) as tmp:
        transformers_format.write_transformers_checkpoint(backbone, tmp)
        if tokenizer is not None:
            tokenizer.save_assets(tmp)
            os.replace(os.path.join(tmp, "vocabulary.json"), os.path.join(tmp, "vocab.json"))


# ---------------------------------------------------------------------------
# Tokenizers.


def _tokenizer_base():
    from gpt2_lib.tokenizers.tokenizer import Tokenizer

    return Tokenizer


def _has_file(preset_dir, name):
    return preset_file(preset_dir, name, required=False) is not None


def load_tokenizer(cls, preset, config_file=TOKENIZER_CONFIG_FILE, **kwargs):
    """Build a tokenizer (of class `cls` or a subclass) from `preset`.

    A KerasHub preset gives `tokenizer.json` plus the assets under
    `assets/tokenizer/`; a Transformers directory gives
    `cls(vocabulary=vocab.json, merges=merges.txt)`.

    Args:
        cls: the class `from_preset` was called on.
        preset: a built-in name, a handle or a directory.
        config_file: the config file name, `"tokenizer.json"` by default.
        **kwargs: config overrides (e.g. `sequence_length`).
    """
    return _load_tokenizer_from_dir(cls, resolve_preset(preset), preset, config_file, **kwargs)


def _load_tokenizer_from_dir(cls, preset_dir, preset, config_file=TOKENIZER_CONFIG_FILE, **kwargs):
    if _has_file(preset_dir, config_file):
        config = keras_format.read_json(preset_dir, config_file)
        keras_format.check_serialized(config, config_file, preset_dir)
        config = keras_format.to_gpt2_lib_names(config, where=f"{config_file} of {preset!r}")
        found = keras_format.lookup_class(config["registered_name"], config["class_name"])
        _check_subclass(found, cls, preset, "tokenizer")
        tokenizer = found.from_config({**config["config"], **kwargs})
        load_tokenizer_assets(tokenizer, preset_dir)
        return tokenizer
    if _has_file(preset_dir, "vocab.json") and _has_file(preset_dir, "merges.txt"):
        target = cls
        if cls in (_tokenizer_base(), object) or cls.__name__ == "BytePairTokenizer":
            target = _models().GPT2Tokenizer
        if _has_file(preset_dir, CONFIG_FILE):
            kind, config = preset_format(preset_dir)
            if kind == TRANSFORMERS and config.get("model_type") != "gpt2":
                raise ValueError(
                    f"Preset {preset!r} is a Transformers {config.get('model_type')!r} "
                    "checkpoint; only GPT-2 ('gpt2') tokenizers can be loaded."
                )
        return target(
            vocabulary=preset_file(preset_dir, "vocab.json"),
            merges=preset_file(preset_dir, "merges.txt"),
            **kwargs,
        )
    raise FileNotFoundError(
        f"Preset {preset!r} has no tokenizer: neither `{config_file}` (KerasHub "
        "format) nor `vocab.json` + `merges.txt` (Transformers format)."
    )


def tokenizer_asset_dir(tokenizer):
    """The asset sub-directory of a tokenizer: `assets/<config file stem>`."""
    config_file = getattr(tokenizer, "config_file", TOKENIZER_CONFIG_FILE)
    stem = config_file.split(".")[0] if isinstance(config_file, str) else ""
    if not stem or "/" in config_file or "\\" in config_file or stem in ("..", "."):
        raise ValueError(
            f"Tokenizer config_file={config_file!r} is not a plain file name "
            "(like 'tokenizer.json'); its assets would not be inside "
            "`assets/` of the preset directory. Refusing it."
        )
    return os.path.join(ASSET_DIR, stem)


def load_tokenizer_assets(tokenizer, preset_dir):
    """Call `tokenizer.load_assets()` on its asset dir, checking the files."""
    asset_dir = tokenizer_asset_dir(tokenizer)
    names = getattr(tokenizer, "file_assets", None)
    if names is None and hasattr(tokenizer, "set_vocabulary_and_merges"):
        names = ["vocabulary.json", "merges.txt"]
    for name in names or []:
        preset_file(preset_dir, os.path.join(asset_dir, name))
    path = os.path.join(os.path.realpath(preset_dir), asset_dir)
    if os.path.isdir(path) or names:
        tokenizer.load_assets(path)


def write_tokenizer(tokenizer, directory):
    """Write the tokenizer config and assets into `directory`."""
    config_file = getattr(tokenizer, "config_file", TOKENIZER_CONFIG_FILE)
    keras_format.write_json(
        directory, fresh_name(directory, config_file), keras_format.serialize(tokenizer)
    )
    asset_dir = fresh_path(directory, tokenizer_asset_dir(tokenizer))
    os.makedirs(asset_dir)
    tokenizer.save_assets(asset_dir)


def save_tokenizer(tokenizer, preset_dir):
    """Save a tokenizer's config and assets to `preset_dir`, atomically."""
    with atomic_preset_dir(preset_dir) as tmp:
        write_tokenizer(tokenizer, tmp)


# ---------------------------------------------------------------------------
# Preprocessors.


def load_preprocessor(cls, preset, config_file=PREPROCESSOR_CONFIG_FILE, **kwargs):
    """Build a preprocessor (of class `cls` or a subclass) from `preset`.

    With a `preprocessor.json` of a matching class, the saved config is used
    (with the tokenizer's assets). Otherwise, as in KerasHub, the
    preprocessor is `cls(tokenizer=cls.tokenizer_cls.from_preset(preset))`
    with the class's defaults.
    """
    return _load_preprocessor_from_dir(cls, resolve_preset(preset), preset, config_file, **kwargs)


def _load_preprocessor_from_dir(cls, preset_dir, preset, config_file=PREPROCESSOR_CONFIG_FILE, **kwargs):
    if _has_file(preset_dir, config_file):
        config = keras_format.read_json(preset_dir, config_file)
        keras_format.check_serialized(config, config_file, preset_dir)
        config = keras_format.to_gpt2_lib_names(config, where=f"{config_file} of {preset!r}")
        found = keras_format.lookup_class(config["registered_name"], config["class_name"])
        if isinstance(cls, type) and issubclass(found, cls):
            preprocessor = found.from_config({**config["config"], **kwargs})
            tokenizer = getattr(preprocessor, "tokenizer", None)
            if tokenizer is not None and "tokenizer" not in kwargs:
                load_tokenizer_assets(tokenizer, preset_dir)
            return preprocessor
    if "tokenizer" not in kwargs:
        tokenizer_cls = getattr(cls, "tokenizer_cls", None)
        if tokenizer_cls is None:
            raise ValueError(
                f"Preset {preset!r} has no `{config_file}` for {cls.__name__}, and "
                f"{cls.__name__} has no `tokenizer_cls` to build one from. Use a "
                "concrete class such as GPT2CausalLMPreprocessor."
            )
        kwargs["tokenizer"] = _load_tokenizer_from_dir(tokenizer_cls, preset_dir, preset)
    return cls(**kwargs)


def write_preprocessor(preprocessor, directory):
    """Write `preprocessor.json` and the tokenizer's files into `directory`."""
    config_file = getattr(preprocessor, "config_file", PREPROCESSOR_CONFIG_FILE)
    keras_format.write_json(
        directory, fresh_name(directory, config_file), keras_format.serialize(preprocessor)
    )
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if tokenizer is not None:
        write_tokenizer(tokenizer, directory)


def save_preprocessor(preprocessor, preset_dir):
    """Save a preprocessor (and its tokenizer) to `preset_dir`, atomically."""
    with atomic_preset_dir(preset_dir) as tmp:
        write_preprocessor(preprocessor, tmp)


# ---------------------------------------------------------------------------
# Tasks.


def _backbone_layers(task):
    return list(task.backbone._flatten_layers())


def _has_task_weights(task):
    backbone_ids = {id(w) for w in task.backbone.weights}
    return any(id(w) not in backbone_ids for w in task.weights)


def load_task(cls, preset, load_weights=True, **kwargs):
    """Build a task (of class `cls` or a subclass) from `preset`.

    With a `task.json` of a matching class (KerasHub format), the task is
    rebuilt from it, then `task.weights.h5` (weights not in the backbone, if
    any) and the backbone weights are loaded. Otherwise the task is
    `cls(backbone=..., preprocessor=...)` from the preset's backbone and
    (if `cls.preprocessor_cls`) its preprocessor.

    Args:
        cls: the task class.
        preset: a built-in name, a handle or a directory.
        load_weights: bool.
        **kwargs: `dtype` goes to the backbone, the rest to the task config.
    """
    preset_dir = resolve_preset(preset)
    kind, _ = preset_format(preset_dir)
    dtype = kwargs.pop("dtype", None)
    if kind == KERAS and _has_file(preset_dir, TASK_CONFIG_FILE):
        config = keras_format.read_json(preset_dir, TASK_CONFIG_FILE)
        keras_format.check_serialized(config, TASK_CONFIG_FILE, preset_dir)
        config = keras_format.to_gpt2_lib_names(config, where=f"{TASK_CONFIG_FILE} of {preset!r}")
        found = keras_format.lookup_class(config["registered_name"], config["class_name"])
        if isinstance(cls, type) and issubclass(found, cls):
            task_config = dict(config["config"])
            if isinstance(task_config.get("backbone"), dict) and "backbone" not in kwargs:
                task_config["backbone"]["config"]["dtype"] = dtype
                # Only the backbone is built with deferred variables (a task's
                # optimizer creates variables that cannot be deferred).
                task_config["backbone"] = build_and_load(
                    lambda: keras.saving.deserialize_keras_object(task_config["backbone"]),
                    _loader(load_weights, keras_format.load_backbone_weights, preset_dir),
                )
            elif load_weights and "backbone" not in kwargs:
                raise ValueError(
                    f"`{TASK_CONFIG_FILE}` of preset {preset!r} has no backbone "
                    "config; the file is corrupt."
                )
            task = found.from_config({**task_config, **kwargs})
            preprocessor = getattr(task, "preprocessor", None)
            tokenizer = getattr(preprocessor, "tokenizer", None)
            if tokenizer is not None and "preprocessor" not in kwargs:
                load_tokenizer_assets(tokenizer, preset_dir)
            if load_weights and _has_task_weights(task):
                keras.saving.load_weights(
                    task,
                    preset_file(preset_dir, TASK_WEIGHTS_FILE),
                    objects_to_skip=_backbone_layers(task),
                )
            return task
    if "backbone" not in kwargs:
        backbone_cls = getattr(cls, "backbone_cls", None) or _models().Backbone
        kwargs["backbone"] = _load_backbone_from_dir(
            backbone_cls, preset_dir, load_weights, preset, dtype=dtype
        )
    preprocessor_cls = getattr(cls, "preprocessor_cls", None)
    if "preprocessor" not in kwargs and preprocessor_cls is not None:
        kwargs["preprocessor"] = _load_preprocessor_from_dir(preprocessor_cls, preset_dir, preset)
    return cls(**kwargs)


def write_task(task, directory, max_shard_size=10):
    """Write task.json (+ task.weights.h5), the backbone and the preprocessor."""
    keras_format.write_json(
        directory, fresh_name(directory, TASK_CONFIG_FILE), keras_format.serialize(task)
    )
    fresh_path(directory, TASK_WEIGHTS_FILE)
    if _has_task_weights(task):
        keras.saving.save_weights(
            task,
            os.path.join(directory, TASK_WEIGHTS_FILE),
            objects_to_skip=_backbone_layers(task),
        )
    write_backbone(task.backbone, directory, max_shard_size=max_shard_size)
    preprocessor = getattr(task, "preprocessor", None)
    if preprocessor is not None:
        write_preprocessor(preprocessor, directory)


def save_task(task, preset_dir, max_shard_size=10):
    """Save a task with its backbone and preprocessor in one atomic step."""
    with atomic_preset_dir(preset_dir) as tmp:
        write_task(task, tmp, max_shard_size=max_shard_size)
