"""LoRA adapters for a `Backbone`: enable, save, load and merge.

Low-rank adaptation (Hu et al., 2021) freezes a pretrained network and
learns, for some of its projections, a low-rank update `W + (alpha / rank) *
A @ B`. The adapters are tiny, so they train on small machines and are
shared as a file of kilobytes instead of a whole model.

The adapters themselves are Keras's: `enable_lora` calls
`keras.layers.EinsumDense.enable_lora` / `keras.layers.Dense.enable_lora` on
each target layer (creating the float32 `lora_kernel_a` and `lora_kernel_b`,
`B` initialized to zero so the model starts unchanged). This module adds
what a whole backbone needs on top: choosing the targets by name, freezing
every other weight (biases included), and merging the adapters back into
the base kernels. The `.lora.h5` adapter file (keyed by stable layer paths,
loaded all or nothing) is `gpt2_lib.models.lora_file`.

Typical use goes through the `Backbone` methods of the same names:

```python
backbone = gpt2_lib.models.GPT2Backbone.from_preset("gpt2_base_en")
backbone.enable_lora(rank=8)  # query and value of every block
# ... compile and fit: only the adapters train ...
backbone.save_lora_weights("shakespeare.lora.h5")

other = gpt2_lib.models.GPT2Backbone.from_preset("gpt2_base_en")
other.load_lora_weights("shakespeare.lora.h5")  # same outputs
other.merge_lora_weights()  # an ordinary backbone again
other.save_to_preset("./gpt2_shakespeare")
```
"""

import keras
import numpy as np
from keras import ops


# Quantization modes Keras' LoRA supports (QLoRA: adapters on a frozen
# quantized base); None is the float model.
QLORA_MODES = (None, "int8", "int4")

# KerasHub's attribute names for the attention projections -> layer names.
LAYER_NAME_ALIASES = {
    "query_dense": "query",
    "key_dense": "key",
    "value_dense": "value",
    "output_dense": "attention_output",
}


class LoraState:
    """What `enable_lora` did to a backbone, so it can be saved and undone.

    Kept as a plain object (not a list/dict) so Keras does not track it.
    """

    def __init__(self, rank, alpha, target_layer_names, layers, trainable_before):
        self.rank = rank
        self.alpha = alpha
        self.target_layer_names = list(target_layer_names)
        self.layers = dict(layers)  # {path: layer}, sorted by path
        self.trainable_before = trainable_before  # [(layer or variable, bool)]


# === Public helpers ===


def lora_enabled(backbone):
    """Whether `backbone` currently has LoRA adapters (from `enable_lora`)."""
    return getattr(backbone, "_lora_state", None) is not None


def lora_config(backbone):
    """The backbone's LoRA settings, or None when LoRA is not enabled.

    Returns:
        `{"rank": int, "alpha": float, "target_layer_names": [str],
        "target_layer_paths": [str]}`.
    """
    state = getattr(backbone, "_lora_state", None)
    if state is None:
        return None
    return {
        "rank": state.rank,
        "alpha": state.alpha,
        "target_layer_names": list(state.target_layer_names),
        "target_layer_paths": list(state.layers),
    }


def save_to_preset_refusal_message(backbone):
    """The error text for saving a preset from a backbone with LoRA enabled.

    A preset holds plain weights that any GPT-2 loader reads; adapters would
    either be lost or change the weights silently, so saving is refused.
    """
    config = lora_config(backbone)
    return (
        f"Cannot save a preset from {type(backbone).__name__} "
        f"'{backbone.name}': LoRA is enabled (rank={config['rank']}, "
        f"alpha={config['alpha']:g}, {len(config['target_layer_paths'])} "
        "adapted layers), and a preset holds only plain weights. Call "
        "`backbone.merge_lora_weights()` first to fold the adapters into the "
        "kernels and save the fine-tuned model, or use "
        "`backbone.save_lora_weights('name.lora.h5')` to save only the adapters."
    )


class LoraEnabledError(ValueError):
    """Raised when an operation needs a backbone without LoRA adapters."""


def check_lora_disabled(backbone):
    """Raise `LoraEnabledError` (a `ValueError`) if `backbone` has adapters.

    `save_to_preset` calls this before writing anything.
    """
    if lora_enabled(backbone):
        raise LoraEnabledError(save_to_preset_refusal_message(backbone))


