"""Fast preset loads: build without initializing, then allocate from the file.

Building GPT-2 base draws ~124M normal random numbers and allocates 475 MiB,
then loading replaces all of it. `deferred_variables()` builds the model with
variables that have a shape but no memory, `initialize_variable()` allocates
each one straight from the weights file, and the rest (seed generators,
metrics) get their own initializers at the end. Inside `skip_weight_init()`,
`GPT2Backbone`'s `_gpt2_initializer()` returns `Zeros` instead of a random
initializer, for whatever is still initialized normally.

Under a `keras.distribution` (JAX), `initialize_variable()` builds each
value directly with the variable's sharding: every device gets its slice
read from the file, and no device (or host) ever holds the whole model
first (`gpt2_lib.utils.distribution.sharded_array`).
"""

import contextlib
import threading

import keras

from gpt2_lib.utils import distribution

_state = threading.local()


@contextlib.contextmanager
def skip_weight_init(enabled=True):
    """Within this block, GPT-2 kernels and embeddings are initialized to zeros.

    Args:
        enabled: bool; `skip_weight_init(False)` is a no-op, handy when
            weights are loaded only sometimes.

    Example:
    ```python
    with skip_weight_init():
        backbone = GPT2Backbone(**config)  # fast, all-zero weights
    backbone.load_weights(...)
    ```
    """
    previous = getattr(_state, "active", False)
    _state.active = bool(enabled) or previous
    try:
        yield
    finally:
        _state.active = previous


def is_skipping():
    """True inside `skip_weight_init()`."""
    return getattr(_state, "active", False)


# ---------------------------------------------------------------------------
# Deferred variables: a preset load allocates each weight once, from the file.
#
# Keras creates variables inside a `StatelessScope` with a shape but no value
# and registers them as uninitialized. A load builds the model that way, then
# gives each variable its first value straight from the file (no zeros first,
# so peak memory is about 1x the weights), and finally initializes whatever the
# file did not cover (seed generators, metrics) with its own initializer. This
# relies on Keras' `_deferred_initialize` protocol; without it (another Keras),
# variables are built normally and assigned.


def _supports_deferral():
    try:
        from keras.src.backend.common import global_state  # noqa: F401
    except ImportError:
        return False
    return hasattr(keras.Variable, "_deferred_initialize")


class DeferredVariables:
    """Variables created in `deferred_variables()`, until `close()`."""

    def __init__(self, enabled):
        self.enabled = enabled and _supports_deferral()
        self._start = 0
        self._scope = None
        self.variables = []

    @staticmethod
    def _registry():
        from keras.src.backend.common import global_state

        return global_state.get_global_attribute(
            "uninitialized_variables", [], set_to_default=True
        )

    def __enter__(self):
        if self.enabled:
            _state.deferring = getattr(_state, "deferring", 0) + 1
            self._start = len(self._registry())
            self._scope = keras.StatelessScope(initialize_variables=False)
            self._scope.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            _state.deferring -= 1
            self._scope.__exit__(*exc)
            registry = self._registry()
            self.variables = registry[self._start :]
            if exc[0] is not None:
                self.close(failed=True)
        return False

    @contextlib.contextmanager
    def loading(self):
        """`close()` after the block, or `close(failed=True)` if it raised."""
        try:
            yield self
        except BaseException:
            self.close(failed=True)
            raise
        self.close()

    def close(self, failed=False):
        """Initialize the variables nothing loaded, and unregister them all.

        Args:
            failed: bool; after a failed load the model is thrown away, so its
                variables are only unregistered, never allocated.
        """
        if not self.variables:
            return
        ours = {id(v) for v in self.variables}
        if not failed:
            materialize(self.variables)
        from keras.src.backend.common import global_state

        global_state.set_global_attribute(
            "uninitialized_variables",
            [v for v in self._registry() if id(v) not in ours],
        )
        self.variables = []


