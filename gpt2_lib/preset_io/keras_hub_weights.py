"""KerasHub's weights files: `model.weights.h5`, or shards + `model.weights.json`.

KerasHub saves a backbone with Keras' `save_weights()`: one h5 group per
layer, named after KerasHub's attribute path
(`layers/transformer_decoder_1/_self_attention_layer/query_dense/vars`),
holding the layer's variables as `vars/0`, `vars/1`, ... in the order
`save_own_variables()` writes them. Here the groups come from a table, role
-> KerasHub path (`KERAS_HUB_LAYERS`, `BLOCK_LAYERS`), and the indices from
`layer_variables()`, so quantized layers (an int8 kernel, its bias and
`kernel_scale`) have KerasHub's layout with no special case.

Reads and writes go variable by variable with `h5py`: nothing holds a
second full copy of the weights, and contiguous datasets are memory-mapped.
Loads check every dataset (present, plain, shape, dtype) before assigning
any variable. Sharded weights use KerasHub's `model.weights.json` index
(`weight_map`: group path -> shard file(s)).

Example:
>>> import gpt2_lib
>>> backbone = gpt2_lib.models.GPT2Backbone(
...     vocabulary_size=10, num_layers=2, num_heads=2, hidden_dim=4,
...     intermediate_dim=8, max_sequence_length=6,
... )
>>> [path for path, _ in weight_paths(backbone)][4:6]
['layers/transformer_decoder/_self_attention_layer/query_dense/vars/0', 'layers/transformer_decoder/_self_attention_layer/query_dense/vars/1']
"""

import contextlib
import math
import os

import h5py
import keras
import numpy as np

from gpt2_lib.preset_io.fast_init import initialize_variable
from gpt2_lib.preset_io.fast_init import materialize
from gpt2_lib.preset_io.handles import preset_file
from gpt2_lib.preset_io.keras_hub_config import read_json
from gpt2_lib.preset_io.keras_hub_config import write_json
from gpt2_lib.preset_io.weight_table import dtype_fits
from gpt2_lib.preset_io.weight_table import has_weight_table
from gpt2_lib.preset_io.weight_table import table_entries
from gpt2_lib.utils import distribution
from gpt2_lib.utils.layer_variables import layer_variables

MODEL_WEIGHTS_FILE = "model.weights.h5"
TASK_WEIGHTS_FILE = "task.weights.h5"
SHARDED_WEIGHTS_INDEX_FILE = "model.weights.json"
SHARD_PATTERN = "model_*.weights.h5"
WEIGHT_FILES = (MODEL_WEIGHTS_FILE, SHARDED_WEIGHTS_INDEX_FILE, SHARD_PATTERN)

# Weight table role -> KerasHub's h5 group, outside the blocks.
KERAS_HUB_LAYERS = {
    "token_embedding": "layers/reversible_embedding",
    "position_embedding": "layers/position_embedding",
    "layer_norm": "layers/layer_normalization",
}
# Block `i` is `layers/transformer_decoder` (i = 0) or `..._{i}`; role -> group in it.
BLOCK_GROUP = "layers/transformer_decoder"
BLOCK_LAYERS = {
    "self_attention_layer_norm": "_self_attention_layer_norm",
    "self_attention/query": "_self_attention_layer/query_dense",
    "self_attention/key": "_self_attention_layer/key_dense",
    "self_attention/value": "_self_attention_layer/value_dense",
    "self_attention/attention_output": "_self_attention_layer/output_dense",
    "feedforward_layer_norm": "_feedforward_layer_norm",
    "feedforward_intermediate_dense": "_feedforward_intermediate_dense",
    "feedforward_output_dense": "_feedforward_output_dense",
}


def layer_group(entry):
    """KerasHub's h5 group for a weight table entry."""
    try:
        if entry.block is None:
            return KERAS_HUB_LAYERS[entry.role]
        prefix = BLOCK_GROUP + (f"_{entry.block}" if entry.block else "")
        return f"{prefix}/{BLOCK_LAYERS[entry.role]}"
    except KeyError:
        raise ValueError(
            f"The weight table entry {entry.path!r} has role {entry.role!r}, which "
            "has no place in KerasHub's GPT-2 layout (known roles: "
            f"{sorted(KERAS_HUB_LAYERS) + sorted(BLOCK_LAYERS)})."
        ) from None


