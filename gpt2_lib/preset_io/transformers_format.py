"""Hugging Face Transformers' GPT-2 format: `config.json` and safetensors weights.

Config: every field of a Transformers GPT-2 `config.json` that changes the
computation is read (`backbone_config_from_transformers`); a value gpt2_lib
cannot honour, a `null` or wrong-typed field is an error naming the file,
the field and the fix, and fields gpt2_lib does not know are named in a
warning.

Weights: a table maps each weight table role and variable to its
Transformers tensor (`TENSORS`). Transformers stores attention as one
`c_attn` Conv1D of shape `(hidden, 3 * hidden)` (input-major, like a Keras
kernel) holding query, key and value side by side: `part` picks the third,
and every tensor is reshaped between the variable's shape and
Transformers' 2D/1D shape. Checkpoints are read as memory maps of the
safetensors files (`SafetensorsReader`, bfloat16 included); pickle
checkpoints (`pytorch_model.bin`, ...) are refused, they can run code.

Example:
>>> config = backbone_config_from_transformers(
...     {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256}
... )
>>> config["max_sequence_length"], config["intermediate_dim"]
(256, 256)
"""

import json
import math
import os
import warnings

import keras
import numpy as np

from gpt2_lib.preset_io.fast_init import initialize_variable
from gpt2_lib.preset_io.handles import preset_file
from gpt2_lib.preset_io.weight_table import dtype_fits
from gpt2_lib.preset_io.weight_table import table_variables
from gpt2_lib.utils import distribution
from gpt2_lib.utils.validation import is_integer

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt", "tf_model.h5", "flax_model.msgpack")
# Files of a checkpoint directory that describe the model (an export replaces them).
CHECKPOINT_FILES = (
    CONFIG_FILE, "generation_config.json", SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE,
    "model-*.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
)

# ---------------------------------------------------------------------------
# Config.

_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
# Fields that must keep these values (anything else computes differently).
_FIXED = {
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "reorder_and_upcast_attn": (False,),
    "add_cross_attention": (False,),
    "tie_word_embeddings": (True,),
    "is_encoder_decoder": (False,),
}
# field: (GPT2Backbone argument, Transformers' default, kind).
_FIELDS = {
    "vocab_size": ("vocabulary_size", 50257, "int"),
    "n_layer": ("num_layers", 12, "int"),
    "n_head": ("num_heads", 12, "int"),
    "n_embd": ("hidden_dim", 768, "int"),
    "n_positions": ("max_sequence_length", 1024, "int"),
    "layer_norm_epsilon": ("layer_norm_epsilon", 1e-5, "float"),
}
_DROPOUTS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")
# Fields known not to change the backbone's computation.
_IGNORED = {
    "_name_or_path", "architectures", "bos_token_id", "eos_token_id", "pad_token_id",
    "sep_token_id", "decoder_start_token_id", "initializer_range", "summary_type",
    "summary_use_proj", "summary_activation", "summary_proj_to_labels",
    "summary_first_dropout", "task_specific_params", "transformers_version", "dtype",
    "torch_dtype", "use_cache", "return_dict", "output_attentions", "output_hidden_states",
    "output_past", "id2label", "label2id", "_num_labels", "num_labels", "problem_type",
    "chunk_size_feed_forward", "is_decoder", "cross_attention_hidden_size",
    "tie_encoder_decoder", "finetuning_task", "tokenizer_class", "prefix", "max_length",
    "gradient_checkpointing", "_attn_implementation", "attn_implementation",
    "pruned_heads", "torchscript", "n_ctx", "n_inner", "model_type", "activation_function",
}


def _field(hf_config, field, default, kind, where):
    value = hf_config.get(field, default)
    ok = is_integer(value) and value > 0 if kind == "int" else (
        (is_integer(value) or isinstance(value, float)) and math.isfinite(value) and value >= 0
    )
    if not ok:
        expected = "a positive integer" if kind == "int" else "a non-negative number"
        raise ValueError(
            f"{where} has {field}={json.dumps(value)}; `{field}` must be {expected} "
            f"(Transformers' default is {default}). Fix the field, or remove it to "
            "use the default."
        )
    return int(value) if kind == "int" else float(value)


