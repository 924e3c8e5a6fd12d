"""The `.lora.h5` adapter file: save and load a backbone's LoRA adapters.

The file holds attributes `rank`, `alpha`, `target_layer_names` and
`target_layer_paths` (JSON), the backbone class and size, and for each
target a group `adapters/<layer path>` with datasets `lora_kernel_a` and
`lora_kernel_b`. Layer paths come from the backbone's names (the same paths
as its weight table), so a file applies to any backbone of the same
architecture whatever the order its layers were built in. Writes are atomic;
loading reads and checks the whole file before anything changes.

Typical use goes through `Backbone.save_lora_weights` / `load_lora_weights`.
"""

import json
import os

import h5py
import numpy as np

from gpt2_lib.models.lora import _add_adapters
from gpt2_lib.models.lora import _check_can_adapt
from gpt2_lib.models.lora import _remove_adapters
from gpt2_lib.models.lora import lora_config
from gpt2_lib.models.lora import lora_enabled
from gpt2_lib.models.lora import lora_kernel_shape
from gpt2_lib.models.lora import resolve_target_layers
from gpt2_lib.utils.atomic import atomic_file
from gpt2_lib.utils.distribution import all_agree
from gpt2_lib.utils.distribution import gather
from gpt2_lib.utils.distribution import is_writer

LORA_FILE_SUFFIX = ".lora.h5"
FORMAT_NAME = "gpt2_lib.lora"
FORMAT_VERSION = 1

# Config keys worth naming when a file comes from a differently sized model.
_SIZE_KEYS = (
    "vocabulary_size",
    "num_layers",
    "num_heads",
    "hidden_dim",
    "intermediate_dim",
    "max_sequence_length",
)


def _check_lora_filepath(filepath):
    if not isinstance(filepath, (str, os.PathLike)):
        raise TypeError(
            f"`filepath` must be a string or path. Received: {type(filepath).__name__}."
        )
    filepath = os.fspath(filepath)
    if not filepath.endswith(LORA_FILE_SUFFIX):
        raise ValueError(
            f"The LoRA file name must end in {LORA_FILE_SUFFIX!r}. Received: "
            f"{filepath!r}; use e.g. "
            f"{os.path.splitext(filepath)[0].removesuffix('.lora') + LORA_FILE_SUFFIX!r}."
        )
    return filepath


def _size_config(backbone):
    config = backbone.get_config()
    return {key: config[key] for key in _SIZE_KEYS if key in config}


def save_lora_weights(backbone, filepath):
    """Write the adapters, rank, alpha and targets to a `.lora.h5` file.

    The file holds attributes `rank`, `alpha`, `target_layer_names` and
    `target_layer_paths` (JSON), the backbone class and size, and for each
    target a group `adapters/<layer path>` with datasets `lora_kernel_a` and
    `lora_kernel_b`. It is written to a temporary file and renamed into
    place, so a failed save never leaves a partial file.

    Args:
        backbone: a backbone with LoRA enabled.
        filepath: str or path ending in `.lora.h5`.
    """
    filepath = _check_lora_filepath(filepath)
    if not lora_enabled(backbone):
        raise ValueError(
            f"LoRA is not enabled on {backbone.name}; there are no adapters to "
            "save. Call `enable_lora(rank)` and train first, or save the whole "
            "model with `save_to_preset`."
        )
    directory = os.path.dirname(os.path.abspath(filepath))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Directory {directory!r} does not exist; create it before saving "
            f"{filepath!r}."
        )
    state = backbone._lora_state
    # Sharded adapters are gathered by every process (a collective); process 0
    # writes, and every process returns once the file is complete.
    arrays = {
        path: (gather(layer.lora_kernel_a), gather(layer.lora_kernel_b))
        for path, layer in state.layers.items()
    }
    error = None
    if is_writer():
        try:
            _write_lora_file(backbone, filepath, state, arrays)
        except BaseException as e:  # the other processes must learn of it
            error = e
    if not all_agree(error is None):
        if error is not None:
            raise error
        raise RuntimeError(f"Process 0 could not write {filepath!r} (see its error).")


def _write_lora_file(backbone, filepath, state, arrays):
    with atomic_file(filepath, suffix=LORA_FILE_SUFFIX) as tmp_path:
        with h5py.File(tmp_path, "w") as f:
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["rank"] = state.rank
            f.attrs["alpha"] = state.alpha
            f.attrs["target_layer_names"] = json.dumps(state.target_layer_names)
            f.attrs["target_layer_paths"] = json.dumps(list(state.layers))
            f.attrs["backbone_class"] = type(backbone).__name__
            f.attrs["backbone_config"] = json.dumps(_size_config(backbone))
            adapters = f.create_group("adapters")
            for path, (kernel_a, kernel_b) in arrays.items():
                group = adapters.create_group(path)
                group["lora_kernel_a"] = kernel_a
                group["lora_kernel_b"] = kernel_b


