"""KerasHub's preset config files: read, check, translate and write them.

A KerasHub preset holds serialized objects,
`{"module", "class_name", "config", "registered_name"}`: the backbone in
`config.json`, and `tokenizer.json`, `preprocessor.json`, `task.json`. We
write KerasHub's names for the classes KerasHub has (so KerasHub loads our
presets) and, when reading, map both `keras_hub>X` and `gpt2_lib>X` to our
class `X` (`registry.class_for`).

Reading checks every serialized object in a file, nested ones included
(`read_object`):

- only Keras' own objects and gpt2_lib/KerasHub classes, with `module`,
  `class_name` and `registered_name` agreeing;
- config values of the wrong type for the constructor's default (a string
  `"0.1"` for `dropout`) are errors naming the file, the field and the fix;
- keys the class does not take are dropped with a warning naming them;
- a tokenizer's `vocabulary`/`merges` must not be file paths: its files
  are the preset's assets (`assets/<config stem>/`), never a path elsewhere.

Example:
>>> import gpt2_lib
>>> from gpt2_lib.preset_io.handles import resolve_preset
>>> config = read_object(resolve_preset("gpt2_tiny_shakespeare_en"), CONFIG_FILE)
>>> config["registered_name"], config["config"]["num_layers"]
('gpt2_lib>GPT2Backbone', 4)
"""

import copy
import datetime
import json
import math
import os
import sys
import warnings

import keras
import numpy as np

from gpt2_lib.preset_io import registry
from gpt2_lib.preset_io.handles import preset_file
from gpt2_lib.utils import quantization
from gpt2_lib.utils.validation import is_integer

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
TOKENIZER_CONFIG_FILE = "tokenizer.json"
PREPROCESSOR_CONFIG_FILE = "preprocessor.json"
TASK_CONFIG_FILE = "task.json"
ASSET_DIR = "assets"

# Our classes that KerasHub also has, with KerasHub's module for each.
KERAS_HUB_MODULES = {
    "Backbone": "keras_hub.src.models.backbone",
    "GPT2Backbone": "keras_hub.src.models.gpt2.gpt2_backbone",
    "GPT2Tokenizer": "keras_hub.src.models.gpt2.gpt2_tokenizer",
    "GPT2Preprocessor": "keras_hub.src.models.gpt2.gpt2_preprocessor",
    "GPT2CausalLMPreprocessor": "keras_hub.src.models.gpt2.gpt2_causal_lm_preprocessor",
    "GPT2CausalLM": "keras_hub.src.models.gpt2.gpt2_causal_lm",
    "BytePairTokenizer": "keras_hub.src.tokenizers.byte_pair_tokenizer",
}

# Config keys KerasHub's classes do not accept, with the default value for
# which the key is dropped on save (KerasHub then loads the preset and
# computes the same thing). A non-default value is kept: gpt2_lib loads it,
# KerasHub refuses it (it cannot express it), which is the honest outcome.
KERAS_HUB_UNKNOWN_KEYS = {
    "GPT2Backbone": {"layer_norm_epsilon": 1e-5},
}

# Config keys naming a tokenizer's files: in a preset they come from the
# assets folder, so a value here (a path) would read outside the preset.
ASSET_KEYS = ("vocabulary", "merges")

# Keys Keras layers write into configs (KerasHub's tokenizers and
# preprocessors are layers); they mean nothing here and are dropped quietly.
IGNORED_KEYS = ("autocast", "dtype_policy", "_allow_python_workflow", "input_dim", "batch_input_shape")


def read_json(preset_dir, filename):
    """Parse `filename` of the preset as JSON, with clear errors."""
    path = preset_file(preset_dir, filename)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"`{filename}` in preset {preset_dir!r} is not valid JSON ({e}). "
            "The file is corrupt or truncated; re-download or re-save the preset."
        ) from None


def is_serialized(config):
    """Whether `config` has the top-level shape of a serialized Keras object."""
    return (
        isinstance(config, dict)
        and isinstance(config.get("config"), dict)
        and "registered_name" in config
        and "class_name" in config
    )


def check_serialized(config, filename, preset_dir):
    """Check the top-level shape of a serialized object read from a file."""
    if not is_serialized(config):
        keys = sorted(config) if isinstance(config, dict) else type(config).__name__
        raise ValueError(
            f"`{filename}` in preset {preset_dir!r} is not a serialized Keras "
            "object (expected keys 'module', 'class_name', 'config', "
            f"'registered_name'); got keys {keys}."
        )


