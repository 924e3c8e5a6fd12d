"""Layouts of a backbone's weights on a device mesh, from its weight table.

`GPT2Backbone.get_layout_map(mesh)` returns a `WeightTableLayoutMap`: a
`keras.distribution.LayoutMap` whose rules are written per weight table role
and dimension (`RULES`): attention projections are split by heads, the MLP
by its intermediate axis and the embeddings by the hidden axis over the
model-parallel mesh axis (Megatron style), and each large matrix's other
axis over the data-parallel axis (FSDP style, as KerasHub's layout maps do),
where that axis has more than one device.

Whether a split is possible depends on the sizes: 12 heads do not split over
8 devices. The rules therefore name, per variable, the dimensions to try in
order (heads, then head_dim, then hidden for attention); `resolve_layouts`
checks each variable's real shape and takes the first dimension the mesh
axis divides, and says so in one warning line per fallback. A backbone built
under a `ModelParallel` distribution (`BuildScope`, used by `GPT2Backbone`)
defers its variables, resolves every layout, then allocates each variable
directly with it. Quantized variables (an int8 kernel has the kernel's
shape; a `kernel_scale` follows the kernel dimensions it shares) and LoRA
adapters (`lora_kernel_a` follows the kernel's input dimensions,
`lora_kernel_b` its output dimension) get layouts derived from their
kernel's, recorded in the map so that adapters created later are sharded
at creation.

A layout map of the user's own (not a `WeightTableLayoutMap`) is honoured
as given, except that an axis that does not divide a variable's dimension
is replicated instead, with a warning.

Example:
>>> import keras
>>> mesh = keras.distribution.DeviceMesh((1, 1), ["batch", "model"], devices=["cpu:0"])
>>> layout_map = layout_map_for(mesh)
>>> layout_map["transformer_layer_3/self_attention/query/kernel"].axes
(None, 'model', None)
"""

import contextlib
import re
import warnings

import keras

from gpt2_lib.preset_io import fast_init
from gpt2_lib.utils import distribution as dist
from gpt2_lib.utils.layer_variables import layer_variables

# role -> variable name -> (dimension names, model-axis candidates, data-axis
# candidates). Embeddings are not split over the data axis: gathering rows of
# a table split that way makes XLA replicate the activations.
_ATTENTION_IN = {
    "kernel": (("hidden", "heads", "head_dim"), ("heads", "head_dim", "hidden"), ("hidden",)),
    "bias": (("heads", "head_dim"), ("heads", "head_dim"), ()),
}
RULES = {
    "token_embedding": {
        "embeddings": (("vocabulary", "hidden"), ("hidden",), ()),
    },
    "position_embedding": {
        "embeddings": (("positions", "hidden"), ("hidden",), ()),
    },
    "self_attention/query": _ATTENTION_IN,
    "self_attention/key": _ATTENTION_IN,
    "self_attention/value": _ATTENTION_IN,
    "self_attention/attention_output": {
        "kernel": (("heads", "head_dim", "hidden"), ("heads", "head_dim", "hidden"), ("hidden",)),
        "bias": (("hidden",), (), ()),
    },
    "feedforward_intermediate_dense": {
        "kernel": (("hidden", "intermediate"), ("intermediate", "hidden"), ("hidden",)),
        "bias": (("intermediate",), ("intermediate",), ()),
    },
    "feedforward_output_dense": {
        "kernel": (("intermediate", "hidden"), ("intermediate", "hidden"), ("hidden",)),
        "bias": (("hidden",), (), ()),
    },
}
_LORA = ("lora_kernel_a", "lora_kernel_b")


class MeshLayout(keras.distribution.TensorLayout):
    """A `TensorLayout` whose entries may be a tuple of mesh axes.

    `("batch", "model")` on one dimension splits it over both axes (all the
    devices of a 2D mesh), as `jax.sharding.PartitionSpec` allows.
    """

    def _validate_axes(self):
        if self._device_mesh:
            names = {
                name
                for entry in self._axes
                if entry is not None
                for name in (entry if isinstance(entry, tuple) else (entry,))
            }
            invalid = names - set(self._device_mesh.axis_names)
            if invalid:
                raise ValueError(
                    f"Invalid axis names for a layout: {sorted(invalid)}; the mesh has "
                    f"{list(self._device_mesh.axis_names)}."
                )