def backbone_config_from_transformers(hf_config, overrides=None, where=None):
    """GPT2Backbone kwargs from a Transformers `config.json` dict.

    Args:
        hf_config: dict, a Transformers GPT-2 `config.json`.
        overrides: dict of GPT2Backbone kwargs the caller sets itself (e.g.
            `dropout`); the fields they replace are not checked.
        where: the file, for error messages (e.g. "`config.json` of preset X").

    Returns:
        A dict of `GPT2Backbone` arguments.
    """
    overrides = overrides or {}
    where = where or f"The Transformers `{CONFIG_FILE}`"
    if not isinstance(hf_config, dict):
        raise ValueError(f"{where} is not a JSON object; got {type(hf_config).__name__}.")
    model_type = hf_config.get("model_type")
    if model_type != "gpt2":
        raise ValueError(
            f"{where}: expected a Transformers config with model_type 'gpt2'; got "
            f"model_type={model_type!r}."
        )
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"{where}: activation_function={activation!r} is not supported; "
            f"GPT2Backbone uses the tanh approximation of GELU ({' or '.join(_ACTIVATIONS)})."
        )
    for field, allowed in _FIXED.items():
        if field in hf_config and hf_config[field] not in allowed:
            raise ValueError(
                f"{where}: Transformers config {field}={hf_config[field]!r} is not "
                f"supported (only {allowed[0]!r})."
            )
    config = {}
    for field, (argument, default, kind) in _FIELDS.items():
        if argument not in overrides:
            config[argument] = _field(hf_config, field, default, kind, where)
    n_inner = hf_config.get("n_inner")
    if "intermediate_dim" not in overrides:
        hidden = config.get("hidden_dim", overrides.get("hidden_dim"))
        config["intermediate_dim"] = (
            4 * hidden if n_inner is None else _field(hf_config, "n_inner", None, "int", where)
        )
    n_ctx = hf_config.get("n_ctx")
    positions = config.get("max_sequence_length")
    if n_ctx is not None and positions is not None and n_ctx != positions:
        raise ValueError(
            f"{where} has n_ctx={n_ctx!r} != n_positions={positions}; GPT2Backbone "
            "has a single max_sequence_length. Make them equal."
        )
    if "dropout" not in overrides:
        rates = {_field(hf_config, key, 0.1, "float", where) for key in _DROPOUTS}
        if len(rates) > 1:
            raise ValueError(
                f"GPT2Backbone has one dropout rate, but {where} has "
                + ", ".join(f"{key}={hf_config.get(key, 0.1)}" for key in _DROPOUTS)
                + ". Pass `dropout=...` to choose one."
            )
        config["dropout"] = rates.pop()
    unknown = sorted(set(hf_config) - set(_FIELDS) - set(_FIXED) - set(_DROPOUTS) - _IGNORED)
    if unknown:
        warnings.warn(
            f"{where} has fields {unknown} that gpt2_lib does not read; they were "
            "ignored. If one of them changes the model, its outputs will differ "
            "from Transformers'.",
            stacklevel=2,
        )
    return config


def transformers_config_from_backbone(backbone):
    """A Transformers `config.json` dict (GPT2LMHeadModel) for `backbone`."""
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": backbone.vocabulary_size,
        "n_layer": backbone.num_layers,
        "n_head": backbone.num_heads,
        "n_embd": backbone.hidden_dim,
        "n_inner": backbone.intermediate_dim,
        "n_positions": backbone.max_sequence_length,
        "n_ctx": backbone.max_sequence_length,
        "layer_norm_epsilon": backbone.layer_norm_epsilon,
        "activation_function": "gelu_new",
        "resid_pdrop": backbone.dropout,
        "embd_pdrop": backbone.dropout,
        "attn_pdrop": backbone.dropout,
        "bos_token_id": backbone.vocabulary_size - 1,
        "eos_token_id": backbone.vocabulary_size - 1,
        "tie_word_embeddings": True,
    }


