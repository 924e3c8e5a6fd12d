"""Quantized models: supported modes, per-layer dtype policy maps, dequantization.

Keras quantizes a model layer by layer (`keras.Model.quantize`): each
`Dense`, `EinsumDense` and `Embedding` gets integer kernels plus scales and a
`QuantizedDTypePolicy` (`"int8_from_float32"`, `"int4/128_from_float32"`,
...). KerasHub saves a quantized backbone's dtype as a `DTypePolicyMap`
from each quantized layer's path to its policy, and this module provides the
pieces gpt2_lib needs around that:

- `check_mode`: the modes Keras can quantize a GPT-2 to, with clear errors;
- `quantized_policy_map`: the `DTypePolicyMap` KerasHub writes for a model;
- `rebase_policy`: a saved map on a new float dtype (`from_preset(dtype=)`);
- `dequantize_int4`, `dequantize_int4_rows`: Keras' int4 dequantization without its gather
  (for export and the backends' int4 paths);
- `dequantized_weights`: a quantized layer's float weights, computed exactly
  as the layer's own call does (for exporting to float formats);
- `weights_signature`: a cheap fingerprint of a model's variables, so that
  compiled functions notice quantization or any change of a weight's dtype.

Example:
>>> import keras
>>> dense = keras.layers.Dense(4)
>>> dense.build((None, 8))
>>> dense.quantize("int8")
>>> dense.dtype_policy.name
'int8_from_float32'
>>> weights = dequantized_weights(dense)
>>> sorted(weights), weights["kernel"].dtype
(['bias', 'kernel'], dtype('float32'))
"""

import copy
import functools
import gc
import warnings

import keras
import numpy as np
from keras import ops

# Modes `quantize()` accepts, and those Keras has that need calibration data.
SUPPORTED_MODES = ("int8", "int4", "float8")
CALIBRATED_MODES = ("gptq", "awq")
# Keras warns once per layer it cannot quantize (LayerNorm, Dropout, ...).
_NOISY_WARNINGS = (
    r".*does not have a `quantize` method implemented.*",
    r"Invalid quantization mode.*",
    r"__array__ implementation doesn't accept a copy keyword.*",
)


def check_mode(mode, config=None, compute_dtype="float32"):
    """The quantization mode to use, checked; a clear ValueError otherwise.

    Args:
        mode: `"int8"`, `"int4"` or `"float8"`, or None when `config` (a
            `keras.quantizers.QuantizationConfig`) names the mode.
        config: optional `keras.quantizers.QuantizationConfig`.
        compute_dtype: the model's compute dtype (int8 refuses float16,
            as Keras does, before any layer is touched).

    Returns:
        The mode, a string.

    Example:
    >>> check_mode("int8")
    'int8'
    """
    config_mode = getattr(config, "mode", None)
    if mode is None:
        mode = config_mode
    elif config_mode is not None and config_mode != mode:
        raise ValueError(
            f"quantize(mode={mode!r}) was given a {type(config).__name__} for "
            f"mode {config_mode!r}. Pass one of them, or make them agree."
        )
    if mode is None:
        raise ValueError(
            "quantize() needs a mode: one of "
            f"{', '.join(map(repr, SUPPORTED_MODES))} (or a "
            "`keras.quantizers.QuantizationConfig`)."
        )
    if mode in CALIBRATED_MODES:
        raise ValueError(
            f"Quantization mode {mode!r} needs calibration data (Keras' "
            f"`{mode.upper()}Config(dataset=..., tokenizer=...)`) and is not "
            f"supported by gpt2_lib. Use one of {', '.join(map(repr, SUPPORTED_MODES))}."
        )
    if mode not in SUPPORTED_MODES:
        raise ValueError(
            f"Unsupported quantization mode={mode!r}. Supported modes: "
            f"{', '.join(map(repr, SUPPORTED_MODES))}. ({', '.join(CALIBRATED_MODES)} "
            "need calibration data and are not supported.)"
        )
    if mode == "int8" and compute_dtype == "float16":
        raise ValueError(
            "Quantization mode 'int8' does not work with compute dtype float16 "
            "(Keras refuses the combination). Quantize a float32 or bfloat16 "
            "model, e.g. `from_preset(..., dtype='bfloat16')`, or use 'int4'."
        )
    return mode


def checked_quantize(quantize, check):
    """`quantize` (a model's method) with `check(mode, config)` run first.

    Keras wraps every layer's `quantize` in its own argument checks, whose
    errors list modes gpt2_lib refuses; this runs ours before them.
    """

    @functools.wraps(quantize)
    def wrapper(mode=None, config=None, **kwargs):
        check(mode, config)
        return quantize(mode, config=config, **kwargs)

    return wrapper


