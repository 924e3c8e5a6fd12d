"""Keras distributions as gpt2_lib uses them: shards, hosts and processes.

`keras.distribution` (`DataParallel`, `ModelParallel`) places each variable
on a device mesh with a layout; on several processes
(`keras.distribution.initialize()`, i.e. `jax.distributed.initialize()`)
every process runs the same program and holds the shards of its own devices.
These helpers are the few things gpt2_lib needs on top:

* `sharded_array(value, sharding)` builds a variable's value straight from a
  (memory-mapped) array, reading only the slices this process's devices hold;
  devices that hold the same slice share one host buffer while loading.
* `gather(value)` brings one whole value to this host (a collective when the
  value spans processes: every process calls it, in the same order).
* `is_writer()`, `all_agree(ok)`, `barrier(name)`: one process writes files,
  every process learns whether it worked.

Everything here is a no-op without a distribution and with one process, and
imports JAX only when the JAX backend is in use: `keras.distribution` places
variables on JAX only (`check_backend` turns a distribution set on another
backend into a clear error).

Example:
>>> import numpy as np
>>> current() is None, process_count(), is_writer()
(True, 1, True)
>>> gather(np.arange(3))
array([0, 1, 2])
"""

import keras
import numpy as np


def current():
    """The active `keras.distribution.Distribution`, or None."""
    return keras.distribution.distribution()


def _is_jax():
    return keras.config.backend() == "jax"


def check_backend(action, distribution=None):
    """Raise a clear error when a distribution is requested off JAX.

    Args:
        action: what was being done, for the message (e.g. "build a GPT2Backbone").
        distribution: the distribution to check; the active one by default.
    """
    distribution = current() if distribution is None else distribution
    if distribution is None or _is_jax():
        return
    raise ValueError(
        f"Cannot {action} under {type(distribution).__name__}: gpt2_lib distributes "
        f"models with `keras.distribution`, which places variables on the JAX backend "
        f"only, and this is the {keras.config.backend()} backend. Run with "
        "KERAS_BACKEND=jax, or call `keras.distribution.set_distribution(None)` to "
        "use one device."
    )


def process_count():
    """The number of processes (hosts) of the computation; 1 off JAX."""
    if not _is_jax():
        return 1
    import jax

    return jax.process_count()


def process_index():
    """This process's index in `[0, process_count())`; 0 off JAX."""
    if not _is_jax():
        return 0
    import jax

    return jax.process_index()


def is_writer():
    """Whether this process writes the files of a save (process 0)."""
    return process_index() == 0


def all_agree(ok):
    """Whether `ok` holds on every process (a collective; True/False alike).

    Every process must call it at the same point. With one process it
    returns `bool(ok)`.
    """
    if process_count() == 1:
        return bool(ok)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([1 if ok else 0], np.int32))
    return bool(np.all(flags))