def read_object(preset_dir, filename):
    """Read, check and translate (`to_gpt2_lib_names`) a serialized object file."""
    config = read_json(preset_dir, filename)
    check_serialized(config, filename, preset_dir)
    return to_gpt2_lib_names(config, where=f"`{filename}` of preset {preset_dir!r}")


def _check_value(cls, key, value, parameter, where):
    """A ValueError if `value` has the wrong type for `parameter`'s default."""
    default = parameter.default
    if default is parameter.empty or default is None:
        return
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, expected = is_integer(value), "an integer"
    elif isinstance(default, float):
        ok = (is_integer(value) or isinstance(value, float)) and math.isfinite(value)
        expected = "a number"
    else:
        return
    if not ok:
        raise ValueError(
            f"The {where} has {key}={value!r} ({type(value).__name__}) for "
            f"{cls.__name__}; `{key}` must be {expected} (default "
            f"{json.dumps(default)}). Fix the value in the file, or pass "
            f"`{key}=...` to `from_preset()`."
        )


def _check_config(cls, node, where):
    """Check a serialized object's config against `cls`'s constructor."""
    config = node["config"]
    for key in ASSET_KEYS:
        if isinstance(config.get(key), (str, os.PathLike)):
            raise ValueError(
                f"The {where} sets {cls.__name__}'s `{key}` to the path "
                f"{config[key]!r}. A preset's tokenizer files are its assets "
                f"(`{ASSET_DIR}/<config file stem>/`) and nothing outside the "
                f"preset is read; remove `{key}` from the file."
            )
    parameters = registry.constructor_parameters(cls)
    unknown = sorted(set(config) - set(parameters) - set(registry.LAYER_KEYS))
    for key in unknown:
        del config[key]
    unknown = [key for key in unknown if key not in IGNORED_KEYS]
    if unknown:
        warnings.warn(
            f"The {where} has config keys {unknown} that {cls.__name__} does not "
            "take; they were ignored. Was the preset saved by a newer library "
            "version? Remove them from the file to silence this warning.",
            stacklevel=2,
        )
    for key, value in config.items():
        if key in parameters:
            _check_value(cls, key, value, parameters[key], where)


def _rewritten_dicts(config, rewrite):
    """Deep copy of `config` after `rewrite(node)` on each of its dicts, outer first."""
    config = copy.deepcopy(config)

    def visit(node):
        if isinstance(node, dict):
            rewrite(node)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    return config


def to_gpt2_lib_names(config, where="config"):
    """Deep copy of `config`, every `keras_hub>X` object renamed `gpt2_lib>X`.

    Nested serialized objects (a tokenizer inside a preprocessor, a backbone
    inside a task) are checked too: only Keras' own objects (registered name
    None, module `keras...`) and gpt2_lib/KerasHub classes are allowed, and
    each config is checked against its class (see the module docstring).
    """

    def rename(node):
        if "class_name" not in node or "config" not in node:
            return
        registered = node.get("registered_name")
        module = node.get("module") or ""
        if registered is None:
            if module and module.split(".")[0] != "keras":
                raise ValueError(
                    f"The {where} refers to {node['class_name']!r} from "
                    f"module {module!r}; only Keras, KerasHub and "
                    "gpt2_lib objects can be loaded."
                )
            return
        cls = registry.class_for(registered, node.get("class_name"), node.get("module"), where)
        node["registered_name"] = f"{registry.PACKAGE}>{cls.__name__}"
        node["module"] = cls.__module__
        if isinstance(node["config"], dict):
            _check_config(cls, node, where)

    return _rewritten_dicts(config, rename)


def to_keras_hub_names(config):
    """Deep copy of a serialized config written with KerasHub's class names."""

    def rename(node):
        registered = node.get("registered_name")
        if "class_name" in node and isinstance(registered, str) and ">" in registered:
            name = registered.split(">", 1)[1]
            if name in KERAS_HUB_MODULES:
                node["registered_name"] = f"{registry.KERAS_HUB}>{name}"
                node["module"] = KERAS_HUB_MODULES[name]
                inner = node.get("config")
                for key, default in KERAS_HUB_UNKNOWN_KEYS.get(name, {}).items():
                    if isinstance(inner, dict) and key in inner and _same(inner[key], default):
                        del inner[key]
        for key in ("compile_config", "build_config"):
            node.pop(key, None)

    return _rewritten_dicts(config, rename)


