"""Hugging Face Transformers' GPT-2 format: config fields and weight names.

Transformers stores GPT-2's attention as one `c_attn` Conv1D of shape
`(hidden, 3 * hidden)` (input-major, like a Keras kernel) holding query, key
and value side by side; we keep three `EinsumDense` kernels of shape
`(hidden, heads, head_dim)`. Everything here works on plain NumPy arrays
keyed by Transformers' names (without the `transformer.` prefix).
"""

import keras
import numpy as np

from gpt2_lib.preset_io.fast_init import initialize_variable

# Transformers config fields we read, and how they map to GPT2Backbone's.
_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")


def backbone_config_from_transformers(hf_config, overrides=None):
    """GPT2Backbone kwargs from a Transformers `config.json` dict.

    Every field that changes the computation is read; a value we cannot
    honour is a `ValueError`, never silently ignored.

    Args:
        hf_config: dict, a Transformers GPT-2 `config.json`.
        overrides: dict of GPT2Backbone kwargs the caller sets itself (e.g.
            `dropout`); fields they replace are not checked.
    """
    overrides = overrides or {}
    model_type = hf_config.get("model_type")
    if model_type != "gpt2":
        raise ValueError(
            f"Expected a Transformers config with model_type 'gpt2'; got "
            f"model_type={model_type!r}."
        )
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"activation_function={activation!r} is not supported; GPT2Backbone "
            f"uses the tanh approximation of GELU ({' or '.join(_ACTIVATIONS)})."
        )
    unsupported = {
        "scale_attn_weights": (True,),
        "scale_attn_by_inverse_layer_idx": (False,),
        "reorder_and_upcast_attn": (False,),
        "add_cross_attention": (False,),
        "tie_word_embeddings": (True,),
        "is_encoder_decoder": (False,),
    }
    for field, allowed in unsupported.items():
        if field in hf_config and hf_config[field] not in allowed:
            raise ValueError(
                f"Transformers config {field}={hf_config[field]!r} is not "
                f"supported (only {allowed[0]!r})."
            )
    hidden_dim = int(hf_config.get("n_embd", 768))
    n_inner = hf_config.get("n_inner")
    dropouts = {
        hf_config.get(key)
        for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop")
        if hf_config.get(key) is not None
    }
    if len(dropouts) > 1 and "dropout" not in overrides:
        raise ValueError(
            "GPT2Backbone has one dropout rate, but the Transformers config has "
            f"resid_pdrop={hf_config.get('resid_pdrop')}, embd_pdrop="
            f"{hf_config.get('embd_pdrop')}, attn_pdrop={hf_config.get('attn_pdrop')}. "
            "Pass `dropout=...` to choose one."
        )
    n_ctx = hf_config.get("n_ctx")
    n_positions = hf_config.get("n_positions", 1024)
    if n_ctx is not None and n_ctx != n_positions:
        raise ValueError(
            f"Transformers config has n_ctx={n_ctx} != n_positions={n_positions}; "
            "GPT2Backbone has a single max_sequence_length."
        )
    return {
        "vocabulary_size": int(hf_config.get("vocab_size", 50257)),
        "num_layers": int(hf_config.get("n_layer", 12)),
        "num_heads": int(hf_config.get("n_head", 12)),
        "hidden_dim": hidden_dim,
        "intermediate_dim": int(n_inner) if n_inner else 4 * hidden_dim,
        "max_sequence_length": int(hf_config.get("n_positions", 1024)),
        "layer_norm_epsilon": float(hf_config.get("layer_norm_epsilon", 1e-5)),
        "dropout": float(max(dropouts)) if dropouts else 0.1,
    }


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