def _make_layout(axes, mesh):
    axes = tuple(axes)
    if any(isinstance(entry, tuple) for entry in axes):
        return MeshLayout(axes, mesh)
    return keras.distribution.TensorLayout(axes, mesh)


def _axis_size(mesh, name):
    if name is None or name not in mesh.axis_names:
        return 1
    return int(mesh.shape[list(mesh.axis_names).index(name)])


class WeightTableLayoutMap(keras.distribution.LayoutMap):
    """A `LayoutMap` from weight table roles, resolved against real shapes.

    Looked up by variable path like any `LayoutMap`, it gives each weight's
    preferred layout (`layout_map["transformer_layer_0/self_attention/query/kernel"]`).
    A backbone built under it resolves the layouts of its own variables
    (`resolve_layouts`); those, and the layouts of LoRA adapters derived from
    them, are then what the map returns for that backbone's paths.

    Args:
        device_mesh: the `keras.distribution.DeviceMesh`.
        model_parallel_dim_name: the mesh axis weights are split over.
        data_parallel_dim_name: the mesh axis of the batch; large matrices
            are also split over it (when it has more than one device).
    """

    def __init__(self, device_mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch"):
        super().__init__(device_mesh)
        if model_parallel_dim_name not in device_mesh.axis_names:
            raise ValueError(
                f"{model_parallel_dim_name!r} is not an axis of the device mesh "
                f"{list(device_mesh.axis_names)}. Pass `model_parallel_dim_name=` one "
                "of them."
            )
        if data_parallel_dim_name is not None and data_parallel_dim_name not in device_mesh.axis_names:
            data_parallel_dim_name = None  # a mesh without a batch axis: model parallel only
        self.model_parallel_dim_name = model_parallel_dim_name
        self.data_parallel_dim_name = data_parallel_dim_name
        self._resolved = {}
        for role, variables in RULES.items():
            prefix = role if role in ("token_embedding", "position_embedding") else (
                rf"transformer_layer_\d+/{re.escape(role)}"
            )
            for name, (dims, model_dims, data_dims) in variables.items():
                axes = [None] * len(dims)
                if model_dims:
                    axes[dims.index(model_dims[0])] = model_parallel_dim_name
                if data_dims and self._data_size() > 1:
                    axes[dims.index(data_dims[0])] = data_parallel_dim_name
                self[f"{prefix}/{name}"] = _make_layout(axes, None)

    def _data_size(self):
        return _axis_size(self.device_mesh, self.data_parallel_dim_name)

    def _model_size(self):
        return _axis_size(self.device_mesh, self.model_parallel_dim_name)

    def __getitem__(self, key):
        if key in self._resolved:
            return self._resolved[key]
        return super().__getitem__(key)

    def axes_for(self, role, name, shape):
        """`(axes, fallback)` for a variable of `role`/`name` with `shape`.

        `axes` has one entry per dimension (a mesh axis name, a tuple of
        them, or None); `fallback` is `(dimension, size, used instead)` when
        the preferred dimension could not be split, else None. Unknown
        roles, names or ranks are replicated.
        """
        rule = RULES.get(role, {}).get(name)
        axes = [None] * len(shape)
        if rule is None or len(rule[0]) != len(shape):
            return axes, None
        dims, model_dims, data_dims = rule
        model, data = self.model_parallel_dim_name, self.data_parallel_dim_name
        m, d = self._model_size(), self._data_size()
        chosen = next((dims.index(n) for n in model_dims if shape[dims.index(n)] % m == 0), None)
        fallback = None
        if model_dims and (chosen is None or dims[chosen] != model_dims[0]):
            preferred = dims.index(model_dims[0])
            fallback = (model_dims[0], shape[preferred], None if chosen is None else dims[chosen])
        if chosen is not None:
            axes[chosen] = model
        for name in data_dims if d > 1 else ():
            if dims.index(name) != chosen and shape[dims.index(name)] % d == 0:
                axes[dims.index(name)] = data
                break
        return axes, fallback


def layout_map_for(device_mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch"):
    """A `WeightTableLayoutMap` for `device_mesh` (see `GPT2Backbone.get_layout_map`)."""
    return WeightTableLayoutMap(device_mesh, model_parallel_dim_name, data_parallel_dim_name)


# ---------------------------------------------------------------------------
# Resolving a backbone's layouts.


def _entry_variables(entry):
    """`[(name, variable)]` of a weight table layer: saved variables, then LoRA."""
    pairs = list(layer_variables(entry.layer))
    for name in _LORA:
        variable = getattr(entry.layer, name, None)
        if variable is not None:
            pairs.append((name, variable))
    return pairs


def _aligned_axes(shape, kernel_shape, kernel_axes):
    """Axes for a variable sharing some dimensions with its layer's kernel.

    Dimensions are matched right-aligned (a `kernel_scale` of the output
    dimensions), else left-aligned; unmatched ones are replicated.
    """
    for offset in (len(kernel_shape) - len(shape), 0):
        axes = []
        for i, size in enumerate(shape):
            j = i + offset
            ok = 0 <= j < len(kernel_shape) and kernel_shape[j] == size
            axes.append(kernel_axes[j] if ok else None)
        if any(axis is not None for axis in axes):
            return axes
    return [None] * len(shape)


def _lora_axes(name, kernel_axes):
    if name == "lora_kernel_a":
        return list(kernel_axes[:-1]) + [None]
    return [None, kernel_axes[-1]]


def _divisible(axes, shape, mesh):
    for entry, size in zip(axes, shape):
        names = entry if isinstance(entry, tuple) else (entry,)
        count = 1
        for name in names:
            count *= _axis_size(mesh, name)
        if size % count:
            return False
    return True


def _checked_user_axes(layout, shape, mesh, path, notes):
    """The user's layout with every axis that does not divide its dimension replicated."""
    axes = list(layout.axes) if layout is not None else [None] * len(shape)
    if len(axes) != len(shape):
        raise ValueError(
            f"The layout {tuple(axes)} for variable {path!r} has {len(axes)} "
            f"entries, but the variable has shape {tuple(shape)}. Fix its entry in "
            "the LayoutMap."
        )
    for i, (entry, size) in enumerate(zip(axes, shape)):
        if entry is not None and not _divisible([entry], [size], mesh):
            notes.append(
                f"{path}: dimension {i} ({size}) does not split over mesh axis "
                f"{entry!r}; it is replicated instead."
            )
            axes[i] = None
    return axes


def resolve_layouts(backbone, distribution, warn=True):
    """`[(variable, TensorLayout)]` for every weight table variable of `backbone`.

    Without a layout map (`DataParallel`) every layout replicates. With a
    `WeightTableLayoutMap` the rules apply to the real shapes, with
    fallbacks; with another `LayoutMap` its layouts are used, replicating
    axes that do not divide. Fallbacks are reported in one warning line each
    (unless `warn=False`).
    """
    layout_map = getattr(distribution, "_layout_map", None)
    if layout_map is None:
        # DataParallel: every weight replicated (also those built before the
        # distribution was set).
        return [
            (variable, keras.distribution.TensorLayout([None] * len(variable.shape), distribution.device_mesh))
            for entry in backbone.weight_table()
            for _, variable in _entry_variables(entry)
        ]
    mesh = layout_map.device_mesh
    ours = isinstance(layout_map, WeightTableLayoutMap)
    result, fallbacks, notes = [], {}, []
    for entry in backbone.weight_table():
        pairs = _entry_variables(entry)
        kernel = dict(pairs).get("kernel", dict(pairs).get("embeddings"))
        kernel_axes = None
        for name, variable in pairs:
            shape = tuple(variable.shape)
            if not ours:
                axes = _checked_user_axes(layout_map[variable.path], shape, mesh, variable.path, notes)
            elif name in _LORA and kernel_axes is not None:
                axes = _lora_axes(name, kernel_axes)
            elif name in RULES.get(entry.role, {}) or kernel_axes is None:
                axes, fallback = layout_map.axes_for(entry.role, name, shape)
                if fallback is not None and name in ("kernel", "embeddings"):  # biases follow
                    fallbacks.setdefault(fallback, []).append(entry.path)
            else:
                axes = _aligned_axes(shape, tuple(kernel.shape), kernel_axes)
                if not _divisible(axes, shape, mesh):
                    axes = [None] * len(shape)
            if variable is kernel:
                kernel_axes = axes
            result.append((variable, _make_layout(axes, mesh)))
        if ours and kernel_axes is not None:
            # Adapters created later (enable_lora) are sharded like their kernel.
            prefix = kernel.path.rsplit("/", 1)[0]
            for name in _LORA:
                layout = _make_layout(_lora_axes(name, kernel_axes), mesh)
                layout_map._resolved[f"{prefix}/{name}"] = layout
    if ours:
        for variable, layout in result:
            layout_map._resolved[variable.path] = layout
        model = layout_map.model_parallel_dim_name
        for (dim, size, instead), paths in fallbacks.items():
            target = f"sharded along {instead}" if instead else "replicated"
            notes.append(
                f"{dim}={size} does not split over the {layout_map._model_size()} "
                f"devices of mesh axis {model!r}; {_describe(paths)} are {target} "
                "instead."
            )
    for note in notes if warn else ():
        warnings.warn(f"{type(backbone).__name__} layout: {note}", stacklevel=_user_stacklevel())
    return result


def _user_stacklevel():
    """The `stacklevel` of the first caller outside gpt2_lib and Keras."""
    import os
    import sys

    roots = (
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        os.path.dirname(os.path.abspath(keras.__file__)),
    )
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(roots):
        frame, level = frame.f_back, level + 1
    return level


def _describe(paths):
    """`transformer_layer_{0..11}/self_attention/{query,key}`-style summary of paths."""
    blocks, roles, others = set(), [], []
    for path in paths:
        match = re.fullmatch(r"transformer_layer_(\d+)/(.+)", path)
        if match is None:
            others.append(path)
            continue
        blocks.add(int(match.group(1)))
        if match.group(2) not in roles:
            roles.append(match.group(2))
    parts = list(others)
    if blocks:
        low, high = min(blocks), max(blocks)
        block = f"{{{low}..{high}}}" if high > low else str(low)
        heads = {role.rsplit("/", 1)[0] for role in roles if "/" in role}
        if len(roles) == 1:
            role = roles[0]
        elif len(heads) == 1 and all("/" in r for r in roles):
            role = heads.pop() + "/{" + ",".join(r.rsplit("/", 1)[1] for r in roles) + "}"
        else:
            role = "{" + ",".join(roles) + "}"
        parts.append(f"transformer_layer_{block}/{role}")
    return ", ".join(parts)


def _same_sharding(value, layout):
    sharding = getattr(value, "sharding", None)
    target = dist.layout_sharding(layout)
    try:
        return sharding is not None and sharding.is_equivalent_to(target, len(value.shape))
    except (AttributeError, TypeError, ValueError):
        return False


def apply_layouts(backbone, distribution=None, warn=True):
    """Give `backbone`'s weights the layouts `resolve_layouts` finds.

    Variables not yet allocated (deferred) just get their layout; allocated
    ones whose sharding differs are resharded (e.g. adapters or quantized
    kernels created outside the map's rules, or weights built before the
    distribution was set). Under `DataParallel` every weight is replicated.

    Args:
        backbone: a backbone with a `weight_table()`.
        distribution: the distribution; the active one by default.
        warn: bool, whether to warn about layout fallbacks (they are warned
            once, when the backbone is built).
    """
    distribution = dist.current() if distribution is None else distribution
    if distribution is None:
        return
    dist.check_backend(f"lay out the weights of {type(backbone).__name__}", distribution)
    for variable, layout in resolve_layouts(backbone, distribution, warn):
        if getattr(variable, "_value", None) is None:
            variable._layout = layout
        elif not _same_sharding(variable._value, layout):
            variable._layout = layout
            variable._direct_assign(variable._value)


class BuildScope:
    """Build a backbone so that each weight is allocated once, with its layout.

    Under a `ModelParallel` distribution the variables created in the block
    are deferred (unless a preset load already defers them); `finish(backbone)`
    resolves their layouts from the weight table and, if this scope deferred
    them, allocates each one directly sharded. Without a distribution, or
    under `DataParallel` (every weight replicated), it does nothing.

    Example:
    ```python
    with BuildScope() as scope:
        ...  # create the layers and the functional graph
    scope.finish(backbone)
    ```
    """

    def __init__(self):
        self.distribution = dist.current()
        if self.distribution is not None:
            dist.check_backend("build a backbone", self.distribution)
        sharded = getattr(self.distribution, "_layout_map", None) is not None
        self.deferred = None
        if sharded and not fast_init.is_deferring():
            self.deferred = fast_init.DeferredVariables(True)

    def __enter__(self):
        if self.deferred is not None:
            self.deferred.__enter__()
        return self

    def __exit__(self, *exc):
        if self.deferred is not None:
            self.deferred.__exit__(*exc)
        return False

    def finish(self, backbone):
        """Resolve layouts, then allocate the variables this scope deferred."""
        if getattr(self.distribution, "_layout_map", None) is None:
            return
        with contextlib.ExitStack() as stack:
            if self.deferred is not None:
                stack.enter_context(self.deferred.loading())
            apply_layouts(backbone, self.distribution)


def make_distribution(model_parallel=1, data_parallel=None, devices=None):
    """A `keras.distribution` for GPT-2 over all devices (of all processes).

    `model_parallel=1` gives `DataParallel` (every device holds the whole
    model); more gives `ModelParallel` on a `(data_parallel, model_parallel)`
    mesh with `GPT2Backbone`'s layout map. Set it with
    `keras.distribution.set_distribution()` before building or loading the
    model. JAX only (`keras.distribution` places variables on JAX).

    Args:
        model_parallel: int, devices each weight is split over.
        data_parallel: int, model replicas the batch is split over; by
            default all the devices `model_parallel` leaves.
        devices: the devices (`keras.distribution.list_devices()` by default).

    Returns:
        A `keras.distribution.DataParallel` or `ModelParallel`.

    Example:
    ```python
    keras.distribution.initialize()  # with several hosts
    keras.distribution.set_distribution(make_distribution(model_parallel=4))
    lm = gpt2_lib.models.GPT2CausalLM.from_preset("gpt2_medium_en")
    ```
    """
    if keras.config.backend() != "jax":
        raise ValueError(
            "Data and model parallelism use `keras.distribution`, which places "
            f"variables on the JAX backend only; this is the {keras.config.backend()} "
            "backend. Run with KERAS_BACKEND=jax."
        )
    devices = keras.distribution.list_devices() if devices is None else list(devices)
    count = len(devices)
    for name, value in (("model_parallel", model_parallel), ("data_parallel", data_parallel)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}.")
    if count % model_parallel:
        raise ValueError(
            f"model_parallel={model_parallel} does not divide the {count} devices "
            f"({', '.join(devices[:4])}{', ...' if count > 4 else ''}). Use a divisor of {count}."
        )
    data_parallel = count // model_parallel if data_parallel is None else data_parallel
    if data_parallel * model_parallel != count:
        raise ValueError(
            f"data_parallel={data_parallel} x model_parallel={model_parallel} = "
            f"{data_parallel * model_parallel} devices, but there are {count}. Their "
            "product must be the device count (leave data_parallel unset to use all)."
        )
    if model_parallel == 1:
        return keras.distribution.DataParallel(devices=devices)
    mesh = keras.distribution.DeviceMesh((data_parallel, model_parallel), ["batch", "model"], devices)
    return keras.distribution.ModelParallel(layout_map=layout_map_for(mesh), batch_dim_name="batch")