def quantized_layers(model):
    """`[layer]` of `model` (itself excluded) that are quantized."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if getattr(layer, "quantization_mode", None) is not None
    ]


def quantization_modes(model):
    """The sorted quantization modes of `model`'s layers (empty if float).

    Example:
    >>> quantization_modes(keras.Sequential([keras.layers.Dense(2)]))
    []
    """
    return sorted({layer.quantization_mode for layer in quantized_layers(model)})


def quiet_quantize(quantize, *args, **kwargs):
    """Call `quantize(*args, **kwargs)` without Keras' per-layer notices and collections.

    `keras.Model.quantize` warns for every layer without weights to
    quantize (LayerNorm, Dropout, the position embedding, ...); for GPT-2
    those are expected, not news.

    Keras' `Layer.__delattr__` also runs a full `gc.collect()` for every
    float kernel it replaces: 0.2-0.6 s each in a process that has imported
    torch or TensorFlow: quantizing the tiny Shakespeare preset took 13 s
    (25 collections), GPT-2 base on torch 56 s. The kernels are freed by
    reference counting as they are deleted, so those collections are
    skipped and one runs at the end (0.9 s and 6 s;
    `benchmarks/NOTES.md`).
    """
    collect = gc.collect
    gc.collect = _no_collection
    try:
        with warnings.catch_warnings():
            for message in _NOISY_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            return quantize(*args, **kwargs)
    finally:
        gc.collect = collect
        gc.collect()


def _no_collection(generation=2):
    return 0


def resolve_policy_maps(model):
    """Give every layer of `model` holding a `DTypePolicyMap` its own policy.

    A model built from a policy map hands the map to each layer, which looks
    itself up by path; Keras' `quantize()` cannot derive a quantized policy
    from a map, so layers are given their resolved policy first.
    """
    for layer in model._flatten_layers(include_self=False):
        policy = getattr(layer, "_dtype_policy", None)
        if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
            layer._dtype_policy = policy[layer.path] if layer.path else policy.default_policy


def match_quantize_time_activations(model):
    """Make layers built from a quantized policy compute as `quantize()` left them.

    Keras 3.15 builds a reloaded int4 `ReversibleEmbedding` (the tied LM
    head) with an activation quantizer for its reverse projection, while
    `quantize("int4")` leaves int4 weight-only (`Int4QuantizationConfig`'s
    default, `activation_quantizer=None`). Without this, a saved and
    reloaded int4 model's logits would differ from the model that was saved
    (KerasHub 0.32 has that difference). Int8 layers are built alike either
    way and are left as they are.
    """
    for layer in quantized_layers(model):
        if layer.quantization_mode == "int4" and hasattr(layer, "inputs_quantizer"):
            layer.inputs_quantizer = None


def quantized_policy_map(model):
    """The `DTypePolicyMap` KerasHub writes for `model`, or None if it is float.

    Keys are the quantized layers' paths, values copies of their policies
    (serializing a map with no default policy blanks its policies' names in
    place, so the live ones are never handed to it). The default policy is
    None: like KerasHub, the other layers load at the global dtype policy or
    the `dtype` given to `from_preset()`.

    Example:
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")], name="m")
    >>> quiet_quantize(model.quantize, "int8")
    >>> policy_map = quantized_policy_map(model)
    >>> [(path, policy.name) for path, policy in policy_map.items()]
    [('m/d', 'int8_from_float32')]
    """
    layers = quantized_layers(model)
    if not layers:
        return None
    policy_map = keras.dtype_policies.DTypePolicyMap()
    for layer in layers:
        policy = layer.dtype_policy
        if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
            policy = policy[layer.path]
        policy_map[layer.path] = copy.deepcopy(policy)
    return policy_map


def _float_name(policy):
    policy = keras.dtype_policies.get(policy)
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        policy = policy.default_policy
    if policy.quantization_mode is not None:
        raise ValueError(
            f"dtype={policy.name!r} is a quantized policy; pass a float dtype "
            "(e.g. 'float32', 'bfloat16') and call `quantize()` to quantize."
        )
    return policy.name


def quantized_name(policy, source):
    """`policy`'s quantization on the float policy `source`, e.g. 'int8_from_bfloat16'."""
    mode = policy.quantization_mode
    if isinstance(policy, keras.dtype_policies.Int4DTypePolicy):
        mode = f"int4/{policy.block_size}"
    if isinstance(policy, keras.dtype_policies.QuantizedFloat8DTypePolicy):
        return keras.dtype_policies.QuantizedFloat8DTypePolicy(
            "float8", source, policy.amax_history_length
        )
    return keras.dtype_policies.get(f"{mode}_from_{source}")