# ---------------------------------------------------------------------------
# Weight names.


def _same(shape):
    return tuple(shape)


def _input_major(shape):  # (hidden, heads, head_dim) -> (hidden, heads * head_dim)
    return (shape[0], math.prod(shape[1:]))


def _output_major(shape):  # (heads, head_dim, hidden) -> (heads * head_dim, hidden)
    return (math.prod(shape[:-1]), shape[-1])


def _flat(shape):
    return (math.prod(shape),)


def _layer_norm(name):
    return {"gamma": (f"{name}.weight", None, _same), "beta": (f"{name}.bias", None, _same)}


def _dense(name, part=None, kernel=_same, bias=_same):
    return {"kernel": (f"{name}.weight", part, kernel), "bias": (f"{name}.bias", part, bias)}


# role -> {variable name: (Transformers name, third of c_attn or None, shape in the file)}
TENSORS = {
    "token_embedding": {"embeddings": ("wte.weight", None, _same)},
    "position_embedding": {"embeddings": ("wpe.weight", None, _same)},
    "self_attention_layer_norm": _layer_norm("h.{i}.ln_1"),
    "self_attention/query": _dense("h.{i}.attn.c_attn", 0, _input_major, _flat),
    "self_attention/key": _dense("h.{i}.attn.c_attn", 1, _input_major, _flat),
    "self_attention/value": _dense("h.{i}.attn.c_attn", 2, _input_major, _flat),
    "self_attention/attention_output": _dense("h.{i}.attn.c_proj", None, _output_major),
    "feedforward_layer_norm": _layer_norm("h.{i}.ln_2"),
    "feedforward_intermediate_dense": _dense("h.{i}.mlp.c_fc"),
    "feedforward_output_dense": _dense("h.{i}.mlp.c_proj"),
    "layer_norm": _layer_norm("ln_f"),
}


def tensor_plan(backbone):
    """`[(Transformers name, part, file shape, variable)]` for `backbone`.

    `file shape` is the shape of the variable's data in the file; a `part`
    (0, 1, 2) is that third of the last axis of the named tensor.
    """
    plan = []
    for entry, name, variable in table_variables(backbone):
        spec = TENSORS.get(entry.role, {}).get(name)
        if spec is None:
            raise ValueError(
                f"Variable {variable.path!r} ({entry.role} {name!r}) has no "
                "Transformers GPT-2 tensor. Transformers checkpoints hold float "
                "GPT-2 weights only: export a model that is not quantized."
            )
        tensor, part, file_shape = spec
        plan.append((tensor.format(i=entry.block), part, file_shape(variable.shape), variable))
    return plan


def _full_shape(shape, part):
    """The shape of the named tensor, given the shape of one part of it."""
    return shape if part is None else shape[:-1] + (3 * shape[-1],)


def _take(value, shape, part, variable):
    """The variable's value from the named tensor (slices and reshapes only:
    a memory map stays a memory map, so `initialize_variable` copies it)."""
    if part is not None:
        width = value.shape[-1] // 3
        value = value[..., part * width : (part + 1) * width]
    return value.reshape(tuple(variable.shape))


def _resolve(name, names, where):
    for key in (name, "transformer." + name):
        if key in names:
            return key
    raise ValueError(
        f"{where} has no tensor {name!r} (nor 'transformer.{name}'); it has "
        f"{len(names)} tensors, e.g. {sorted(names)[:5]}. Is it a GPT-2 "
        "checkpoint of this size?"
    )


