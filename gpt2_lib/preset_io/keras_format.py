"""KerasHub's preset format: serialized configs and `model.weights.h5`.

Configs are `{"module", "class_name", "config", "registered_name"}` dicts.
We write KerasHub's names for the classes KerasHub has (so KerasHub loads
our presets) and, when loading, map both `keras_hub>X` and `gpt2_lib>X` to
our class `X`. Any other class is refused: a preset cannot make us import a
module.

Weights follow the layout Keras' `save_weights()` gives KerasHub's
`GPT2Backbone` (`layers/reversible_embedding/vars/0`, ...), read and written
variable by variable with `h5py`, so that no second full copy of the
weights is held in memory. Sharded weights use KerasHub's
`model.weights.json` index (`weight_map`: group path -> shard file(s)).
"""

import copy
import json
import math
import os

import h5py
import keras
import numpy as np

from gpt2_lib.preset_io.fast_init import initialize_variable, materialize
from gpt2_lib.preset_io.handles import preset_file

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
TOKENIZER_CONFIG_FILE = "tokenizer.json"
PREPROCESSOR_CONFIG_FILE = "preprocessor.json"
TASK_CONFIG_FILE = "task.json"
MODEL_WEIGHTS_FILE = "model.weights.h5"
TASK_WEIGHTS_FILE = "task.weights.h5"
SHARDED_WEIGHTS_INDEX_FILE = "model.weights.json"
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

_ALLOWED_PACKAGES = ("keras_hub", "gpt2_lib")


# ---------------------------------------------------------------------------
# Configs.


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


def lookup_class(registered_name, class_name=None, where="config"):
    """Our class for a serialized `registered_name` (`keras_hub>X`/`gpt2_lib>X`)."""
    if not isinstance(registered_name, str) or ">" not in registered_name:
        raise ValueError(
            f"The {where} names class {class_name!r} with registered_name="
            f"{registered_name!r}; expected 'keras_hub>ClassName' or "
            "'gpt2_lib>ClassName'. Is this a KerasHub preset?"
        )
    package, name = registered_name.split(">", 1)
    if package not in _ALLOWED_PACKAGES:
        raise ValueError(
            f"The {where} names class {registered_name!r} from package "
            f"{package!r}; gpt2_lib only loads its own classes and KerasHub's "
            f"equivalents ({', '.join(p + '>...' for p in _ALLOWED_PACKAGES)})."
        )
    cls = our_class(name)
    if cls is None:
        raise ValueError(
            f"The {where} names class {registered_name!r}, which gpt2_lib does "
            f"not provide. Load it with {package}, or pick a gpt2_lib class "
            "(e.g. GPT2Backbone, GPT2CausalLM)."
        )
    return cls


_MODEL_MODULES = (
    "gpt2_lib.models",
    "gpt2_lib.tokenizers",
    "gpt2_lib.models.gpt2.gpt2_backbone",
    "gpt2_lib.models.gpt2.gpt2_tokenizer",
    "gpt2_lib.models.gpt2.gpt2_preprocessor",
    "gpt2_lib.models.gpt2.gpt2_causal_lm_preprocessor",
    "gpt2_lib.models.gpt2.gpt2_causal_lm",
)


def our_class(name):
    """gpt2_lib's class registered as `gpt2_lib>name`, or None.

    Imports gpt2_lib's model modules first (a fixed list, never a module
    named by a preset), so every class is registered.
    """
    import importlib

    cls = keras.saving.get_registered_object(f"gpt2_lib>{name}")
    if cls is not None:
        return cls
    for module in _MODEL_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            continue
    return keras.saving.get_registered_object(f"gpt2_lib>{name}")


def to_gpt2_lib_names(config, where="config"):
    """Deep copy of `config` with every `keras_hub>X` object renamed `gpt2_lib>X`.

    Nested serialized objects (a tokenizer inside a preprocessor, a backbone
    inside a task) are checked too: only Keras' own objects (registered name
    None, module `keras...`) and gpt2_lib/KerasHub classes are allowed.
    """
    config = copy.deepcopy(config)

    def visit(node):
        if isinstance(node, dict):
            if "class_name" in node and "config" in node:
                registered = node.get("registered_name")
                module = node.get("module") or ""
                if registered is None:
                    if module and module.split(".")[0] != "keras":
                        raise ValueError(
                            f"The {where} refers to {node['class_name']!r} from "
                            f"module {module!r}; only Keras, KerasHub and "
                            "gpt2_lib objects can be loaded."
                        )
                else:
                    cls = lookup_class(registered, node.get("class_name"), where)
                    node["registered_name"] = f"gpt2_lib>{cls.__name__}"
                    node["module"] = cls.__module__
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    return config