def weight_paths(backbone):
    """`[(h5 dataset path, variable)]` in KerasHub's layout, or None.

    None for a backbone without `weight_table()` (Keras' own
    `save_weights`/`load_weights` layout is used for it).
    """
    if not has_weight_table(backbone):
        return None
    return [
        (f"{layer_group(entry)}/vars/{index}", variable)
        for entry in table_entries(backbone)
        for index, (_, variable) in enumerate(layer_variables(entry.layer))
    ]


def _group_of(dataset_path):
    return "/" + dataset_path.rsplit("/", 1)[0]


def _numpy_dtype(dtype):
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def _variable_nbytes(variable):
    return math.prod(variable.shape) * _numpy_dtype(variable.dtype).itemsize


def _check_shard_size(max_shard_size):
    if max_shard_size is not None and (
        isinstance(max_shard_size, bool)
        or not isinstance(max_shard_size, (int, float))
        or not max_shard_size > 0
    ):
        raise ValueError(
            f"`max_shard_size` must be a positive number of GB or None. "
            f"Received: max_shard_size={max_shard_size!r}."
        )


def save_backbone_weights(backbone, directory, max_shard_size=10):
    """Write `model.weights.h5` (or shards + `model.weights.json`) into `directory`.

    Args:
        backbone: the backbone.
        directory: an existing (temporary) directory.
        max_shard_size: int/float in GB, or None for a single file.
    """
    _check_shard_size(max_shard_size)
    pairs = weight_paths(backbone)
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
    if max_shard_size is None or total <= max_shard_size * 1024**3:
        _write_h5(os.path.join(directory, MODEL_WEIGHTS_FILE), backbone, pairs)
        return
    # Pack whole variables into shards in order.
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
    """Write `pairs` to `filepath`, one variable in memory at a time.

    A variable sharded over devices (or processes) is gathered first; with
    several processes every process gathers (a collective) and only the
    writer (`gpt2_lib.utils.distribution.is_writer()`) opens the file.
    """
    writer = distribution.is_writer()
    with h5py.File(filepath, "w") if writer else contextlib.nullcontext() as f:
        if writer:
            f.create_group("vars").attrs["name"] = backbone.name
        for path, variable in pairs:
            value = distribution.gather(variable)
            if not writer:
                continue
            group = f.require_group(path.rsplit("/", 1)[0])
            if "name" not in group.attrs:
                group.attrs["name"] = _layer_name_of(variable)
            dataset = group.create_dataset(path.rsplit("/", 1)[1], data=value)
            if keras.backend.standardize_dtype(value.dtype) == "bfloat16":
                dataset.attrs["dtype"] = "bfloat16"
            del value


def _layer_name_of(variable):
    parts = (getattr(variable, "path", "") or "").split("/")
    return parts[-2] if len(parts) >= 2 else variable.name


def _stored_dtype(dataset):
    """The dataset's NumPy dtype (bfloat16 is stored as 2 opaque bytes + an attribute)."""
    if dataset.attrs.get("dtype") == "bfloat16" and dataset.dtype.itemsize == 2:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return dataset.dtype


