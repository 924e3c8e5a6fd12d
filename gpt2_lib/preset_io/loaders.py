"""Loading from a preset directory: one loader class per format, chosen once.

`open_preset(preset)` resolves a handle to a local directory and looks at
it once: a `config.json` with `registered_name` is KerasHub's format
(`KerasHubPreset`), one with `model_type` is a Transformers checkpoint
(`TransformersPreset`). Without `config.json` (a tokenizer or preprocessor
saved on its own), `vocab.json` + `merges.txt` make a Transformers
tokenizer folder, anything else a KerasHub one. Both loaders have the same
methods: `backbone_class`, `backbone_config`, `load_backbone_weights`,
`backbone`, `tokenizer`, `preprocessor` and `task`.

Backbones are built with deferred variables and each weight is allocated
once, straight from the (memory-mapped) file (`fast_init.build_and_load`);
every file name, shape and dtype is checked before the first assignment,
so a failed load leaves nothing half-loaded.

Example:
>>> import gpt2_lib
>>> loader = open_preset("gpt2_tiny_shakespeare_en")
>>> type(loader).__name__, loader.max_sequence_length()
('KerasHubPreset', 256)
>>> backbone = loader.backbone(gpt2_lib.models.Backbone)
>>> type(backbone).__name__
'GPT2Backbone'
"""

import copy
import os

from gpt2_lib.utils import builtin_presets as builtin
from gpt2_lib.preset_io import keras_hub_config as config_files
from gpt2_lib.preset_io import keras_hub_weights
from gpt2_lib.preset_io import registry
from gpt2_lib.preset_io import transformers_format
from gpt2_lib.preset_io.fast_init import build_and_load
from gpt2_lib.preset_io.handles import preset_file
from gpt2_lib.preset_io.handles import resolve_preset
from gpt2_lib.utils.validation import is_integer

CONFIG_FILE = config_files.CONFIG_FILE


class PresetLoader:
    """A local preset directory in one format.

    Args:
        preset_dir: the local directory.
        preset: the handle the user gave (for error messages).
        config: the parsed `config.json`, or None if there is none.
    """

    def __init__(self, preset_dir, preset, config):
        self.preset_dir = preset_dir
        self.preset = preset
        self.config = config
        self._objects = {}  # file name -> (class, checked serialized object)

    def has_file(self, name):
        return preset_file(self.preset_dir, name, required=False) is not None

    def where(self, filename=CONFIG_FILE):
        return f"`{filename}` of preset {self.preset!r}"

    def _require_config(self):
        if self.config is None:
            raise FileNotFoundError(
                f"`{CONFIG_FILE}` is missing from the preset directory "
                f"{self.preset_dir!r}. A preset is a directory saved by "
                "`save_to_preset()` (KerasHub format) or a Transformers checkpoint "
                "directory."
            )
        return self.config

    # Format-specific ---------------------------------------------------------

    def backbone_class(self):
        """The backbone class the preset holds."""
        raise NotImplementedError

    def backbone_config(self, overrides):
        """The backbone's constructor arguments, `overrides` applied."""
        raise NotImplementedError

    def load_backbone_weights(self, backbone):
        """Fill the (deferred) variables of `backbone` from the preset's weights."""
        raise NotImplementedError

    def tokenizer(self, cls, config_file=config_files.TOKENIZER_CONFIG_FILE, **kwargs):
        """A tokenizer of class `cls` (or a subclass), assets loaded."""
        raise NotImplementedError

    def preprocessor(self, cls, config_file=config_files.PREPROCESSOR_CONFIG_FILE, **kwargs):
        """A preprocessor of class `cls` (or a subclass)."""
        return self._default_preprocessor(cls, kwargs, self.max_sequence_length())

    def task(self, cls, load_weights=True, **kwargs):
        """A task of class `cls`: `cls(backbone=..., preprocessor=...)`.

        `dtype` goes to the backbone, the other `kwargs` to the task.
        """
        return self._default_task(cls, load_weights, kwargs)

    # Shared ------------------------------------------------------------------

    def backbone(self, cls, load_weights=True, **kwargs):
        """Build the backbone (a `cls`), loading its weights unless told not to."""
        found = self.backbone_class()
        registry.check_subclass(found, cls, self.preset, "backbone")
        registry.check_overrides(found, kwargs)
        config = self.backbone_config(kwargs)
        return build_and_load(
            lambda: config_files.build(found, config, {}, self.where()),
            self.load_backbone_weights if load_weights else None,
        )

    def max_sequence_length(self):
        """The backbone's `max_sequence_length`, or None if unknown."""
        if self.config is None:
            return None
        length = self.backbone_config({}).get("max_sequence_length")
        return int(length) if is_integer(length) else None

    def _default_preprocessor(self, cls, kwargs, max_sequence_length):
        """`cls(tokenizer=...)` with the class defaults, as KerasHub does.

        A default `sequence_length` longer than the backbone's
        `max_sequence_length` is lowered to it (the model could not run it).
        """
        if "tokenizer" not in kwargs:
            tokenizer_cls = getattr(cls, "tokenizer_cls", None)
            if tokenizer_cls is None:
                raise ValueError(
                    f"Preset {self.preset!r} has no preprocessor config for "
                    f"{cls.__name__}, and {cls.__name__} has no `tokenizer_cls` to "
                    "build one from. Use a concrete class such as "
                    "GPT2CausalLMPreprocessor."
                )
            kwargs = {**kwargs, "tokenizer": self.tokenizer(tokenizer_cls)}
        preprocessor = cls(**kwargs)
        length = getattr(preprocessor, "sequence_length", None)
        if (
            "sequence_length" not in kwargs
            and max_sequence_length is not None
            and is_integer(length)
            and length > max_sequence_length
        ):
            preprocessor = cls(**kwargs, sequence_length=max_sequence_length)
        return preprocessor

    def _default_task(self, cls, load_weights, kwargs):
        dtype = kwargs.pop("dtype", None)
        if "backbone" not in kwargs:
            backbone_cls = getattr(cls, "backbone_cls", None) or registry.require_class(
                "Backbone", f"Loading {cls.__name__} from preset {self.preset!r}"
            )
            kwargs["backbone"] = self.backbone(backbone_cls, load_weights, dtype=dtype)
        preprocessor_cls = getattr(cls, "preprocessor_cls", None)
        if "preprocessor" not in kwargs and preprocessor_cls is not None:
            limit = getattr(kwargs["backbone"], "max_sequence_length", None)
            kwargs["preprocessor"] = self._default_preprocessor(
                preprocessor_cls, {}, limit if is_integer(limit) else None
            )
        return cls(**kwargs)