# === Finding the target layers ===


def _layer_paths(backbone):
    """`{path: layer}` for every sublayer, paths built from layer names.

    A path such as `"transformer_layer_0/self_attention/query"` names the
    layer by its place in the tree, so it does not depend on the order of
    `backbone.layers` nor on the name scope the backbone was built in. It
    equals `layer.path` for a backbone built on its own.
    """
    paths = {}

    def visit(layer, prefix):
        for child in layer._layers:
            path = f"{prefix}{child.name}"
            paths.setdefault(path, []).append(child)
            visit(child, f"{path}/")

    visit(backbone, "")
    return paths


def adaptable_layers(backbone):
    """`{path: layer}` of the `Dense`/`EinsumDense` layers LoRA can adapt."""
    layers = {}
    for path, found in _layer_paths(backbone).items():
        found = [layer for layer in found if _supports_lora(layer)]
        if len(found) > 1:
            raise ValueError(
                f"Two layers of {backbone.name} share the path {path!r}; "
                "LoRA needs unique layer paths."
            )
        if found:
            layers[path] = found[0]
    return dict(sorted(layers.items()))


def _supports_lora(layer):
    return isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))


def resolve_target_layers(backbone, target_layer_names):
    """The layers named by `target_layer_names`, as `{path: layer}`.

    Each name is a layer name (`"query"`, matching that layer in every
    block), one of KerasHub's attribute names (`"query_dense"`), or a full
    path (`"transformer_layer_0/self_attention/query"`).
    """
    if isinstance(target_layer_names, str):
        raise TypeError(
            "`target_layer_names` must be a list of layer names, not a string. "
            f"Received: {target_layer_names!r}; pass [{target_layer_names!r}]."
        )
    names = list(target_layer_names)
    if not names:
        raise ValueError("`target_layer_names` is empty; name at least one layer.")
    candidates = adaptable_layers(backbone)
    all_paths = _layer_paths(backbone)
    targets = {}
    for name in names:
        if not isinstance(name, str):
            raise TypeError(
                f"Layer names must be strings. Received: {name!r} in "
                f"target_layer_names={names!r}."
            )
        layer_name = LAYER_NAME_ALIASES.get(name, name)
        matches = {
            path: layer
            for path, layer in candidates.items()
            if path == layer_name or path.rsplit("/", 1)[-1] == layer_name
        }
        if not matches:
            other = [
                path
                for path, found in all_paths.items()
                if path == layer_name or path.rsplit("/", 1)[-1] == layer_name
            ]
            if other:
                kind = type(all_paths[other[0]][0]).__name__
                raise ValueError(
                    f"Layer {name!r} is a {kind}; LoRA adapts only Dense and "
                    "EinsumDense layers. Choose from: "
                    f"{_layer_name_choices(candidates)}."
                )
            raise ValueError(
                f"No layer named {name!r} in {type(backbone).__name__}. Choose "
                f"layer names from {_layer_name_choices(candidates)} (or KerasHub's "
                f"{sorted(LAYER_NAME_ALIASES)}), or full layer paths such as "
                f"{next(iter(candidates))!r}."
            )
        targets.update(matches)
    return dict(sorted(targets.items()))


def _layer_name_choices(candidates):
    return sorted({path.rsplit("/", 1)[-1] for path in candidates})


# === Enabling ===


def _check_rank(rank):
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank <= 0:
        raise ValueError(f"`rank` must be a positive integer. Received: rank={rank!r}")
    return int(rank)


def _check_alpha(alpha, rank):
    if alpha is None:
        return float(rank)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)):
        raise ValueError(f"`alpha` must be a positive number. Received: alpha={alpha!r}")
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"`alpha` must be a positive number. Received: alpha={alpha!r}")
    return float(alpha)


def _check_can_adapt(backbone, layers):
    for path, layer in layers.items():
        if getattr(layer, "lora_enabled", False):
            raise ValueError(
                f"Layer {path!r} already has LoRA enabled outside "
                "`Backbone.enable_lora`; build a fresh backbone."
            )
        if layer.kernel_constraint is not None:
            raise ValueError(
                f"Layer {path!r} has a kernel constraint, which Keras's LoRA "
                "does not support. Remove the constraint first."
            )
        if layer.quantization_mode not in QLORA_MODES:
            raise ValueError(
                f"Layer {path!r} is quantized ({layer.quantization_mode}), and "
                f"Keras' LoRA does not support {layer.quantization_mode} layers. "
                "Enable LoRA on the float model, or on an int8/int4 one (QLoRA)."
            )