def _check(key, shape, dtype, expected, variable, where):
    if tuple(shape) != tuple(expected):
        raise ValueError(
            f"Shape mismatch for Transformers tensor {key!r} in {where}: the "
            f"checkpoint has {tuple(shape)}, the model expects {tuple(expected)}. "
            "Does config.json match the weights?"
        )
    if not dtype_fits(dtype, variable):
        raise ValueError(
            f"Transformers tensor {key!r} in {where} has dtype {dtype}; the "
            f"model's {variable.path} is {variable.dtype}. GPT-2 checkpoints hold "
            "floating point weights: this one is corrupt or not a GPT-2 checkpoint."
        )


def load_transformers_weights(backbone, tensors):
    """Assign Transformers GPT-2 tensors to `backbone`, all or nothing.

    Args:
        backbone: a built `GPT2Backbone` (without LoRA adapters).
        tensors: dict from Transformers names (with or without the
            `transformer.` prefix) to arrays.
    """
    updates = []
    for name, part, shape, variable in tensor_plan(backbone):
        key = _resolve(name, tensors, "The Transformers checkpoint")
        value = np.asarray(tensors[key])
        _check(key, value.shape, value.dtype, _full_shape(shape, part), variable, "the checkpoint")
        updates.append((variable, _take(value, shape, part, variable)))
    for variable, value in updates:
        initialize_variable(variable, value)


def transformers_weights_from_backbone(backbone):
    """Transformers-named arrays (`transformer.`-less) for `backbone`."""
    tensors, fused = {}, {}
    for name, part, shape, variable in tensor_plan(backbone):
        value = distribution.gather(variable).reshape(shape)
        if part is None:
            tensors[name] = value
        else:
            fused.setdefault(name, [None] * 3)[part] = value
    for name, parts in fused.items():
        tensors[name] = np.concatenate(parts, axis=-1)
    return tensors


# ---------------------------------------------------------------------------
# Files.

_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}
_MAX_HEADER = 100 * 1024**2


def _numpy_dtype(name):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class SafetensorsFile:
    """The tensors of one `.safetensors` file, as read-only memory maps.

    The header is checked in full (dtypes, shapes, offsets inside the file)
    when the file is opened, so a truncated or corrupt file fails before any
    variable is assigned.
    """

    def __init__(self, path, where):
        self.path, self.where = path, where
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                if not 2 <= length <= min(size - 8, _MAX_HEADER):
                    raise ValueError(f"header length {length} does not fit a {size}-byte file")
                header = json.loads(f.read(length))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            header.pop("__metadata__", None)
            self.tensors = {}
            for name, info in header.items():
                dtype = _numpy_dtype(_DTYPES[info["dtype"]])
                shape = tuple(info["shape"])
                begin, end = info["data_offsets"]
                if not all(is_integer(d) and d >= 0 for d in shape + (begin, end)):
                    raise ValueError(f"tensor {name!r} has a malformed shape or offsets")
                if end - begin != math.prod(shape) * dtype.itemsize or 8 + length + end > size:
                    raise ValueError(f"tensor {name!r} does not fit its offsets or the file")
                self.tensors[name] = (dtype, shape, 8 + length + begin)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"Could not read {where}: {e!r}. The file is corrupt or truncated; "
                "re-download it."
            ) from None

    def read(self, name):
        dtype, shape, offset = self.tensors[name]
        if math.prod(shape) == 0:
            return np.zeros(shape, dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=shape)