def barrier(name):
    """Wait until every process reaches `barrier(name)` (no-op with one process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------------------
# Variable shardings.


def layout_sharding(layout):
    """The `jax.sharding.Sharding` of a `TensorLayout` (or a sharding as is)."""
    if layout is None:
        return None
    if isinstance(layout, keras.distribution.TensorLayout):
        return layout.backend_layout
    return layout


def variable_sharding(variable):
    """The sharding `variable` has, or will have when initialized; None if none.

    Without a distribution (or off JAX) this is None. For a variable not yet
    initialized, its layout is resolved the way Keras would (its own
    `_layout`, else the distribution's `get_variable_layout`) and recorded on
    the variable.
    """
    if not _is_jax():
        return None
    value = getattr(variable, "_value", None)
    if value is not None:
        sharding = getattr(value, "sharding", None)
        distributed = current() is not None or getattr(variable, "_layout", None) is not None
        return sharding if distributed else None
    if getattr(variable, "_layout", None) is None:
        distribution = current()
        if distribution is None:
            return None
        variable._layout = distribution.get_variable_layout(variable)
    return layout_sharding(variable._layout)


def owned_copy(value, dtype=None):
    """`value` copied into a new 64-byte aligned array (cast to `dtype`).

    JAX adopts such an array as a device buffer on the CPU without another
    copy, and it no longer depends on the file a memory map reads.
    """
    dtype = np.dtype(value.dtype if dtype is None else dtype)
    nbytes = int(np.prod(value.shape, dtype=np.int64)) * dtype.itemsize
    alignment = 64
    buffer = np.empty(nbytes + alignment, np.uint8)
    start = -buffer.ctypes.data % alignment
    copy = buffer[start : start + nbytes].view(dtype).reshape(value.shape)
    np.copyto(copy, value, casting="unsafe")
    return copy


def _index_key(index):
    return tuple((s.start, s.stop, s.step) if isinstance(s, slice) else s for s in index)


def sharded_array(value, sharding, dtype=None):
    """A `jax.Array` of `value` with `sharding`, reading only local slices.

    Args:
        value: a NumPy array (a `np.memmap` is read slice by slice) of the
            global shape.
        sharding: a `jax.sharding.Sharding` (e.g. `variable_sharding(v)`).
        dtype: the NumPy dtype of the result; `value`'s by default.

    Each slice this process's devices hold is read once; devices holding the
    same slice get the same host copy (JAX shares it on the CPU, and copies
    it to each accelerator), so a host never holds more than one copy of a
    slice while loading.
    """
    import jax

    dtype = np.dtype(value.dtype if dtype is None else dtype)
    cache = {}

    def read(index):
        key = _index_key(index)
        if key not in cache:
            cache[key] = owned_copy(value[index], dtype)
        return cache[key]

    array = jax.make_array_from_callback(tuple(value.shape), sharding, read, dtype=dtype)
    cache.clear()
    return array


# ---------------------------------------------------------------------------
# Gathering a sharded value to the host.


def _identity(x):
    return x


_jitted_identity = {}


def _spanning_axes(mesh):
    """Mesh axes along which the process index changes."""
    devices = np.asarray(mesh.devices)
    processes = np.vectorize(lambda d: d.process_index)(devices)
    spanning = set()
    for i, name in enumerate(mesh.axis_names):
        first = np.take(processes, [0], axis=i)
        if np.any(processes != first):
            spanning.add(name)
    return spanning


def _local_spec(spec, spanning):
    """`spec` without the mesh axes in `spanning` (each process then holds all of it)."""
    from jax.sharding import PartitionSpec

    entries = []
    for entry in spec:
        names = entry if isinstance(entry, tuple) else (entry,)
        kept = tuple(name for name in names if name is not None and name not in spanning)
        entries.append(None if not kept else kept[0] if len(kept) == 1 else kept)
    return PartitionSpec(*entries)


def gather(value):
    """The whole of `value` as a NumPy array on this host.

    A JAX array that spans several processes is first resharded so that each
    process holds all of it on its own devices (dropping only the mesh axes
    that cross processes), then copied out: a collective, so every process
    must gather the same values in the same order. Anything else is simply
    converted. One value at a time: a save gathers variable by variable.
    """
    if isinstance(value, keras.Variable):
        value = value.value
    if not _is_jax():
        return keras.ops.convert_to_numpy(value)
    import jax

    if not isinstance(value, jax.Array) or value.is_fully_addressable:
        return np.asarray(value)
    sharding = value.sharding
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = _local_spec(sharding.spec, _spanning_axes(sharding.mesh))
        target = jax.sharding.NamedSharding(sharding.mesh, spec)
    else:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    key = (target, value.shape, value.dtype)
    if key not in _jitted_identity:
        _jitted_identity[key] = jax.jit(_identity, out_shardings=target)
    local = _jitted_identity[key](value)
    out = np.empty(value.shape, value.dtype)
    for shard in local.addressable_shards:
        out[shard.index] = np.asarray(shard.data)
    return out