def _variable_pairs(backbone):
    """Yield `(transformers_name, keras_variable, to_keras, to_transformers)`.

    `to_keras` turns the Transformers array into the variable's shape,
    `to_transformers` does the reverse.
    """
    hidden = backbone.hidden_dim
    heads = backbone.num_heads
    head_dim = hidden // heads
    same = (lambda x: x, lambda x: x)
    yield "wte.weight", backbone.token_embedding.embeddings, *same
    yield "wpe.weight", backbone.position_embedding.embeddings, *same
    for i, block in enumerate(backbone.transformer_layers):
        prefix = f"h.{i}."
        attention = block._self_attention_layer
        yield prefix + "ln_1.weight", block._self_attention_layer_norm.gamma, *same
        yield prefix + "ln_1.bias", block._self_attention_layer_norm.beta, *same
        for j, dense in enumerate(
            (attention.query_dense, attention.key_dense, attention.value_dense)
        ):
            yield (
                f"{prefix}attn.c_attn.weight[{j}]",
                dense.kernel,
                lambda x: x.reshape(hidden, heads, head_dim),
                lambda x: x.reshape(hidden, hidden),
            )
            yield (
                f"{prefix}attn.c_attn.bias[{j}]",
                dense.bias,
                lambda x: x.reshape(heads, head_dim),
                lambda x: x.reshape(hidden),
            )
        yield (
            prefix + "attn.c_proj.weight",
            attention.output_dense.kernel,
            lambda x: x.reshape(heads, head_dim, hidden),
            lambda x: x.reshape(hidden, hidden),
        )
        yield prefix + "attn.c_proj.bias", attention.output_dense.bias, *same
        yield prefix + "ln_2.weight", block._feedforward_layer_norm.gamma, *same
        yield prefix + "ln_2.bias", block._feedforward_layer_norm.beta, *same
        yield prefix + "mlp.c_fc.weight", block._feedforward_intermediate_dense.kernel, *same
        yield prefix + "mlp.c_fc.bias", block._feedforward_intermediate_dense.bias, *same
        yield prefix + "mlp.c_proj.weight", block._feedforward_output_dense.kernel, *same
        yield prefix + "mlp.c_proj.bias", block._feedforward_output_dense.bias, *same
    yield "ln_f.weight", backbone.layer_norm.gamma, *same
    yield "ln_f.bias", backbone.layer_norm.beta, *same


def _split_fused(name, tensors):
    """Look up `name`, splitting `c_attn` into its query/key/value thirds."""
    if name.endswith("]"):
        base, index = name[:-1].split("[")
        fused = _get(base, tensors)
        return np.split(fused, 3, axis=-1)[int(index)]
    return _get(name, tensors)


def _get(name, tensors):
    for key in (name, "transformer." + name):
        if key in tensors:
            return tensors[key]
    raise ValueError(
        f"The Transformers checkpoint has no tensor {name!r} (nor "
        f"'transformer.{name}'); it has {len(tensors)} tensors, e.g. "
        f"{sorted(tensors)[:5]}. Is it a GPT-2 checkpoint of this size?"
    )


def load_transformers_weights(backbone, tensors):
    """Assign Transformers GPT-2 tensors to `backbone`, all or nothing.

    Every array is fetched, reshaped and checked against its variable before
    any variable is assigned, so a bad checkpoint leaves the model untouched.

    Args:
        backbone: a built `GPT2Backbone`.
        tensors: dict from Transformers names (with or without the
            `transformer.` prefix) to array-likes.
    """
    from gpt2_lib.models import lora

    lora.check_lora_disabled(backbone)
    updates = []
    for name, variable, to_keras, _ in _variable_pairs(backbone):
        value = np.asarray(_split_fused(name, tensors))
        try:
            value = to_keras(value)
        except ValueError:
            pass
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"Shape mismatch for Transformers tensor {name!r}: checkpoint "
                f"has {value.shape}, the model expects {tuple(variable.shape)}."
            )
        updates.append((variable, value))
    for variable, value in updates:
        initialize_variable(variable, value)


def transformers_weights_from_backbone(backbone):
    """Transformers-named float arrays (`transformer.`-less) for `backbone`."""
    tensors = {}
    fused = {}
    for name, variable, _, to_transformers in _variable_pairs(backbone):
        value = to_transformers(keras.ops.convert_to_numpy(variable.value))
        if name.endswith("]"):
            base, index = name[:-1].split("[")
            fused.setdefault(base, [None] * 3)[int(index)] = value
        else:
            tensors[name] = value
    for base, parts in fused.items():
        tensors[base] = np.concatenate(parts, axis=-1)
    return tensors


# ---------------------------------------------------------------------------
# Files: safetensors (single or sharded) in, safetensors out. Pickle
# checkpoints (`pytorch_model.bin`, `*.pt`, `*.ckpt`) are refused: loading
# them can run arbitrary code.

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt", "tf_model.h5", "flax_model.msgpack")


