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


def check_updates(optimizer, variables):
    """Refuse Keras' `Adam`/`AdamW` on bfloat16 variables, whose update it makes 0.

    Keras computes an Adam update in the variable's dtype. In bfloat16
    `beta_2 = 0.999` rounds to 1, so `sqrt(1 - beta_2 ** step)` and every
    update are 0: `fit()` would run and leave the weights as they were
    (measured on torch and JAX, for a plain `Dense` too). float32 variables
    with bfloat16 compute (`dtype="mixed_bfloat16"`) train.

    Args:
        optimizer: the model's optimizer (a loss-scaling wrapper is looked through).
        variables: the variables it will update.

    Raises:
        ValueError: naming the variables and the dtype to train them in.

    Example:
    >>> check_updates(keras.optimizers.Adam(), [keras.Variable(1.0, dtype="float32")])
    """
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    if not isinstance(optimizer, keras.optimizers.Adam):
        return
    beta_2 = keras.ops.cast(keras.ops.cast(optimizer.beta_2, "bfloat16"), "float32")
    if float(keras.ops.convert_to_numpy(beta_2)) < 1.0:
        return
    frozen = [v for v in variables if keras.backend.standardize_dtype(v.dtype) == "bfloat16"]
    if frozen:
        raise ValueError(
            f"{len(frozen)} trainable variables are bfloat16 (e.g. `{frozen[0].path}`), and "
            f"Keras' {type(optimizer).__name__} computes their update in bfloat16, where "
            f"beta_2={optimizer.beta_2} rounds to 1: every update would be 0 and training would "
            "leave the weights unchanged. Train in dtype='mixed_bfloat16' (float32 weights, "
            "bfloat16 compute) or 'float32', e.g. GPT2CausalLM.from_preset(..., "
            "dtype='mixed_bfloat16'), or use an optimizer that updates bfloat16 variables."
        )