class KerasHubPreset(PresetLoader):
    """A preset in KerasHub's format (also what gpt2_lib saves)."""

    def _object(self, filename):
        """`(class, normalized serialized object)` of a KerasHub config file.

        Each file is read and checked once (its warnings are issued once).
        """
        if filename not in self._objects:
            config = config_files.read_object(self.preset_dir, filename)
            self._objects[filename] = (registry.class_for(config["registered_name"]), config)
        found, config = self._objects[filename]
        return found, copy.deepcopy(config)

    def backbone_class(self):
        self._require_config()
        return self._object(CONFIG_FILE)[0]

    def backbone_config(self, overrides):
        _, config = self._object(CONFIG_FILE)
        # Like KerasHub: without a `dtype` argument, the global dtype policy;
        # a quantized model's per-layer policy map is kept (rebased on `dtype`).
        overrides = dict(overrides)
        dtype = config_files.resolve_dtype(
            config["config"].get("dtype"), overrides.pop("dtype", None), self.where()
        )
        return {**config["config"], **overrides, "dtype": dtype}

    def load_backbone_weights(self, backbone):
        keras_hub_weights.load_backbone_weights(backbone, self.preset_dir)

    def load_tokenizer_assets(self, tokenizer):
        """Call `tokenizer.load_assets()` on its asset folder, files checked."""
        asset_dir = config_files.tokenizer_asset_dir(tokenizer)
        names = getattr(tokenizer, "file_assets", None)
        for name in names or []:
            preset_file(self.preset_dir, os.path.join(asset_dir, name))
        path = os.path.join(os.path.realpath(self.preset_dir), asset_dir)
        if os.path.isdir(path) or names:
            tokenizer.load_assets(path)

    def tokenizer(self, cls, config_file=config_files.TOKENIZER_CONFIG_FILE, **kwargs):
        if not self.has_file(config_file):
            raise FileNotFoundError(
                f"Preset {self.preset!r} has no tokenizer: neither `{config_file}` "
                "(KerasHub format) nor `vocab.json` + `merges.txt` (Transformers "
                "format)."
            )
        found, config = self._object(config_file)
        registry.check_subclass(found, cls, self.preset, "tokenizer")
        tokenizer = config_files.build(found, config["config"], kwargs, self.where(config_file))
        self.load_tokenizer_assets(tokenizer)
        return tokenizer

    def preprocessor(self, cls, config_file=config_files.PREPROCESSOR_CONFIG_FILE, **kwargs):
        if self.has_file(config_file):
            found, config = self._object(config_file)
            if isinstance(cls, type) and issubclass(found, cls):
                preprocessor = config_files.build(
                    found, config["config"], kwargs, self.where(config_file)
                )
                tokenizer = getattr(preprocessor, "tokenizer", None)
                if tokenizer is not None and "tokenizer" not in kwargs:
                    self.load_tokenizer_assets(tokenizer)
                return preprocessor
        return super().preprocessor(cls, config_file, **kwargs)

    def task(self, cls, load_weights=True, **kwargs):
        if self.config is None or not self.has_file(config_files.TASK_CONFIG_FILE):
            return super().task(cls, load_weights, **kwargs)
        found, config = self._object(config_files.TASK_CONFIG_FILE)
        if not (isinstance(cls, type) and issubclass(found, cls)):
            return super().task(cls, load_weights, **kwargs)
        where = self.where(config_files.TASK_CONFIG_FILE)
        dtype = kwargs.pop("dtype", None)
        task_config = dict(config["config"])
        backbone = task_config.get("backbone")
        if "backbone" not in kwargs:
            if not config_files.is_serialized(backbone):
                raise ValueError(
                    f"The {where} has no backbone config; the file is corrupt. "
                    "Re-save the preset, or pass `backbone=...`."
                )
            backbone_cls = registry.class_for(backbone["registered_name"])
            backbone_config = {
                **backbone["config"],
                "dtype": config_files.resolve_dtype(backbone["config"].get("dtype"), dtype, where),
            }
            # Only the backbone is built with deferred variables (a task's
            # optimizer creates variables that cannot be deferred).
            task_config["backbone"] = build_and_load(
                lambda: config_files.build(backbone_cls, backbone_config, {}, where),
                self.load_backbone_weights if load_weights else None,
            )
        task = config_files.build(found, task_config, kwargs, where)
        tokenizer = getattr(getattr(task, "preprocessor", None), "tokenizer", None)
        if tokenizer is not None and "preprocessor" not in kwargs:
            self.load_tokenizer_assets(tokenizer)
        if load_weights:
            keras_hub_weights.load_task_weights(task, self.preset_dir)
        return task