@contextlib.contextmanager
def deferred_variables(enabled=True):
    """Create variables with shapes but no memory until loaded or `close()`d.

    Also zero-initializes GPT-2's kernels (`skip_weight_init`): during the
    symbolic build Keras may evaluate an uninitialized variable's initializer
    as a placeholder, and zeros are cheaper than random draws.

    Args:
        enabled: bool; False builds normally.

    Yields:
        A `DeferredVariables`; call its `close()` after loading
        (`close(failed=True)` when the load failed), or use `build_and_load`.

    Example:
    ```python
    with deferred_variables() as deferred:
        backbone = GPT2Backbone(**config)  # no weight memory yet
    for variable, value in weights:
        initialize_variable(variable, value)
    deferred.close()  # seed generators etc. get their own initializers
    ```
    """
    with skip_weight_init(enabled), DeferredVariables(enabled) as deferred:
        yield deferred


def is_deferring():
    """True while a `deferred_variables()` (or `DeferredVariables`) block builds."""
    return getattr(_state, "deferring", 0) > 0


def build_and_load(build, load=None):
    """`build()` a model with deferred variables, then `load(model)` into it.

    Args:
        build: callable returning the model.
        load: callable filling the model's variables (with
            `initialize_variable`), or None to initialize them normally.

    Returns:
        The model, every variable initialized. If `load` raises, the model's
        variables are unregistered and the error propagates.
    """
    with deferred_variables(load is not None) as deferred:
        model = build()
    with deferred.loading():
        if load is not None:
            load(model)
    return model


def _is_deferred(variable):
    return getattr(variable, "_value", True) is None and getattr(
        variable, "_initializer", None
    ) is not None


def initialize_variable(variable, value):
    """Set `variable` to `value`, allocating it from `value` if deferred.

    Args:
        variable: a `keras.Variable` (deferred or not).
        value: an array of the variable's shape (any float dtype; cast to the
            variable's dtype). May be a `np.memmap` of a weights file.

    Under a distribution the value is built with the variable's sharding,
    each device reading only its slice of `value`.
    """
    sharding = distribution.variable_sharding(variable)
    if sharding is not None:
        array = distribution.sharded_array(value, sharding, _numpy_dtype(variable.dtype))
        if _is_deferred(variable):
            # Not `_deferred_initialize()`: Keras would pass the value through a
            # jitted initializer (and a second copy) for large sharded variables.
            variable._initialize(array)
            variable._initializer = None
        else:
            variable.assign(array)
        return
    if not _is_deferred(variable):
        variable.assign(_owned(value))
        return
    if keras.backend.backend() == "tensorflow":
        # A new `tf.Variable` copies its initial value: hand it the array
        # (even a file mapping) as is, unless a cast is needed.
        same = keras.backend.standardize_dtype(value.dtype) == variable.dtype
        initial = value if same else keras.ops.convert_to_tensor(value, variable.dtype)
    elif (
        keras.backend.backend() == "torch"
        and _numpy_dtype(variable.dtype) == value.dtype
        and keras.backend.standardize_dtype(value.dtype) != "bfloat16"  # NumPy-only type
    ):
        # `torch.from_numpy` shares the owned array's memory; Keras'
        # `convert_to_tensor` would copy it once more (`np.array(x)`):
        # 0.8 -> 0.2 s for GPT-2 base (`benchmarks/NOTES.md`).
        import torch

        initial = torch.from_numpy(_owned(value))
    else:
        # JAX wraps the (owned, aligned) array without a second copy.
        initial = keras.ops.convert_to_tensor(_owned(value), dtype=variable.dtype)
    variable._initializer = lambda shape, dtype: initial
    try:
        variable._deferred_initialize()
    finally:
        variable._initializer = None


def _owned(value):
    """`value`, copied out of the file if it is a memory map.

    JAX and torch would otherwise alias the mapping, and the weights would
    change (or fault) if the file changed. The copy is 64-byte aligned so that
    JAX adopts it as the variable's buffer instead of copying it once more.
    """
    import numpy as np

    if not isinstance(value, np.memmap):
        return value
    return distribution.owned_copy(value)


def _numpy_dtype(dtype):
    import numpy as np

    dtype = keras.backend.standardize_dtype(dtype)
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def materialize(variables):
    """Give every still-deferred variable in `variables` its initial value."""
    for variable in variables:
        if _is_deferred(variable):
            variable._deferred_initialize()