def to_keras_hub_names(config):
    """Deep copy of a serialized config written with KerasHub's class names."""
    config = copy.deepcopy(config)

    def visit(node):
        if isinstance(node, dict):
            registered = node.get("registered_name")
            if "class_name" in node and isinstance(registered, str) and ">" in registered:
                name = registered.split(">", 1)[1]
                if name in KERAS_HUB_MODULES:
                    node["registered_name"] = f"keras_hub>{name}"
                    node["module"] = KERAS_HUB_MODULES[name]
                    inner = node.get("config")
                    for key, default in KERAS_HUB_UNKNOWN_KEYS.get(name, {}).items():
                        if isinstance(inner, dict) and key in inner:
                            if _same(inner[key], default):
                                del inner[key]
            for key in ("compile_config", "build_config"):
                node.pop(key, None)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    return config


def _same(value, default):
    if isinstance(default, float):
        try:
            return math.isclose(float(value), default, rel_tol=0, abs_tol=0)
        except (TypeError, ValueError):
            return False
    return value == default


def serialize(obj):
    """KerasHub-compatible `{module, class_name, config, registered_name}`."""
    config = obj.get_config()
    registered = keras.saving.get_registered_name(type(obj))
    serialized = {
        "module": type(obj).__module__,
        "class_name": type(obj).__name__,
        "config": config,
        "registered_name": registered,
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


def check_serialized(config, filename, preset_dir):
    """Check the top-level shape of a serialized object read from a file."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict) or (
        "registered_name" not in config or "class_name" not in config
    ):
        raise ValueError(
            f"`{filename}` in preset {preset_dir!r} is not a serialized Keras "
            "object (expected keys 'module', 'class_name', 'config', "
            f"'registered_name'); got keys {sorted(config) if isinstance(config, dict) else type(config).__name__}."
        )


def write_json(directory, filename, data):
    with open(os.path.join(directory, filename), "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=4))


def metadata_for(backbone):
    import datetime

    import gpt2_lib

    return {
        "keras_version": keras.version(),
        "keras_hub_version": "0.32.0",
        "gpt2_lib_version": gpt2_lib.__version__,
        "parameter_count": int(backbone.count_params()),
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        "tasks": ["CausalLM"],
    }


# ---------------------------------------------------------------------------
# Weights.


def backbone_weight_paths(backbone):
    """`[(h5 dataset path, variable)]` in KerasHub's layout for GPT2Backbone.

    Returns None for backbones without a known layout (they fall back to
    Keras' own `save_weights`/`load_weights`).
    """
    needed = ("transformer_layers", "position_embedding", "layer_norm")
    if not all(hasattr(backbone, name) for name in needed):
        return None
    pairs = [
        ("layers/reversible_embedding/vars/0", backbone.token_embedding.embeddings),
        ("layers/position_embedding/vars/0", backbone.position_embedding.embeddings),
    ]
    for i, block in enumerate(backbone.transformer_layers):
        prefix = "layers/transformer_decoder" + (f"_{i}" if i else "")
        attention = block._self_attention_layer
        sublayers = [
            ("_self_attention_layer/query_dense", attention.query_dense, ("kernel", "bias")),
            ("_self_attention_layer/key_dense", attention.key_dense, ("kernel", "bias")),
            ("_self_attention_layer/value_dense", attention.value_dense, ("kernel", "bias")),
            ("_self_attention_layer/output_dense", attention.output_dense, ("kernel", "bias")),
            ("_self_attention_layer_norm", block._self_attention_layer_norm, ("gamma", "beta")),
            ("_feedforward_intermediate_dense", block._feedforward_intermediate_dense, ("kernel", "bias")),
            ("_feedforward_output_dense", block._feedforward_output_dense, ("kernel", "bias")),
            ("_feedforward_layer_norm", block._feedforward_layer_norm, ("gamma", "beta")),
        ]
        for name, layer, attrs in sublayers:
            for j, attr in enumerate(attrs):
                pairs.append((f"{prefix}/{name}/vars/{j}", getattr(layer, attr)))
    pairs.append(("layers/layer_normalization/vars/0", backbone.layer_norm.gamma))
    pairs.append(("layers/layer_normalization/vars/1", backbone.layer_norm.beta))
    return pairs


def _group_of(dataset_path):
    return "/" + dataset_path.rsplit("/", 1)[0]


def _variable_nbytes(variable):
    return math.prod(variable.shape) * np.dtype(_numpy_dtype(variable.dtype)).itemsize


def _numpy_dtype(dtype):
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(dtype)


def save_backbone_weights(backbone, directory, max_shard_size=10):
    """Write `model.weights.h5` (or shards + `model.weights.json`) into `directory`.

    Args:
        backbone: the backbone.
        directory: an existing (temporary) directory.
        max_shard_size: int/float in GB, or None for a single file.
    """
    pairs = backbone_weight_paths(backbone)
    if pairs is None:
        total = sum(_variable_nbytes(v) for v in backbone.weights)
        if max_shard_size is not None and total / 1024**3 > max_shard_size:
            backbone.save_weights(
                os.path.join(directory, SHARDED_WEIGHTS_INDEX_FILE),
                max_shard_size=max_shard_size,
            )
        else:
            backbone.save_weights(os.path.join(directory, MODEL_WEIGHTS_FILE))
        return
    total = sum(_variable_nbytes(v) for _, v in pairs)
    if max_shard_size is not None and not (
        isinstance(max_shard_size, (int, float)) and max_shard_size > 0
    ):
        raise ValueError(
            f"`max_shard_size` must be a positive number of GB or None. "
            f"Received: max_shard_size={max_shard_size!r}."
        )
    if max_shard_size is None or total <= max_shard_size * 1024**3:
        _write_h5(os.path.join(directory, MODEL_WEIGHTS_FILE), backbone, pairs)
        return
    # Pack whole groups (a layer's vars) into shards in order.
    limit = max_shard_size * 1024**3
    shards, current, current_size = [], [], 0
    for path, variable in pairs:
        size = _variable_nbytes(variable)
        if size > limit:
            raise ValueError(
                f"Variable {path!r} is {size / 1024**2:.1f} MB, more than "
                f"max_shard_size={max_shard_size} GB. Increase `max_shard_size`."
            )
        if current and current_size + size > limit:
            shards.append(current)
            current, current_size = [], 0
        current.append((path, variable))
        current_size += size
    shards.append(current)
    weight_map = {}
    for index, shard in enumerate(shards):
        filename = f"model_{index:05d}.weights.h5"
        _write_h5(os.path.join(directory, filename), backbone, shard)
        for path, _ in shard:
            files = weight_map.setdefault(_group_of(path), [])
            if filename not in files:
                files.append(filename)
    index = {
        "metadata": {"total_size": float(total)},
        "weight_map": {
            group: files[0] if len(files) == 1 else files
            for group, files in weight_map.items()
        },
    }
    write_json(directory, SHARDED_WEIGHTS_INDEX_FILE, index)


def _write_h5(filepath, backbone, pairs):
    with h5py.File(filepath, "w") as f:
        f.create_group("vars").attrs["name"] = backbone.name
        for path, variable in pairs:
            group = f.require_group(path.rsplit("/", 1)[0])
            if "name" not in group.attrs:
                group.attrs["name"] = _layer_name_of(variable)
            value = keras.ops.convert_to_numpy(variable.value)
            dataset = group.create_dataset(path.rsplit("/", 1)[1], data=value)
            if keras.backend.standardize_dtype(value.dtype) == "bfloat16":
                dataset.attrs["dtype"] = "bfloat16"
            del value


def _layer_name_of(variable):
    path = getattr(variable, "path", "") or ""
    parts = path.split("/")
    return parts[-2] if len(parts) >= 2 else variable.name


def _memory_map(dataset, bfloat16=False):
    """A `np.memmap` of a contiguous, unfiltered dataset; else None.

    Mapping skips h5py's copy: the backend copies straight from the page
    cache into the variable. Offsets beyond the file's end raise ValueError.
    """
    if dataset.chunks is not None or dataset.compression or dataset.size == 0:
        return None
    offset = dataset.id.get_offset()
    if offset is None:
        return None
    if bfloat16:
        if dataset.dtype.itemsize != 2:
            return None
        import ml_dtypes

        dtype = np.dtype(ml_dtypes.bfloat16)
    elif dataset.dtype.kind == "f" and dataset.dtype.isnative:
        dtype = dataset.dtype
    else:
        return None
    path = dataset.file.filename
    if offset + dataset.size * dtype.itemsize > os.path.getsize(path):
        raise ValueError("the dataset extends past the end of the file")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=dataset.shape)


class WeightsReader:
    """Read datasets from `model.weights.h5` or its shards, safely.

    Links, external and virtual datasets are refused (they could read
    other files), as Keras does.
    """

    def __init__(self, preset_dir):
        self.preset_dir = preset_dir
        self._files = {}
        single = preset_file(preset_dir, MODEL_WEIGHTS_FILE, required=False)
        if single is not None:
            self._locations = None
            self._default = MODEL_WEIGHTS_FILE
            return
        index_path = preset_file(preset_dir, SHARDED_WEIGHTS_INDEX_FILE, required=False)
        if index_path is None:
            raise FileNotFoundError(
                f"Preset {preset_dir!r} has no weights: neither "
                f"`{MODEL_WEIGHTS_FILE}` nor `{SHARDED_WEIGHTS_INDEX_FILE}`. "
                "Pass `load_weights=False` to build the architecture only."
            )
        index = read_json(preset_dir, SHARDED_WEIGHTS_INDEX_FILE)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise ValueError(
                f"`{SHARDED_WEIGHTS_INDEX_FILE}` in {preset_dir!r} has no "
                "'weight_map'; the index is corrupt."
            )
        self._locations = {
            group.strip("/"): files if isinstance(files, list) else [files]
            for group, files in weight_map.items()
        }
        self._default = None

    def _open(self, filename):
        if filename not in self._files:
            path = preset_file(self.preset_dir, filename)
            try:
                self._files[filename] = h5py.File(path, "r")
            except OSError as e:
                raise ValueError(
                    f"Could not read weights file `{filename}` in preset "
                    f"{self.preset_dir!r}: {e}. The file is corrupt or truncated; "
                    "re-download or re-save the preset."
                ) from None
        return self._files[filename]

    def _candidates(self, dataset_path):
        if self._locations is None:
            return [self._default]
        group = dataset_path.rsplit("/", 1)[0]
        return self._locations.get(group, [])

    def dataset(self, dataset_path):
        """The `h5py.Dataset` at `dataset_path`, or a ValueError naming it."""
        files = self._candidates(dataset_path)
        for filename in files:
            f = self._open(filename)
            group_path, name = dataset_path.rsplit("/", 1)
            group = f.get(group_path)
            if group is None or name not in group:
                continue
            link = group.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise ValueError(
                    f"Variable {dataset_path!r} in `{filename}` is a "
                    f"{type(link).__name__}; links are not allowed in weights files."
                )
            dataset = group[name]
            if not isinstance(dataset, h5py.Dataset) or dataset.external or dataset.is_virtual:
                raise ValueError(
                    f"Variable {dataset_path!r} in `{filename}` is not a plain "
                    "dataset (external or virtual datasets are not allowed)."
                )
            return filename, dataset
        where = f"`{files[0]}`" if len(files) == 1 else (files or "any shard")
        raise ValueError(
            f"Weights file {where} of preset {self.preset_dir!r} has no variable "
            f"{dataset_path!r}. The file is truncated or was saved from a "
            "different architecture."
        )

    @staticmethod
    def read(dataset):
        """The dataset's values: a read-only memory map where the layout allows."""
        bfloat16 = dataset.attrs.get("dtype") == "bfloat16"
        mapped = _memory_map(dataset, bfloat16)
        if mapped is not None:
            return mapped
        if bfloat16:
            import ml_dtypes

            return np.array(dataset, dtype=ml_dtypes.bfloat16)
        return dataset[()]

    def close(self):
        for f in self._files.values():
            f.close()
        self._files = {}


def load_backbone_weights(backbone, preset_dir):
    """Assign the preset's weights to `backbone`, checking everything first.

    Every dataset is located and its shape checked before any variable is
    assigned; then variables are read and assigned one at a time.
    """
    pairs = backbone_weight_paths(backbone)
    if pairs is None:
        materialize(backbone.variables)
        if preset_file(preset_dir, MODEL_WEIGHTS_FILE, required=False):
            backbone.load_weights(preset_file(preset_dir, MODEL_WEIGHTS_FILE))
        else:
            backbone.load_weights(preset_file(preset_dir, SHARDED_WEIGHTS_INDEX_FILE))
        return
    reader = WeightsReader(preset_dir)
    try:
        plan = []
        for path, variable in pairs:
            filename, dataset = reader.dataset(path)
            if tuple(dataset.shape) != tuple(variable.shape):
                raise ValueError(
                    f"Shape mismatch for variable {path!r} in `{filename}` of "
                    f"preset {preset_dir!r}: the file has {tuple(dataset.shape)}, "
                    f"the model expects {tuple(variable.shape)} ({variable.path}). "
                    "Does config.json match the weights?"
                )
            if dataset.dtype.kind not in "fV" and dataset.attrs.get("dtype") != "bfloat16":
                raise ValueError(
                    f"Variable {path!r} in `{filename}` has dtype {dataset.dtype}; "
                    "expected floating point weights."
                )
            plan.append((path, filename, dataset, variable))
        # Largest first: while few variables exist, a value and its copy
        # fit beside them (peak memory stays near 1x the weights).
        plan.sort(key=lambda item: -item[2].size)
        for path, filename, dataset, variable in plan:
            try:
                value = reader.read(dataset)
            except (OSError, ValueError) as e:
                raise ValueError(
                    f"Could not read variable {path!r} from `{filename}` of "
                    f"preset {preset_dir!r}: {e}. The file is corrupt or truncated."
                ) from None
            initialize_variable(variable, value)
            del value
    finally:
        reader.close()