class SafetensorsReader:
    """Lazy, read-only access to the tensors of a Transformers checkpoint dir.

    Behaves as a mapping from tensor names to NumPy arrays, reading one
    tensor at a time (`safetensors.safe_open`, memory-mapped).
    """

    def __init__(self, preset_dir):
        from gpt2_lib.preset_io.handles import preset_file

        self.preset_dir = preset_dir
        self._handles = {}
        single = preset_file(preset_dir, SAFETENSORS_FILE, required=False)
        if single is not None:
            self._files = {SAFETENSORS_FILE: single}
            self._names = {name: SAFETENSORS_FILE for name in self._open(SAFETENSORS_FILE).keys()}
            return
        index = preset_file(preset_dir, SAFETENSORS_INDEX_FILE, required=False)
        if index is None:
            present = [f for f in _PICKLE_FILES if preset_file(preset_dir, f, required=False)]
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
        import json

        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"`{SAFETENSORS_INDEX_FILE}` in {preset_dir!r} is corrupt ({e!r})."
            ) from None
        self._files = {}
        for filename in sorted(set(weight_map.values())):
            self._files[filename] = preset_file(preset_dir, filename)
        self._names = dict(weight_map)

    def _open(self, filename):
        if filename not in self._handles:
            from safetensors import safe_open

            path = self._files[filename]
            try:
                self._handles[filename] = safe_open(path, framework="numpy")
            except Exception as e:
                raise ValueError(
                    f"Could not read `{filename}` in {self.preset_dir!r}: {e}. "
                    "The file is corrupt or truncated; re-download it."
                ) from None
        return self._handles[filename]

    def __contains__(self, name):
        return name in self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def keys(self):
        return self._names.keys()

    def shape(self, name):
        filename = self._names[name]
        return tuple(self._open(filename).get_slice(name).get_shape())

    def __getitem__(self, name):
        from safetensors import safe_open

        filename = self._names[name]
        self._open(filename)  # Checks the file once, with a clear error.
        try:
            # A handle per tensor: the file pages it maps are released with it,
            # so the mapped checkpoint never adds to the model's memory.
            with safe_open(self._files[filename], framework="numpy") as handle:
                return handle.get_tensor(name)
        except Exception as e:
            raise ValueError(
                f"Could not read tensor {name!r} from `{filename}` in "
                f"{self.preset_dir!r}: {e}. The file is corrupt or truncated."
            ) from None

    def close(self):
        self._handles = {}


def _expected_shape(name, variable, hidden):
    """The Transformers shape of the tensor behind `name` for `variable`."""
    if name.endswith("]"):
        base = name[:-1].split("[")[0]
        return base, (hidden, 3 * hidden) if base.endswith("weight") else (3 * hidden,)
    if name.endswith("attn.c_proj.weight"):
        return name, (hidden, hidden)
    return name, tuple(variable.shape)


def _resolve(name, reader):
    for key in (name, "transformer." + name):
        if key in reader:
            return key
    raise ValueError(
        f"The Transformers checkpoint {reader.preset_dir!r} has no tensor "
        f"{name!r} (nor 'transformer.{name}'); it has {len(reader)} tensors, "
        f"e.g. {sorted(reader.keys())[:5]}. Is it a GPT-2 checkpoint of this size?"
    )


def load_weights_from_dir(backbone, preset_dir):
    """Stream a Transformers checkpoint directory's weights into `backbone`.

    All tensor names and shapes are checked before any variable is assigned;
    then tensors are read (memory-mapped) and assigned one at a time.
    """
    reader = SafetensorsReader(preset_dir)
    hidden = backbone.hidden_dim
    pairs = list(_variable_pairs(backbone))
    for name, variable, _, _ in pairs:
        base, expected = _expected_shape(name, variable, hidden)
        key = _resolve(base, reader)
        shape = reader.shape(key)
        if shape != expected:
            raise ValueError(
                f"Shape mismatch for Transformers tensor {key!r} in {preset_dir!r}: "
                f"the checkpoint has {shape}, the model expects {expected}. Does "
                "config.json match the weights?"
            )
    fused_cache = {}
    for name, variable, to_keras, _ in pairs:
        if name.endswith("]"):
            base, index = name[:-1].split("[")
            if base not in fused_cache:
                fused_cache.clear()
                fused_cache[base] = reader[_resolve(base, reader)]
            value = np.split(fused_cache[base], 3, axis=-1)[int(index)]
        else:
            value = reader[_resolve(name, reader)]
        initialize_variable(variable, to_keras(np.ascontiguousarray(value)))
        del value
    reader.close()


def write_transformers_checkpoint(backbone, directory):
    """Write `config.json` and `model.safetensors` for `GPT2LMHeadModel`."""
    import json

    from safetensors.numpy import save_file

    config = transformers_config_from_backbone(backbone)
    tensors = {}
    for name, value in transformers_weights_from_backbone(backbone).items():
        if str(value.dtype) == "bfloat16":
            value = value.astype("float32")
        tensors["transformer." + name] = np.ascontiguousarray(value)
    dtype = keras.backend.standardize_dtype(backbone.token_embedding.embeddings.dtype)
    config["torch_dtype"] = "float16" if dtype == "float16" else "float32"
    with open(f"{directory}/config.json", "w", encoding="utf-8") as f:
        f.write(json.dumps(config, indent=2))
    save_file(tensors, f"{directory}/{SAFETENSORS_FILE}", metadata={"format": "pt"})
