"""Keras `Adam`/`AdamW` updates through each backend's fused Adam kernel.

Keras writes Adam's update as separate elementwise ops. On the torch backend
they run eagerly (`torch._foreach_*`), each one a pass over every
parameter-sized buffer plus temporaries: ~0.7 s per step for GPT-2 base's
124M parameters on a 2-core CPU, a tenth of a training step. On TensorFlow
without XLA they run as separate kernels too (~0.3 s). One fused kernel does
the same update in one pass: `torch._fused_adamw_` (~0.07 s, weight decay
included) and `tf.raw_ops.ResourceApplyAdam` (~0.08 s). JAX compiles the
update with XLA, which fuses it already. Figures: `benchmarks/NOTES.md`.

`use_fused_adam(optimizer)` switches one optimizer instance over. It keeps
its class, config, variables and checkpoint format; only how the update is
computed changes, and only where the fused kernel computes Keras' update
(dense float32 variables, no `amsgrad`, no `tf.distribute` strategy).
Everything else goes through Keras' own update, unchanged.
"""

import math

import keras


def use_fused_adam(optimizer):
    """Update `optimizer` with the backend's fused Adam kernel where it applies.

    Args:
        optimizer: a `keras.optimizers.Adam` or `keras.optimizers.AdamW`
            (exactly those classes: subclasses may change the update).

    Returns:
        True if the optimizer now uses the fused update; False, with the
        optimizer untouched, on JAX, for other optimizers, for `amsgrad=True`
        or without the backend's kernel.

    Example:
    ```python
    optimizer = keras.optimizers.AdamW(learning_rate=5e-5, weight_decay=0.01)
    use_fused_adam(optimizer)  # True on torch and TensorFlow
    ```
    """
    if getattr(optimizer, "_fused_adam", False):
        return True
    if type(optimizer) not in _keras_adam_classes() or optimizer.amsgrad:
        return False
    install = {"torch": _use_torch_fused_adamw, "tensorflow": _use_tensorflow_apply_adam}
    backend = keras.config.backend()
    if backend not in install or not install[backend](optimizer):
        return False
    optimizer._fused_adam = True
    return True


def _keras_adam_classes():
    if keras.config.backend() == "torch":
        from keras.src.backend.torch.optimizers import torch_adam
        from keras.src.backend.torch.optimizers import torch_adamw

        return (torch_adam.Adam, torch_adamw.AdamW)
    return (keras.optimizers.Adam, keras.optimizers.AdamW)


# torch ------------------------------------------------------------------------


def _use_torch_fused_adamw(optimizer):
    import torch

    if not hasattr(torch, "_fused_adamw_"):
        return False
    keras_weight_decay = optimizer._apply_weight_decay
    keras_update_step = optimizer._backend_update_step

    def apply_weight_decay(variables):
        # The fused update applies the decay itself, in the same pass.
        if not _torch_fusable(variables):
            keras_weight_decay(variables)

    def update_step(grads, variables, learning_rate):
        if not _torch_fusable(variables):
            return keras_update_step(grads, variables, learning_rate)
        with torch.no_grad():
            _torch_fused_update(optimizer, grads, variables, learning_rate)

    optimizer._apply_weight_decay = apply_weight_decay
    optimizer._backend_update_step = update_step
    return True


def _torch_fusable(variables):
    """Dense float32 torch variables, all on one device."""
    import torch

    values = [v.value for v in variables]
    return bool(values) and all(
        value.dtype == torch.float32
        and value.layout == torch.strided
        and value.device == values[0].device
        for value in values
    )


def _torch_fused_update(optimizer, grads, variables, learning_rate):
    """One Keras Adam(W) step for `variables`, through `torch._fused_adamw_`.

    Keras divides by `sqrt(v) + epsilon` and folds both bias corrections into
    the step size; torch divides by `sqrt(v / bias_correction2) + epsilon`.
    Passing `epsilon / sqrt(bias_correction2)` makes the two the same update.
    Keras' decoupled weight decay, `variable * (1 - weight_decay * lr)`
    before the update, is the fused kernel's own.
    """
    import torch

    step = float(optimizer.iterations.value) + 1.0
    beta_1, beta_2 = float(optimizer.beta_1), float(optimizer.beta_2)
    epsilon = float(optimizer.epsilon) / math.sqrt(1.0 - beta_2**step)
    learning_rate = float(learning_rate)
    step_tensor = torch.tensor(step, dtype=torch.float32, device=variables[0].value.device)
    weight_decay = float(optimizer.weight_decay or 0.0)
    groups = {}
    for grad, variable in zip(grads, variables):
        decay = weight_decay if weight_decay and optimizer._use_weight_decay(variable) else 0.0
        index = optimizer._get_variable_index(variable)
        group = groups.setdefault(decay, ([], [], [], []))
        group[0].append(variable.value)
        group[1].append(grad.to(variable.value.dtype))
        group[2].append(optimizer._momentums[index].value)
        group[3].append(optimizer._velocities[index].value)
    for decay, (params, param_grads, momentums, velocities) in groups.items():
        torch._fused_adamw_(
            params,
            param_grads,
            momentums,
            velocities,
            [],
            [step_tensor] * len(params),
            lr=learning_rate,
            beta1=beta_1,
            beta2=beta_2,
            weight_decay=decay,
            eps=epsilon,
            amsgrad=False,
            maximize=False,
        )


# TensorFlow -------------------------------------------------------------------


def _use_tensorflow_apply_adam(optimizer):
    import tensorflow as tf

    keras_update_step = optimizer.update_step

    def update_step(gradient, variable, learning_rate):
        value = variable.value if isinstance(variable, keras.Variable) else variable
        if (
            tf.distribute.has_strategy()
            or isinstance(gradient, tf.IndexedSlices)
            or value.dtype != tf.float32
            or not hasattr(value, "handle")
        ):
            return keras_update_step(gradient, variable, learning_rate)
        # `ResourceApplyAdam` computes exactly Keras' update:
        # m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
        # var -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon).
        index = optimizer._get_variable_index(variable)
        step = tf.cast(optimizer.iterations + 1, tf.float32)
        beta_1 = tf.constant(optimizer.beta_1, tf.float32)
        beta_2 = tf.constant(optimizer.beta_2, tf.float32)
        tf.raw_ops.ResourceApplyAdam(
            var=value.handle,
            m=optimizer._momentums[index].value.handle,
            v=optimizer._velocities[index].value.handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, tf.float32),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.constant(optimizer.epsilon, tf.float32),
            grad=tf.cast(gradient, tf.float32),
        )

    optimizer.update_step = update_step
    return True