def rebase_policy(policy_map, dtype):
    """`policy_map` with every policy moved onto the float `dtype`.

    Quantized layers stay quantized (same mode and block size) with `dtype`
    as their source; every other layer gets `dtype`.

    Args:
        policy_map: a `keras.dtype_policies.DTypePolicyMap`.
        dtype: a float dtype name or `keras.DTypePolicy`.

    Example:
    >>> policy_map = keras.dtype_policies.DTypePolicyMap()
    >>> policy_map["dense"] = "int8_from_float32"
    >>> rebased = rebase_policy(policy_map, "bfloat16")
    >>> rebased["dense"].name, rebased["other"].name
    ('int8_from_bfloat16', 'bfloat16')
    """
    source = _float_name(dtype)
    rebased = keras.dtype_policies.DTypePolicyMap(default_policy=source)
    for path, policy in policy_map.items():
        if policy.quantization_mode is None:
            rebased[path] = source
        else:
            check_mode(policy.quantization_mode, compute_dtype=keras.DTypePolicy(source).compute_dtype)
            rebased[path] = quantized_name(policy, source)
    return rebased


# ---------------------------------------------------------------------------
# Dequantization: the float weights a quantized layer computes with.


def _float32(value):
    return ops.cast(value, "float32")


def dequantize_int4(values, scale, zero, block_size, g_idx, axis):
    """Keras' grouped int4 dequantization, `(values - zero) * scale`.

    Each position along `axis` of the 2D `values` belongs to a group of
    `block_size` (the layer's `g_idx`); `scale` and `zero` hold one entry
    per group on that axis. Keras maps positions to groups with a gather
    over the whole matrix, which XLA:CPU fuses into the product that
    follows: a batch-8 JAX `generate()` of a one-block GPT-2 base spent 78 s
    per call in it (3.2 s broadcast; `benchmarks/NOTES.md`). Even groups are
    broadcast over instead, the same values; a partial last group takes
    Keras' gather.

    Args:
        values: `(rows, columns)` unpacked int4 values, in the dtype the
            layer dequantizes in (Keras: the int8 values for kernels, the
            compute dtype for embeddings).
        scale: per-group scales, groups along `axis`.
        zero: per-group zero points, groups along `axis`.
        block_size: the layer's `_int4_block_size` (positive).
        g_idx: the layer's `g_idx`, each position's group.
        axis: 0 or -1, the grouped axis of `values`.

    Returns:
        `(rows, columns)`, in the dtype of `values - scale`.

    Example:
    >>> values = np.array([[1, 2], [3, 4]], "int8")
    >>> scale, zero = np.array([[0.5, 1.0]], "float32"), np.array([[1, 2]], "int8")
    >>> ops.convert_to_numpy(dequantize_int4(values, scale, zero, 2, [0, 0], axis=0))
    array([[0., 0.],
           [1., 2.]], dtype=float32)
    """
    scale = ops.convert_to_tensor(scale)
    zero = ops.cast(zero, scale.dtype)
    # Static lengths from the group map and the scales: `values` may have
    # unknown dimensions (rows looked up in a traced TensorFlow function).
    size = np.shape(g_idx)[0]  # the grouped axis
    columns = size if axis == -1 else scale.shape[-1]
    if size % block_size:
        from keras.src.quantizers.quantizers import dequantize_with_sz_map

        return dequantize_with_sz_map(values, scale, zero, g_idx, group_axis=axis)
    if axis == 0:  # (groups, block, columns)
        grouped = ops.reshape(values, (-1, block_size, columns))
        scale, zero = ops.expand_dims(scale, 1), ops.expand_dims(zero, 1)
    else:  # (rows, groups, block)
        grouped = ops.reshape(values, (-1, size // block_size, block_size))
        scale, zero = ops.expand_dims(scale, -1), ops.expand_dims(zero, -1)
    return ops.reshape(ops.multiply(ops.subtract(grouped, zero), scale), (-1, columns))


def grouped_int4(layer):
    """True for an int4 layer in groups (a scale and zero point per group), not per channel."""
    return getattr(layer, "_int4_block_size", None) not in (None, -1)


def dequantize_int4_rows(layer, packed, scale, zero, dtype):
    """Rows of an int4 `Embedding` table, from their packed values and their own scales.

    Keras' dequantization of a table: per row `value / scale`, or in groups
    along the row `dequantize_int4`. Used on the whole table (export) and
    on the rows a lookup takes.

    Args:
        layer: the int4 `Embedding` the rows come from.
        packed: `(rows, ceil(hidden / 2))` packed values.
        scale: the rows' `embeddings_scale`, `(rows,)` or `(rows, groups)`.
        zero: the rows' `embeddings_zero` (grouped tables only, else None).
        dtype: the dtype the values are dequantized in.

    Returns:
        `(rows, hidden)`.
    """
    values = ops.cast(keras.quantizers.unpack_int4(packed, layer._orig_output_dim, axis=-1), dtype)
    if not grouped_int4(layer):
        return ops.divide(values, ops.expand_dims(scale, -1))
    return dequantize_int4(values, scale, zero, layer._int4_block_size, layer.g_idx, axis=-1)


def _dense_kernel(layer):
    mode = layer.quantization_mode
    if mode == "int8":
        return _float32(layer._kernel) / _float32(layer.kernel_scale)
    unpacked = keras.quantizers.unpack_int4(layer._kernel, layer._orig_output_dim, axis=-1)
    if not grouped_int4(layer):
        return _float32(unpacked) / _float32(layer.kernel_scale)
    return dequantize_int4(
        _float32(unpacked), _float32(layer.kernel_scale), layer.kernel_zero,
        layer._int4_block_size, layer.g_idx, axis=0,
    )


def _einsum_dense_kernel(layer):
    mode = layer.quantization_mode
    if mode == "int8":
        scale = layer._adjust_scale_for_dequant(_float32(layer.kernel_scale))
        return _float32(layer._kernel) / scale
    unpacked = keras.quantizers.unpack_int4(
        layer._kernel, layer._int4_unpacked_column_size, axis=-1
    )
    if not grouped_int4(layer):
        kernel = _float32(unpacked) / _float32(layer.kernel_scale)
    else:
        kernel = dequantize_int4(
            _float32(unpacked), _float32(layer.kernel_scale), layer.kernel_zero,
            layer._int4_block_size, layer.g_idx, axis=0,
        )
    return ops.reshape(kernel, layer.original_kernel_shape)


def _embeddings(layer):
    mode = layer.quantization_mode
    if mode == "int8":
        return _float32(layer._embeddings) / _float32(layer.embeddings_scale)[:, None]
    zero = layer.embeddings_zero if grouped_int4(layer) else None
    return dequantize_int4_rows(
        layer, layer._embeddings, _float32(layer.embeddings_scale), zero, "float32"
    )


def dequantized_weights(layer):
    """A quantized layer's weights as float32 NumPy arrays, by float name.

    The same dequantization the layer's own forward pass applies (int8:
    `kernel / kernel_scale` on the kernel's axes; int4: unpacked, then per
    channel `/ scale` or per group `(q - zero) * scale`). A float8 layer
    keeps a float kernel (its scales apply to activations too) and returns
    it unchanged.

    Args:
        layer: a `keras.layers.Dense`, `EinsumDense` or `Embedding` (or
            subclass, e.g. `ReversibleEmbedding` with tied weights),
            quantized or not.

    Returns:
        `{name: np.ndarray}` with the layer's float variable names:
        `kernel` (and `bias`) or `embeddings`.
    """
    mode = layer.quantization_mode
    if mode not in (None, "int8", "int4", "float8"):
        raise ValueError(
            f"Cannot dequantize layer {layer.path!r}: quantization mode {mode!r} "
            f"is not one of {SUPPORTED_MODES}."
        )
    if isinstance(layer, keras.layers.Embedding):
        if not getattr(layer, "tie_weights", True):
            raise ValueError(
                f"Cannot dequantize {layer.path!r}: untied reverse embeddings "
                "are not part of a GPT-2 checkpoint."
            )
        value = layer._embeddings if mode in (None, "float8") else _embeddings(layer)
        return {"embeddings": ops.convert_to_numpy(_float32(value))}
    if isinstance(layer, keras.layers.EinsumDense):
        kernel = layer._kernel if mode in (None, "float8") else _einsum_dense_kernel(layer)
    elif isinstance(layer, keras.layers.Dense):
        kernel = layer._kernel if mode in (None, "float8") else _dense_kernel(layer)
    else:
        raise ValueError(
            f"Cannot dequantize {type(layer).__name__} {layer.path!r}: only Dense, "
            "EinsumDense and Embedding layers are quantized."
        )
    weights = {"kernel": ops.convert_to_numpy(_float32(kernel))}
    if layer.bias is not None:
        weights["bias"] = ops.convert_to_numpy(_float32(layer.bias))
    return weights


# ---------------------------------------------------------------------------
# A cheap fingerprint of a model's weights, for compiled-function caches.


def weights_signature(model):
    """A hashable summary of `model`'s weights: path, dtype, shape, identity.

    It changes when a layer is quantized, LoRA adapters are added or
    removed, or any weight is replaced or changes dtype; it does not look
    at values. Computing it costs microseconds per weight.

    Example:
    >>> dense = keras.layers.Dense(2)
    >>> dense.build((None, 3))
    >>> before = weights_signature(dense)
    >>> dense.quantize("int8")
    >>> weights_signature(dense) == before
    False
    """
    return tuple(
        (variable.path, str(variable.dtype), tuple(variable.shape), id(variable))
        for variable in model.weights
    )
