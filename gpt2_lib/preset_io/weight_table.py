"""A backbone's weights, as the preset formats see them: through its table.

`backbone.weight_table()` lists the layers that own weights under stable
paths and roles (`gpt2_lib.layers.WeightTableEntry`), and
`gpt2_lib.utils.layer_variables.layer_variables(layer)` gives each layer's
variables in the order Keras saves them (quantized layers included). The
formats map `(role, block, variable index or name)` to their own names, so
nothing here knows how a block is built.

Example:
>>> import gpt2_lib
>>> backbone = gpt2_lib.models.GPT2Backbone(
...     vocabulary_size=10, num_layers=1, num_heads=2, hidden_dim=4,
...     intermediate_dim=8, max_sequence_length=6,
... )
>>> [(entry.role, name) for entry, name, _ in table_variables(backbone)][:3]
[('token_embedding', 'embeddings'), ('position_embedding', 'embeddings'), ('self_attention_layer_norm', 'gamma')]
"""

import keras

from gpt2_lib.utils.layer_variables import layer_variables


def has_weight_table(backbone):
    """Whether `backbone` describes its weights with `weight_table()`."""
    return callable(getattr(backbone, "weight_table", None))


def table_entries(backbone):
    """`backbone.weight_table()`, refusing layers with LoRA adapters.

    A layer with adapters stores its base kernel apart from the update; a
    preset written from it would silently drop the fine-tuning, and loading
    into it would keep stale adapters.
    """
    entries = list(backbone.weight_table())
    adapted = [entry.path for entry in entries if getattr(entry.layer, "lora_enabled", False)]
    if adapted:
        raise ValueError(
            f"{type(backbone).__name__} '{backbone.name}' has LoRA adapters on "
            f"{len(adapted)} layers (e.g. {adapted[0]!r}); presets and checkpoints "
            "hold plain weights. Call `backbone.merge_lora_weights()` first, or "
            "save the adapters with `backbone.save_lora_weights(...)`."
        )
    return entries


def table_variables(backbone):
    """`[(entry, variable name, variable)]` for every weight, in table order."""
    return [
        (entry, name, variable)
        for entry in table_entries(backbone)
        for name, variable in layer_variables(entry.layer)
    ]


def is_float_dtype(dtype):
    """Whether a NumPy/Keras dtype is floating point (bfloat16 included)."""
    return keras.backend.standardize_dtype(dtype).startswith(("float", "bfloat"))


def dtype_fits(stored, variable):
    """Whether data of dtype `stored` may load into `variable`.

    Floating point data loads into floating point variables (cast to their
    dtype); integer data only into integer variables of the same dtype
    (quantized kernels, int4 packed as int8), never into a float variable,
    where a silent cast would hide a file from another (quantized) model.

    Example:
    >>> import numpy as np
    >>> variable = keras.Variable(np.zeros(2, "float32"))
    >>> dtype_fits(np.dtype("float16"), variable), dtype_fits(np.dtype("int8"), variable)
    (True, False)
    """
    wanted = keras.backend.standardize_dtype(variable.dtype)
    if is_float_dtype(wanted):
        return is_float_dtype(stored)
    if wanted.startswith(("int", "uint")):
        return keras.backend.standardize_dtype(stored) == wanted
    return False