def _same(value, default):
    if isinstance(default, float):
        try:
            return float(value) == default
        except (TypeError, ValueError):
            return False
    return value == default


def _is_policy_map(dtype):
    if isinstance(dtype, keras.dtype_policies.DTypePolicyMap):
        return True
    return isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicyMap"


def resolve_dtype(saved, requested, where="config"):
    """The backbone `dtype` to build with, from the saved one and the user's.

    As KerasHub's `_resolve_dtype`: a saved float dtype is only how the
    weights were stored, and the model takes the user's `dtype` or else the
    global policy (None). A saved `DTypePolicyMap` (a quantized model) is
    kept, since integer kernels cannot be cast; with a float `dtype` from the
    user it is rebased on it: quantized layers stay quantized, computing in
    the new dtype, and every other layer takes it. A map from the user is
    used as is.

    Args:
        saved: the config's serialized `dtype` (or None).
        requested: the user's `dtype` argument (None, a name, a policy, a map).
        where: the config file, for error messages.

    Example:
    >>> resolve_dtype({"class_name": "DTypePolicy", "config": {"name": "bfloat16"}}, None) is None
    True
    """
    if not _is_policy_map(saved) or _is_policy_map(requested):
        return requested
    if requested is None:
        return saved
    try:
        policy_map = keras.dtype_policies.deserialize(saved)
        return quantization.rebase_policy(policy_map, requested)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"The {where} holds a quantized model (a per-layer dtype policy map); "
            f"it cannot be loaded with dtype={requested!r}: {e}"
        ) from None


def build(cls, config, overrides, where):
    """`cls.from_config({**config, **overrides})`, errors naming `where`."""
    try:
        return cls.from_config({**config, **overrides})
    except (TypeError, ValueError) as e:
        raise type(e)(
            f"Could not build {cls.__name__} from the {where}: {e} Fix the "
            "file, or pass a corrected value as a keyword argument to "
            "`from_preset()`."
        ) from e


def serialize(obj):
    """KerasHub-compatible `{module, class_name, config, registered_name}`."""
    serialized = {
        "module": type(obj).__module__,
        "class_name": type(obj).__name__,
        "config": obj.get_config(),
        "registered_name": keras.saving.get_registered_name(type(obj)),
    }
    # Nested objects (a tokenizer in a preprocessor) may be serialized by
    # their owner as live objects; make the whole thing JSON.
    serialized = json.loads(json.dumps(serialized, default=_json_default))
    return to_keras_hub_names(serialized)


def _json_default(value):
    if hasattr(value, "get_config"):
        return {
            "module": type(value).__module__,
            "class_name": type(value).__name__,
            "config": value.get_config(),
            "registered_name": keras.saving.get_registered_name(type(value)),
        }
    if isinstance(value, keras.DTypePolicy):
        return keras.dtype_policies.serialize(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Cannot write {value!r} ({type(value).__name__}) to a preset config.")


def tokenizer_asset_dir(tokenizer):
    """A tokenizer's asset folder in a preset: `assets/<config file stem>`.

    Example:
    >>> import gpt2_lib
    >>> tokenizer_asset_dir(gpt2_lib.tokenizers.Tokenizer())
    'assets/tokenizer'
    """
    config_file = getattr(tokenizer, "config_file", TOKENIZER_CONFIG_FILE)
    stem = config_file.split(".")[0] if isinstance(config_file, str) else ""
    if not stem or "/" in config_file or "\\" in config_file or stem in ("..", "."):
        raise ValueError(
            f"Tokenizer config_file={config_file!r} is not a plain file name "
            "(like 'tokenizer.json'); its assets would not be inside "
            f"`{ASSET_DIR}/` of the preset directory. Refusing it."
        )
    return f"{ASSET_DIR}/{stem}"


def write_json(directory, filename, data):
    """Write `data` as indented JSON to `directory/filename`."""
    with open(os.path.join(directory, filename), "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=4))


def metadata_for(backbone):
    """The `metadata.json` KerasHub writes beside a backbone."""
    # The package is imported whenever this module is: no import needed.
    package = sys.modules.get(__name__.split(".")[0])
    return {
        "keras_version": keras.version(),
        "keras_hub_version": "0.32.0",
        "gpt2_lib_version": getattr(package, "__version__", None),
        "parameter_count": int(backbone.count_params()),
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        "tasks": ["CausalLM"],
    }
