"""Keras' Adam update for one variable, in each backend's fused Adam kernel.

Keras writes Adam's update as separate elementwise ops. On the torch backend
they run eagerly (`torch._foreach_*`), each a pass over every parameter-sized
buffer plus temporaries: ~0.7 s per step for GPT-2 base's 124M parameters on
a 2-core CPU, a tenth of a training step. On TensorFlow without XLA they run
as separate kernels too (~0.3 s). One fused kernel does the same update in
one pass: `torch._fused_adamw_` (~0.07 s) and `tf.raw_ops.ResourceApplyAdam`
(~0.08 s). JAX compiles the update with XLA, which fuses it already.
Figures: `benchmarks/NOTES.md`.

`gpt2_lib.optimizers.Adam` / `AdamW` call `adam_update` from their public
`update_step` (Keras' documented extension point) when `supports()` holds,
and Keras' own update otherwise. Decoupled weight decay stays Keras' (it is
applied before `update_step`), so the classes keep Keras' config, variables
and checkpoint format.
"""

import math

import keras


def supports(optimizer, gradient, variable):
    """Whether `adam_update` computes Keras' Adam update for this variable.

    True on torch (with `torch._fused_adamw_`) and TensorFlow for a dense
    float32 variable and gradient, without `amsgrad`, outside a
    `tf.distribute` strategy, and while the optimizer keeps its moments
    where Keras' Adam keeps them (`_momentums`, `_velocities`); everything
    else (JAX, other dtypes, sparse gradients, a future Keras that moved
    them) takes Keras' update.
    """
    if getattr(optimizer, "amsgrad", True) or not hasattr(optimizer, "_momentums"):
        return False
    if not hasattr(optimizer, "_velocities") or not hasattr(optimizer, "_get_variable_index"):
        return False
    backend = keras.config.backend()
    value = variable.value if isinstance(variable, keras.Variable) else variable
    if backend == "torch":
        import torch

        return (
            hasattr(torch, "_fused_adamw_")
            and isinstance(gradient, torch.Tensor)
            and value.dtype == torch.float32
            and value.layout == torch.strided
            and gradient.layout == torch.strided
            and gradient.device == value.device
        )
    if backend == "tensorflow":
        import tensorflow as tf

        return (
            not tf.distribute.has_strategy()
            and not isinstance(gradient, tf.IndexedSlices)
            and value.dtype == tf.float32
            and hasattr(value, "handle")
        )
    return False


def adam_update(optimizer, gradient, variable, learning_rate):
    """One Keras Adam step of `variable` in the backend's fused kernel."""
    index = optimizer._get_variable_index(variable)
    momentum = optimizer._momentums[index]
    velocity = optimizer._velocities[index]
    if keras.config.backend() == "torch":
        _torch_adam(optimizer, gradient, variable, momentum, velocity, learning_rate)
    else:
        _tensorflow_adam(optimizer, gradient, variable, momentum, velocity, learning_rate)


def _torch_adam(optimizer, gradient, variable, momentum, velocity, learning_rate):
    """`torch._fused_adamw_` with Keras' epsilon placement and no decay.

    Keras divides by `sqrt(v) + epsilon` and folds both bias corrections
    into the step size; torch divides by `sqrt(v / bias_correction2) +
    epsilon`. Passing `epsilon / sqrt(bias_correction2)` makes the two the
    same update.
    """
    import torch

    value = variable.value
    step = float(optimizer.iterations.value) + 1.0
    beta_1, beta_2 = float(optimizer.beta_1), float(optimizer.beta_2)
    with torch.no_grad():
        torch._fused_adamw_(
            [value],
            [gradient.to(value.dtype)],
            [momentum.value],
            [velocity.value],
            [],
            [torch.tensor(step, dtype=torch.float32, device=value.device)],
            lr=float(learning_rate),
            beta1=beta_1,
            beta2=beta_2,
            weight_decay=0.0,
            eps=float(optimizer.epsilon) / math.sqrt(1.0 - beta_2**step),
            amsgrad=False,
            maximize=False,
        )


def _tensorflow_adam(optimizer, gradient, variable, momentum, velocity, learning_rate):
    """`ResourceApplyAdam`, which computes exactly Keras' update:

    m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    var -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon).
    """
    import tensorflow as tf

    value = variable.value if isinstance(variable, keras.Variable) else variable
    step = tf.cast(optimizer.iterations + 1, tf.float32)
    beta_1 = tf.constant(optimizer.beta_1, tf.float32)
    beta_2 = tf.constant(optimizer.beta_2, tf.float32)
    tf.raw_ops.ResourceApplyAdam(
        var=value.handle,
        m=momentum.value.handle,
        v=velocity.value.handle,
        beta1_power=tf.pow(beta_1, step),
        beta2_power=tf.pow(beta_2, step),
        lr=tf.cast(learning_rate, tf.float32),
        beta1=beta_1,
        beta2=beta_2,
        epsilon=tf.constant(optimizer.epsilon, tf.float32),
        grad=tf.cast(gradient, tf.float32),
    )