def _memory_map(dataset):
    """A `np.memmap` of a contiguous, unfiltered dataset; else None.

    Mapping skips h5py's copy: the backend copies straight from the page
    cache into the variable. Offsets beyond the file's end raise ValueError.
    """
    if dataset.chunks is not None or dataset.compression or dataset.size == 0:
        return None
    offset = dataset.id.get_offset()
    dtype = _stored_dtype(dataset)
    if offset is None or not (dtype.kind in "fiuV" and dtype.isnative):
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
        if preset_file(preset_dir, MODEL_WEIGHTS_FILE, required=False) is not None:
            self._locations = None
            return
        if preset_file(preset_dir, SHARDED_WEIGHTS_INDEX_FILE, required=False) is None:
            raise FileNotFoundError(
                f"Preset {preset_dir!r} has no weights: neither "
                f"`{MODEL_WEIGHTS_FILE}` nor `{SHARDED_WEIGHTS_INDEX_FILE}`. "
                "Pass `load_weights=False` to build the architecture only."
            )
        index = read_json(preset_dir, SHARDED_WEIGHTS_INDEX_FILE)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(files, str)
            or (isinstance(files, list) and all(isinstance(f, str) for f in files))
            for files in weight_map.values()
        ):
            raise ValueError(
                f"`{SHARDED_WEIGHTS_INDEX_FILE}` in {preset_dir!r} has no valid "
                "'weight_map' (group path -> shard file name or list of names); "
                "the index is corrupt. Re-download or re-save the preset."
            )
        self._locations = {
            group.strip("/"): files if isinstance(files, list) else [files]
            for group, files in weight_map.items()
        }

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
            return [MODEL_WEIGHTS_FILE]
        return self._locations.get(dataset_path.rsplit("/", 1)[0], [])

    def dataset(self, dataset_path):
        """`(file name, h5py.Dataset)` at `dataset_path`, or a ValueError naming it."""
        files = self._candidates(dataset_path)
        for filename in files:
            group_path, name = dataset_path.rsplit("/", 1)
            group = self._open(filename).get(group_path)
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
        mapped = _memory_map(dataset)
        if mapped is not None:
            return mapped
        return np.asarray(dataset[()]).view(_stored_dtype(dataset))

    def close(self):
        for f in self._files.values():
            f.close()
        self._files = {}


def load_backbone_weights(backbone, preset_dir):
    """Assign the preset's weights to `backbone`, checking everything first.

    Every dataset is located and its shape and dtype checked before any
    variable is assigned; then variables are read and assigned one at a time.
    """
    pairs = weight_paths(backbone)
    if pairs is None:
        materialize(backbone.variables)
        single = preset_file(preset_dir, MODEL_WEIGHTS_FILE, required=False)
        backbone.load_weights(single or preset_file(preset_dir, SHARDED_WEIGHTS_INDEX_FILE))
        return
    reader = WeightsReader(preset_dir)
    try:
        plan = []
        for path, variable in pairs:
            filename, dataset = reader.dataset(path)
            where = f"variable {path!r} in `{filename}` of preset {preset_dir!r}"
            if tuple(dataset.shape) != tuple(variable.shape):
                raise ValueError(
                    f"Shape mismatch for {where}: the file has "
                    f"{tuple(dataset.shape)}, the model expects "
                    f"{tuple(variable.shape)} ({variable.path}). Does config.json "
                    "match the weights?"
                )
            stored = _stored_dtype(dataset)
            opaque = stored.kind == "V" and stored.name != "bfloat16"
            if opaque or not dtype_fits(stored, variable):
                raise ValueError(
                    f"The {where} has dtype {stored}, but the model's "
                    f"{variable.path} is {variable.dtype}: integer data loads only "
                    "into integer (quantized) variables of the same dtype, float "
                    "data only into float variables. Was the preset saved from a "
                    "differently quantized model? Does config.json match?"
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


# ---------------------------------------------------------------------------
# A task's own weights (a head outside the backbone): Keras' layout, as KerasHub.


def _backbone_layers(task):
    return list(task.backbone._flatten_layers())


def has_task_weights(task):
    """Whether `task` has weights outside its backbone (GPT2CausalLM has none)."""
    backbone_ids = {id(w) for w in task.backbone.weights}
    return any(id(w) not in backbone_ids for w in task.weights)


def save_task_weights(task, directory):
    """Write `task.weights.h5` (the weights outside the backbone), if any."""
    if has_task_weights(task):
        keras.saving.save_weights(
            task,
            os.path.join(directory, TASK_WEIGHTS_FILE),
            objects_to_skip=_backbone_layers(task),
        )


def load_task_weights(task, preset_dir):
    """Load `task.weights.h5` into the weights outside the backbone, if any."""
    if has_task_weights(task):
        keras.saving.load_weights(
            task,
            preset_file(preset_dir, TASK_WEIGHTS_FILE),
            objects_to_skip=_backbone_layers(task),
        )
