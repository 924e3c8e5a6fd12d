"""Keras' `Adam` and `AdamW`, updated by the backend's fused Adam kernel."""

import keras

from gpt2_lib.backends import fused_adam


def _fused_update_step(optimizer, parent, gradient, variable, learning_rate):
    if fused_adam.supports(optimizer, gradient, variable):
        fused_adam.adam_update(optimizer, gradient, variable, learning_rate)
    else:
        parent.update_step(optimizer, gradient, variable, learning_rate)


@keras.saving.register_keras_serializable(package="gpt2_lib")
class Adam(keras.optimizers.Adam):
    """`keras.optimizers.Adam`, computed by one fused kernel per variable.

    The same arguments, config, variables, checkpoints and update as Keras'
    `Adam`; on torch and TensorFlow each variable's update runs in the
    backend's fused Adam kernel (~10x less time in the optimizer for GPT-2
    base; `gpt2_lib.backends.fused_adam`). JAX, `amsgrad` and non-float32
    variables use Keras' own update.

    Example:
    >>> optimizer = gpt2_lib.optimizers.Adam(learning_rate=1e-3)
    >>> round(float(optimizer.get_config()["learning_rate"]), 6)
    0.001
    """

    def update_step(self, gradient, variable, learning_rate):
        _fused_update_step(self, keras.optimizers.Adam, gradient, variable, learning_rate)


@keras.saving.register_keras_serializable(package="gpt2_lib")
class AdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW`, computed by one fused kernel per variable.

    `GPT2CausalLM.compile(optimizer="auto")` uses it. The same arguments,
    config, variables, checkpoints and update as Keras' `AdamW` (decoupled
    weight decay, `exclude_from_weight_decay`, clipping, schedules); on torch
    and TensorFlow each variable's Adam update runs in the backend's fused
    kernel. JAX, `amsgrad` and non-float32 variables use Keras' own update.

    Example:
    >>> optimizer = gpt2_lib.optimizers.AdamW(learning_rate=5e-5, weight_decay=0.01)
    >>> optimizer.exclude_from_weight_decay(var_names=["bias"])
    >>> optimizer.get_config()["weight_decay"]
    0.01
    """

    def update_step(self, gradient, variable, learning_rate):
        _fused_update_step(self, keras.optimizers.AdamW, gradient, variable, learning_rate)


def use_fused_adam(optimizer):
    """Whether `optimizer` updates through the fused kernel (kept for compatibility).

    Earlier versions switched a Keras `Adam`/`AdamW` instance over by
    patching it. Optimizers are no longer modified: pass
    `gpt2_lib.optimizers.Adam` or `AdamW` (what `compile(optimizer="auto")`
    uses) to get the fused update.

    Returns:
        True if `optimizer` is a `gpt2_lib.optimizers.Adam` or `AdamW`, on
        torch or TensorFlow.

    Example:
    ```python
    use_fused_adam(gpt2_lib.optimizers.AdamW())  # True on torch and TensorFlow
    ```
    """
    fused_backend = keras.config.backend() in ("torch", "tensorflow")
    return fused_backend and isinstance(optimizer, (Adam, AdamW))