def _read_lora_file(filepath):
    """Read and check the structure of a `.lora.h5` file into NumPy."""
    if not os.path.isfile(filepath):
        raise FileNotFoundError(f"LoRA file {filepath!r} does not exist.")
    try:
        f = h5py.File(filepath, "r")
    except OSError as e:
        raise ValueError(f"{filepath!r} is not a readable HDF5 file: {e}") from e
    with f:
        if f.attrs.get("format") != FORMAT_NAME:
            raise ValueError(
                f"{filepath!r} is not a gpt2_lib LoRA file (no "
                f"format={FORMAT_NAME!r} attribute); write one with "
                "`backbone.save_lora_weights(path)`."
            )
        version = int(f.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{filepath!r} has LoRA file format version {version}; this "
                f"gpt2_lib reads version {FORMAT_VERSION}."
            )
        try:
            info = {
                "rank": int(f.attrs["rank"]),
                "alpha": float(f.attrs["alpha"]),
                "target_layer_names": json.loads(f.attrs["target_layer_names"]),
                "target_layer_paths": json.loads(f.attrs["target_layer_paths"]),
                "backbone_class": str(f.attrs["backbone_class"]),
                "backbone_config": json.loads(f.attrs["backbone_config"]),
            }
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{filepath!r} has missing or malformed LoRA attributes: {e}") from e
        arrays = {}
        for path in info["target_layer_paths"]:
            if path not in f.get("adapters", {}):
                raise ValueError(f"{filepath!r} lists target {path!r} but has no adapters for it.")
            group = f["adapters"][path]
            pair = []
            for key in ("lora_kernel_a", "lora_kernel_b"):
                if key not in group or not isinstance(group[key], h5py.Dataset):
                    raise ValueError(f"{filepath!r} has no {key} for {path!r}.")
                dataset = group[key]
                if dataset.dtype.kind != "f":
                    raise ValueError(
                        f"{filepath!r}: {path}/{key} has dtype {dataset.dtype}; "
                        "expected floats."
                    )
                pair.append(np.asarray(dataset[()], dtype="float32"))
            arrays[path] = tuple(pair)
    return info, arrays


def _size_mismatch_hint(backbone, info):
    ours = _size_config(backbone)
    theirs = info["backbone_config"]
    diffs = [
        f"{key}={theirs[key]} (this backbone: {ours[key]})"
        for key in _SIZE_KEYS
        if key in ours and key in theirs and ours[key] != theirs[key]
    ]
    if not diffs:
        return ""
    return (
        f" The file was saved from a {info['backbone_class']} of another size: "
        + ", ".join(diffs)
        + "."
    )


def load_lora_weights(backbone, filepath):
    """Load adapters written by `save_lora_weights`.

    On a backbone without LoRA this enables LoRA with the file's rank, alpha
    and targets; on a backbone with LoRA the file's rank, alpha and targets
    must match. The file is read and checked completely before anything
    changes, so an error (wrong rank, targets or shapes, a backbone of
    another size) leaves the backbone as it was.

    Args:
        backbone: a `Backbone` with the same base architecture as the one
            the adapters were trained on.
        filepath: str or path ending in `.lora.h5`.

    Example:
    ```python
    backbone = gpt2_lib.models.GPT2Backbone.from_preset("gpt2_base_en")
    backbone.load_lora_weights("shakespeare.lora.h5")
    ```
    """
    filepath = _check_lora_filepath(filepath)
    info, arrays = _read_lora_file(filepath)
    hint = _size_mismatch_hint(backbone, info)
    file_paths = list(info["target_layer_paths"])

    if lora_enabled(backbone):
        config = lora_config(backbone)
        for key in ("rank", "alpha"):
            if config[key] != info[key]:
                raise ValueError(
                    f"{filepath!r} has LoRA {key}={info[key]:g} but this backbone "
                    f"has {key}={config[key]:g}. Load it into a backbone without "
                    "LoRA (it enables LoRA with the file's settings), or call "
                    "`merge_lora_weights()` first." + hint
                )
        layers = backbone._lora_state.layers
        if sorted(layers) != sorted(file_paths):
            raise ValueError(_targets_mismatch(filepath, file_paths, list(layers)) + hint)
    else:
        try:
            layers = resolve_target_layers(backbone, info["target_layer_names"])
        except ValueError as e:
            raise ValueError(f"Cannot apply {filepath!r}: {e}{hint}") from e
        if sorted(layers) != sorted(file_paths):
            raise ValueError(_targets_mismatch(filepath, file_paths, list(layers)) + hint)
        _check_can_adapt(backbone, layers)

    for path, layer in layers.items():
        if getattr(layer, "lora_enabled", False):
            expected = (tuple(layer.lora_kernel_a.shape), tuple(layer.lora_kernel_b.shape))
        else:
            kernel_shape = lora_kernel_shape(layer)
            expected = (kernel_shape[:-1] + (info["rank"],), (info["rank"], kernel_shape[-1]))
        actual = tuple(array.shape for array in arrays[path])
        if actual != expected:
            raise ValueError(
                f"{filepath!r}: adapter shapes for {path!r} are {actual}, this "
                f"backbone needs {expected}." + hint
            )

    enabled_here = not lora_enabled(backbone)
    if enabled_here:
        _add_adapters(
            backbone, layers, info["rank"], info["alpha"], info["target_layer_names"]
        )
    try:
        for path, layer in layers.items():
            layer.lora_kernel_a.assign(arrays[path][0])
            layer.lora_kernel_b.assign(arrays[path][1])
    except BaseException:
        if enabled_here:
            _remove_adapters(backbone)
        raise


def _targets_mismatch(filepath, file_paths, model_paths):
    missing = sorted(set(file_paths) - set(model_paths))
    extra = sorted(set(model_paths) - set(file_paths))
    return (
        f"{filepath!r} adapts {len(file_paths)} layers but this backbone's "
        f"targets are {len(model_paths)} layers. In the file only: "
        f"{missing[:4]}{' ...' if len(missing) > 4 else ''}; in the backbone "
        f"only: {extra[:4]}{' ...' if len(extra) > 4 else ''}."
    )