class TransformersPreset(PresetLoader):
    """A Hugging Face Transformers GPT-2 checkpoint directory."""

    def _gpt2_class(self, name):
        config = self._require_config() if name == "GPT2Backbone" else self.config
        if config is not None and config.get("model_type") != "gpt2":
            raise ValueError(
                f"Preset {self.preset!r} is a Transformers checkpoint with "
                f"model_type={config.get('model_type')!r} in `{CONFIG_FILE}`; "
                "gpt2_lib loads GPT-2 (model_type 'gpt2') checkpoints only."
            )
        return registry.require_class(name, f"Loading the Transformers checkpoint {self.preset!r}")

    def backbone_class(self):
        return self._gpt2_class("GPT2Backbone")

    def backbone_config(self, overrides):
        config = transformers_format.backbone_config_from_transformers(
            self._require_config(), overrides=overrides, where=f"The {self.where()}"
        )
        return {**config, **overrides}

    def load_backbone_weights(self, backbone):
        transformers_format.load_weights_from_dir(backbone, self.preset_dir)

    def tokenizer(self, cls, config_file=config_files.TOKENIZER_CONFIG_FILE, **kwargs):
        if not (self.has_file("vocab.json") and self.has_file("merges.txt")):
            raise FileNotFoundError(
                f"Preset {self.preset!r} is a Transformers checkpoint without a "
                "tokenizer: `vocab.json` and `merges.txt` are missing."
            )
        target = self._gpt2_class("GPT2Tokenizer")
        if isinstance(cls, type) and issubclass(cls, target):
            target = cls
        elif not (isinstance(cls, type) and issubclass(target, cls)):
            registry.check_subclass(target, cls, self.preset, "tokenizer")
        return target(
            vocabulary=preset_file(self.preset_dir, "vocab.json"),
            merges=preset_file(self.preset_dir, "merges.txt"),
            **kwargs,
        )


def _is_keras_hub_tokenizer_dir(preset_dir):
    if preset_file(preset_dir, config_files.TOKENIZER_CONFIG_FILE, required=False) is None:
        return False
    try:
        return config_files.is_serialized(
            config_files.read_json(preset_dir, config_files.TOKENIZER_CONFIG_FILE)
        )
    except ValueError:
        return False


def loader_for(preset_dir, preset=None):
    """The loader of a local preset directory, by format detection."""
    preset = preset_dir if preset is None else preset
    if preset_file(preset_dir, CONFIG_FILE, required=False) is None:
        transformers_tokenizer = all(
            preset_file(preset_dir, name, required=False) for name in ("vocab.json", "merges.txt")
        )
        if transformers_tokenizer and not _is_keras_hub_tokenizer_dir(preset_dir):
            return TransformersPreset(preset_dir, preset, None)
        return KerasHubPreset(preset_dir, preset, None)
    config = config_files.read_json(preset_dir, CONFIG_FILE)
    if isinstance(config, dict) and "registered_name" in config:
        config_files.check_serialized(config, CONFIG_FILE, preset_dir)
        return KerasHubPreset(preset_dir, preset, config)
    if isinstance(config, dict) and "model_type" in config:
        return TransformersPreset(preset_dir, preset, config)
    keys = sorted(config) if isinstance(config, dict) else type(config).__name__
    raise ValueError(
        f"Unrecognized `{CONFIG_FILE}` in preset {preset!r}: it has neither "
        "'registered_name' (KerasHub format) nor 'model_type' (Transformers "
        f"format). Keys: {keys}."
    )


def open_preset(preset):
    """Resolve `preset` (name, handle or directory) and return its loader."""
    return loader_for(resolve_preset(preset), preset)


def builtin_backbone(cls, name, kwargs):
    """A built-in preset's backbone with fresh weights, from its metadata alone."""
    metadata = builtin.get_preset(name)
    found = registry.require_class(metadata["class_name"], f"Built-in preset {name!r}")
    registry.check_subclass(found, cls, name, "backbone")
    registry.check_overrides(found, kwargs)
    return found.from_config({**metadata["config"], "dtype": None, **kwargs})
