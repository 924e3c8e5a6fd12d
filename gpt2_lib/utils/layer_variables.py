"""A layer's variables in the order Keras saves them, quantized layers included.

Keras' `Dense`, `EinsumDense` and `Embedding` layers list, per quantization
mode, the variables `save_own_variables()` writes (`kernel`, `bias`,
`kernel_scale`, ...; their `variable_serialization_spec`). KerasHub's preset
files store a layer's variables as `vars/0`, `vars/1`, ... in that order. This
returns the variable objects themselves (not values), so that a loader can
allocate or assign each one straight from a file.
"""

# Attributes that are properties over another variable in Keras' layers
# (`kernel` adds the LoRA update); the stored variable is the private one.
_STORED_ATTRIBUTE = {"kernel": "_kernel", "embeddings": "_embeddings"}


def layer_variables(layer):
    """`[(name, variable)]` of `layer`, in `save_own_variables()` order.

    Args:
        layer: a built Keras layer.

    Returns:
        A list of `(name, keras.Variable)`: for layers with a
        `variable_serialization_spec` (Dense, EinsumDense, Embedding and
        their subclasses) the spec of the layer's quantization mode, without
        the optional entries the layer does not have; for other layers their
        trainable then non-trainable variables, as `Layer.save_own_variables`.

    Example:
    >>> dense = keras.layers.Dense(3)
    >>> dense.build((None, 2))
    >>> [name for name, _ in layer_variables(dense)]
    ['kernel', 'bias']
    """
    spec = getattr(layer, "variable_serialization_spec", None)
    if spec is None:
        variables = list(layer._trainable_variables) + list(layer._non_trainable_variables)
        return [(variable.name, variable) for variable in variables]
    mode = layer.quantization_mode
    if mode not in spec:
        raise ValueError(
            f"Layer {layer.name!r} has quantization mode {mode!r}, which has no "
            f"serialization spec (known: {sorted(str(m) for m in spec)})."
        )
    pairs = []
    for name in spec[mode]:
        if name == "bias" and getattr(layer, "bias", None) is None:
            continue
        attribute = _STORED_ATTRIBUTE.get(name, name)
        variable = getattr(layer, attribute, None)
        if variable is None:
            continue  # optional in this configuration (kernel_zero, g_idx, ...)
        pairs.append((name, variable))
    return pairs