def lora_kernel_shape(layer):
    """The logical (unpacked) kernel shape the adapters of `layer` factor.

    An int4 layer stores its kernel packed (two values per byte, and
    flattened to 2D for `EinsumDense`); its adapters follow the original
    shape, as in Keras' `enable_lora`.
    """
    if layer.quantization_mode == "int4":
        if isinstance(layer, keras.layers.EinsumDense):
            return tuple(layer.original_kernel_shape)
        return (layer._orig_input_dim, layer._orig_output_dim)
    return tuple(layer._kernel.shape)


def _trainable_snapshot(backbone):
    """Every layer's and weight's `trainable` flag, parents before children."""
    layers = [backbone] + list(backbone._flatten_layers(include_self=False))
    snapshot = [(layer, layer.trainable) for layer in layers]
    snapshot += [(variable, variable.trainable) for variable in backbone.weights]
    return snapshot


def _add_adapters(backbone, layers, rank, alpha, target_layer_names):
    """Freeze everything and add adapters to `layers`; no checks."""
    snapshot = _trainable_snapshot(backbone)
    backbone.trainable = True
    for layer in backbone._flatten_layers(include_self=False):
        layer.trainable = False
    for layer in layers.values():
        layer.trainable = True
        layer.enable_lora(rank, lora_alpha=alpha)
        # Keras freezes the kernel; the bias must not train either.
        for variable in layer.weights:
            if variable is not layer.lora_kernel_a and variable is not layer.lora_kernel_b:
                variable.trainable = False
    backbone._lora_state = LoraState(rank, alpha, target_layer_names, layers, snapshot)
    refresh_torch_parameters(backbone)


def enable_lora(backbone, rank, target_layer_names=None, alpha=None):
    """Freeze `backbone` and add rank-`rank` LoRA adapters to target layers.

    After this, `backbone.trainable_weights` are exactly the adapter matrices
    (`lora_kernel_a`, `lora_kernel_b` of each target); every base weight,
    biases included, is frozen. Compile (or re-compile) after enabling.

    Args:
        backbone: a built `Backbone`.
        rank: int, the rank of the adapters.
        target_layer_names: list of layer names (`"query"`, `"value"`,
            KerasHub's `"query_dense"`, ...) or full layer paths
            (`"transformer_layer_0/self_attention/query"`). Defaults to
            `backbone.default_lora_layer_names()`.
        alpha: float, the update is scaled by `alpha / rank`. Defaults to
            `rank` (scale 1), as in Keras.

    Example:
    ```python
    backbone = gpt2_lib.models.GPT2Backbone(
        vocabulary_size=97, num_layers=2, num_heads=4, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=64,
    )
    backbone.enable_lora(rank=4)
    len(backbone.trainable_weights)  # 8: A and B for query, value of 2 blocks
    ```
    """
    rank = _check_rank(rank)
    alpha = _check_alpha(alpha, rank)
    if lora_enabled(backbone):
        config = lora_config(backbone)
        raise ValueError(
            f"LoRA is already enabled on {backbone.name} (rank={config['rank']}). "
            "Call `merge_lora_weights()` to fold the adapters in before "
            "enabling new ones, or build a fresh backbone."
        )
    if target_layer_names is None:
        target_layer_names = backbone.default_lora_layer_names()
    layers = resolve_target_layers(backbone, target_layer_names)
    _check_can_adapt(backbone, layers)
    _add_adapters(backbone, layers, rank, alpha, target_layer_names)


# === Removing and merging ===


def release_torch_parameters(model):
    """Empty the torch parameter dicts of `model` and its layers (torch only).

    Each composite layer's dict holds every variable under it, so a kernel
    that `quantize()` replaces would stay in memory until the end of the
    call; emptied first, each one is freed as soon as it is replaced (peak
    memory: the float model, not float plus quantized).
    `refresh_torch_parameters` fills them again. Does nothing on other
    backends.
    """
    for layer in [model] + list(model._flatten_layers(include_self=False)):
        if "_torch_params" in getattr(layer, "_modules", {}):
            layer._modules["_torch_params"].clear()
        elif "_torch_params" in vars(layer):
            layer._torch_params.clear()


