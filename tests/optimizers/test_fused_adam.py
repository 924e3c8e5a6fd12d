"""The fused Adam(W) update computes Keras' own Adam(W) update."""

import keras
import numpy as np
import pytest

from gpt2_lib.optimizers import use_fused_adam

BACKEND = keras.config.backend()
FUSED_BACKENDS = ("torch", "tensorflow")


def _variables(seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    return [
        keras.Variable(rng.normal(size=(6, 5)), dtype=dtype, name="kernel"),
        keras.Variable(rng.normal(size=(5,)), dtype=dtype, name="bias"),
        keras.Variable(rng.normal(size=(7, 3)), dtype=dtype, name="embeddings"),
    ]


def _gradients(step, dtype="float32"):
    rng = np.random.default_rng(100 + step)
    shapes = [(6, 5), (5,), (7, 3)]
    return [keras.ops.convert_to_tensor(rng.normal(size=s), dtype=dtype) for s in shapes]


def _adamw(**kwargs):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=1, decay_rate=0.5)
    # A large epsilon against gradients ~1: a wrong epsilon placement shows.
    kwargs.setdefault("epsilon", 0.3)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=0.1, **kwargs)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    return optimizer


def _train(optimizer, variables, steps=4, dtype="float32", compiled=False):
    optimizer.build(variables)
    apply = lambda grads: optimizer.apply(grads, variables)  # noqa: E731
    if compiled and BACKEND == "tensorflow":
        import tensorflow as tf

        apply = tf.function(apply)
    for step in range(steps):
        apply(_gradients(step, dtype))
    moments = [keras.ops.convert_to_numpy(v) for v in optimizer._momentums + optimizer._velocities]
    return [np.asarray(keras.ops.convert_to_numpy(v), "float32") for v in variables], moments


@pytest.mark.parametrize("compiled", [False, True])
def test_fused_update_equals_keras_update(compiled):
    reference = _train(_adamw(), _variables(), compiled=compiled)
    optimizer = _adamw()
    assert use_fused_adam(optimizer) == (BACKEND in FUSED_BACKENDS)
    fused = _train(optimizer, _variables(), compiled=compiled)
    for expected, actual in zip(reference[0] + reference[1], fused[0] + fused[1]):
        # Same math, different float32 rounding order: ~1e-7 of weights ~1.
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=2e-6)
    # The update really moved the weights (and decayed only the kernels).
    assert not np.allclose(fused[0][0], keras.ops.convert_to_numpy(_variables()[0]))


def test_fused_adam_without_weight_decay_equals_keras_adam():
    reference = _train(keras.optimizers.Adam(0.01), _variables())
    optimizer = keras.optimizers.Adam(0.01)
    use_fused_adam(optimizer)
    fused = _train(optimizer, _variables())
    for expected, actual in zip(reference[0], fused[0]):
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=2e-6)


def test_optimizer_keeps_its_class_and_config():
    plain, optimizer = _adamw(name="adamw"), _adamw(name="adamw")
    use_fused_adam(optimizer)
    assert type(optimizer) is type(plain)
    assert keras.optimizers.serialize(optimizer) == keras.optimizers.serialize(plain)
    assert use_fused_adam(optimizer) == (BACKEND in FUSED_BACKENDS)  # idempotent


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.optimizers.AdamW(amsgrad=True),
        lambda: keras.optimizers.SGD(),
        lambda: type("MyAdam", (keras.optimizers.Adam,), {})(),
    ],
    ids=["amsgrad", "sgd", "subclass"],
)
def test_other_optimizers_are_left_alone(make):
    optimizer = make()
    assert use_fused_adam(optimizer) is False
    assert not hasattr(optimizer, "_fused_adam")


def test_non_float32_variables_take_keras_update():
    reference = _train(_adamw(), _variables(dtype="float16"), dtype="float16")
    optimizer = _adamw()
    use_fused_adam(optimizer)
    fused = _train(optimizer, _variables(dtype="float16"), dtype="float16")
    for expected, actual in zip(reference[0], fused[0]):
        np.testing.assert_array_equal(actual, expected)


def test_causal_lm_compile_uses_fused_adam_and_trains_like_keras():
    from gpt2_lib.models import GPT2Backbone
    from gpt2_lib.models import GPT2CausalLM

    def train(fused):
        keras.utils.set_random_seed(0)
        backbone = GPT2Backbone(vocabulary_size=30, num_layers=1, num_heads=2, hidden_dim=8,
                                intermediate_dim=16, max_sequence_length=8, dropout=0.0)
        lm = GPT2CausalLM(backbone)
        if not fused:
            # Keras' own compile: no fused update.
            keras.Model.compile(lm, optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.1),
                                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        else:
            lm.compile(optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.1))
            assert getattr(lm.optimizer, "_fused_adam", False) == (BACKEND in FUSED_BACKENDS)
        tokens = np.random.default_rng(0).integers(0, 30, (4, 8))
        mask = np.ones((4, 8), bool)
        mask[0, 5:] = False
        lm.fit({"token_ids": tokens, "padding_mask": mask}, batch_size=2, epochs=2,
               shuffle=False, verbose=0)
        return [keras.ops.convert_to_numpy(w) for w in lm.trainable_weights]

    for expected, actual in zip(train(fused=False), train(fused=True)):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6)


def test_the_fused_kernel_runs(monkeypatch):
    if BACKEND == "jax":  # XLA fuses Keras' update itself: nothing to switch.
        assert use_fused_adam(_adamw()) is False
        return
    if BACKEND == "torch":
        import torch as module

        owner, name = module, "_fused_adamw_"
    else:
        import tensorflow as module

        owner, name = module.raw_ops, "ResourceApplyAdam"
    kernel, calls = getattr(owner, name), []

    def spy(*args, **kwargs):
        calls.append(name)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    optimizer = _adamw()
    use_fused_adam(optimizer)
    _train(optimizer, _variables(), steps=1)
    # torch: one call per weight-decay group; TensorFlow: one per variable.
    assert len(calls) == (2 if BACKEND == "torch" else 3)