class SafetensorsReader:
    """The tensors of a Transformers checkpoint directory (single or sharded)."""

    def __init__(self, preset_dir):
        self.preset_dir = preset_dir
        self.files = {}
        if preset_file(preset_dir, SAFETENSORS_FILE, required=False) is not None:
            tensors = self._add(SAFETENSORS_FILE).tensors
            self._names = {name: SAFETENSORS_FILE for name in tensors}
            return
        if preset_file(preset_dir, SAFETENSORS_INDEX_FILE, required=False) is None:
            present = [f for f in PICKLE_FILES if preset_file(preset_dir, f, required=False)]
            if present:
                raise ValueError(
                    f"Transformers checkpoint {preset_dir!r} only has {present}, "
                    "a pickle/non-safetensors format that gpt2_lib refuses to load "
                    "(loading pickle can run arbitrary code). Convert it to "
                    "safetensors, e.g. `GPT2LMHeadModel.from_pretrained(path)."
                    "save_pretrained(out, safe_serialization=True)`."
                )
            raise FileNotFoundError(
                f"Transformers checkpoint {preset_dir!r} has no `{SAFETENSORS_FILE}` "
                f"nor `{SAFETENSORS_INDEX_FILE}`. Pass `load_weights=False` for "
                "the architecture only."
            )
        try:
            with open(preset_file(preset_dir, SAFETENSORS_INDEX_FILE), encoding="utf-8") as f:
                index = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            index = e
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise ValueError(
                f"`{SAFETENSORS_INDEX_FILE}` in {preset_dir!r} is corrupt: expected "
                "a JSON object whose 'weight_map' maps tensor names to file names"
                + (f" ({index})." if isinstance(index, Exception) else ".")
                + " Re-download the checkpoint."
            )
        for filename in sorted(set(weight_map.values())):
            self._add(filename)
        self._names = dict(weight_map)

    def _add(self, filename):
        where = f"`{filename}` in {self.preset_dir!r}"
        self.files[filename] = SafetensorsFile(preset_file(self.preset_dir, filename), where)
        return self.files[filename]

    def __contains__(self, name):
        return name in self._names

    def __len__(self):
        return len(self._names)

    def keys(self):
        return self._names.keys()

    def __iter__(self):
        return iter(self._names)

    def entry(self, name):
        """`(dtype, shape, file name)` of tensor `name`."""
        filename = self._names[name]
        tensors = self.files[filename].tensors
        if name not in tensors:
            raise ValueError(
                f"`{SAFETENSORS_INDEX_FILE}` in {self.preset_dir!r} puts tensor "
                f"{name!r} in `{filename}`, which does not hold it. The checkpoint "
                "is corrupt; re-download it."
            )
        dtype, shape, _ = tensors[name]
        return dtype, shape, filename

    def __getitem__(self, name):
        return self.files[self._names[name]].read(name)


def load_weights_from_dir(backbone, preset_dir):
    """Read a Transformers checkpoint directory's weights into `backbone`.

    All tensor names, shapes and dtypes are checked before any variable is
    assigned; then tensors are read (memory-mapped) and assigned one at a time.
    """
    reader = SafetensorsReader(preset_dir)
    where = f"the Transformers checkpoint {preset_dir!r}"
    plan = []
    for name, part, shape, variable in tensor_plan(backbone):
        key = _resolve(name, reader, where.capitalize())
        dtype, stored_shape, filename = reader.entry(key)
        _check(key, stored_shape, dtype, _full_shape(shape, part), variable, f"`{filename}` of {where}")
        plan.append((key, part, shape, variable))
    for key, part, shape, variable in plan:
        initialize_variable(variable, _take(reader[key], shape, part, variable))


def write_transformers_checkpoint(backbone, directory):
    """Write `config.json` and `model.safetensors` for `GPT2LMHeadModel`."""
    from safetensors.numpy import save_file

    config = transformers_config_from_backbone(backbone)
    tensors = {}
    weights = transformers_weights_from_backbone(backbone)  # every process gathers
    if not distribution.is_writer():
        return
    for name, value in weights.items():
        if keras.backend.standardize_dtype(value.dtype) == "bfloat16":
            value = value.astype("float32")
        tensors["transformer." + name] = np.ascontiguousarray(value)
    dtype = keras.backend.standardize_dtype(backbone.token_embedding.embeddings.dtype)
    config["torch_dtype"] = "float16" if dtype == "float16" else "float32"
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
        f.write(json.dumps(config, indent=2))
    save_file(tensors, os.path.join(directory, SAFETENSORS_FILE), metadata={"format": "pt"})