def refresh_torch_parameters(model):
    """Make `model.parameters()` list the current variables (torch only).

    Keras's torch layers register their variables in a `torch_params` dict
    when built; adapters added or deleted later, or kernels replaced by
    `quantize()`, would be missing from (or linger in)
    `model.named_parameters()`, and the replaced tensors would stay in
    memory. Rebuilding those dicts keeps torch-side optimizers and
    `state_dict()` right and frees what was replaced. A task keeps its dict
    as a plain attribute (it is made before `torch.nn.Module.__init__`
    finishes); it is rebuilt in place the same way. Other backends have no
    such dicts and this does nothing.
    """
    for layer in [model] + list(model._flatten_layers(include_self=False)):
        if "_torch_params" in getattr(layer, "_modules", {}):
            layer._track_variables()
        elif "_torch_params" in vars(layer):
            import torch

            params = {variable.path: variable.value for variable in layer.variables}
            object.__setattr__(layer, "_torch_params", torch.nn.ParameterDict(params))



def _delete_variable(layer, name):
    """Untrack and delete a variable attribute of `layer`.

    `del layer.name` does the same but runs `gc.collect()` for every
    variable, which takes seconds per call in a large process.
    """
    layer._untrack_variable(getattr(layer, name))
    super(keras.layers.Layer, layer).__delattr__(name)


def _remove_adapters(backbone):
    """Delete the adapter variables and restore the trainable flags."""
    state = backbone._lora_state
    for layer in state.layers.values():
        if not getattr(layer, "lora_enabled", False):
            continue
        _delete_variable(layer, "lora_kernel_a")
        _delete_variable(layer, "lora_kernel_b")
        layer.lora_enabled = False
        layer.lora_rank = None
        layer.lora_alpha = None
    for obj, trainable in state.trainable_before:
        obj.trainable = trainable
    backbone._lora_state = None
    refresh_torch_parameters(backbone)


def merge_lora_weights(backbone):
    """Fold the adapters into the base kernels and remove them.

    Each target kernel becomes `kernel + (alpha / rank) * A @ B` (computed in
    float32, stored in the kernel's dtype), the adapter variables are
    deleted and every weight gets back the `trainable` flag it had before
    `enable_lora`. Outputs are unchanged (up to float rounding), and the
    backbone saves as an ordinary preset.

    On a quantized base (QLoRA) the merged kernel is requantized in the same
    mode, exactly as Keras does when it saves a quantized layer with
    adapters (dequantize, add the update, quantize again with fresh scales):
    the backbone stays quantized and small, and its outputs move by about
    one quantization step. For a float fine-tuned model instead, load the
    adapters (`load_lora_weights`) into the float base and merge there.

    Example:
    ```python
    backbone.enable_lora(4)
    # ... fit ...
    backbone.merge_lora_weights()
    backbone.save_to_preset("./my_finetuned_gpt2")
    ```
    """
    if not lora_enabled(backbone):
        raise ValueError(
            f"LoRA is not enabled on {backbone.name}; nothing to merge. "
            "Call `enable_lora(rank)` or `load_lora_weights(path)` first."
        )
    state = backbone._lora_state
    merged = {}
    for path, layer in state.layers.items():
        if layer.quantization_mode is not None:
            # Keras' own dequantize + merge + requantize (what it saves).
            kernel, scale, zero = layer._get_kernel_with_merged_lora()
            merged[path] = {"_kernel": kernel, "kernel_scale": scale, "kernel_zero": zero}
            continue
        delta = ops.matmul(layer.lora_kernel_a, layer.lora_kernel_b)
        kernel = ops.add(ops.cast(layer._kernel, "float32"), (state.alpha / state.rank) * delta)
        merged[path] = {"_kernel": ops.cast(kernel, layer._kernel.dtype)}
    for path, layer in state.layers.items():
        for name, value in merged[path].items():
            if value is not None:
                variable = getattr(layer, name)
                variable.assign(ops.cast(value, variable.dtype))
    _remove_adapters(backbone)
