"""`gpt2_lib.optimizers.Adam/AdamW` compute Keras' own Adam(W) update."""

import keras
import numpy as np
import pytest

from gpt2_lib import optimizers
from gpt2_lib.backends import fused_adam

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


def _adamw(cls=keras.optimizers.AdamW, **kwargs):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=1, decay_rate=0.5)
    # A large epsilon against gradients ~1: a wrong epsilon placement shows.
    kwargs.setdefault("epsilon", 0.3)
    optimizer = cls(learning_rate=schedule, weight_decay=0.1, global_clipnorm=2.0, **kwargs)
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
def test_fused_adamw_equals_keras_adamw(compiled):
    reference = _train(_adamw(), _variables(), compiled=compiled)
    optimizer = _adamw(optimizers.AdamW)
    assert optimizers.use_fused_adam(optimizer) == (BACKEND in FUSED_BACKENDS)
    fused = _train(optimizer, _variables(), compiled=compiled)
    for expected, actual in zip(reference[0] + reference[1], fused[0] + fused[1]):
        # Same math, different float32 rounding order: ~1e-7 of weights ~1.
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=2e-6)
    # The update really moved the weights (and decayed only the kernels).
    assert not np.allclose(fused[0][0], keras.ops.convert_to_numpy(_variables()[0]))


def test_fused_adam_equals_keras_adam():
    reference = _train(keras.optimizers.Adam(0.01), _variables())
    fused = _train(optimizers.Adam(0.01), _variables())
    for expected, actual in zip(reference[0], fused[0]):
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=2e-6)


def test_same_config_and_variables_as_keras():
    ours, theirs = _adamw(optimizers.AdamW, name="adamw"), _adamw(name="adamw")
    assert isinstance(ours, keras.optimizers.AdamW)
    assert ours.get_config() == theirs.get_config()
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(ours))
    assert type(restored) is type(ours)
    variables = _variables()
    ours.build(variables)
    theirs.build(_variables())
    assert [v.path for v in ours.variables] == [v.path for v in theirs.variables]


def test_user_optimizers_are_never_modified():
    optimizer = keras.optimizers.AdamW()
    before = dict(vars(optimizer))
    assert optimizers.use_fused_adam(optimizer) is False
    assert dict(vars(optimizer)).keys() == before.keys()
    assert "update_step" not in vars(optimizer)


def test_amsgrad_and_non_float32_take_keras_update(monkeypatch):
    fused_calls = []
    monkeypatch.setattr(fused_adam, "adam_update", lambda *a: fused_calls.append(a))
    # Keras' per-variable update (torch: Keras' own foreach variant rounds
    # differently in the last bit).
    reference = _train(_adamw(amsgrad=True), _variables())
    fused = _train(_adamw(optimizers.AdamW, amsgrad=True), _variables())
    for expected, actual in zip(reference[0], fused[0]):
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-7)
    reference = _train(_adamw(), _variables(dtype="float16"), dtype="float16")
    fused = _train(_adamw(optimizers.AdamW), _variables(dtype="float16"), dtype="float16")
    for expected, actual in zip(reference[0], fused[0]):
        np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-3)
    assert fused_calls == []


def test_falls_back_when_keras_moves_the_moments():
    """A future Keras without `_momentums`: Keras' own update, never a crash."""
    optimizer = _adamw(optimizers.AdamW)
    optimizer.build(_variables())
    assert fused_adam.supports(optimizer, _gradients(0)[0], optimizer._momentums[0]) == (
        BACKEND in FUSED_BACKENDS
    )
    momentums = optimizer._momentums
    del optimizer._momentums
    assert not fused_adam.supports(optimizer, _gradients(0)[0], momentums[0])


def test_causal_lm_auto_optimizer_is_fused_and_trains_like_keras():
    from gpt2_lib.models import GPT2Backbone
    from gpt2_lib.models import GPT2CausalLM

    def train(fused):
        keras.utils.set_random_seed(0)
        backbone = GPT2Backbone(vocabulary_size=30, num_layers=1, num_heads=2, hidden_dim=8,
                                intermediate_dim=16, max_sequence_length=8, dropout=0.0)
        lm = GPT2CausalLM(backbone)
        if fused:
            lm.compile()  # "auto"
            assert isinstance(lm.optimizer, optimizers.AdamW)
            lm.optimizer.learning_rate = 1e-2
        else:
            optimizer = keras.optimizers.AdamW(1e-2, weight_decay=0.01, global_clipnorm=1.0)
            optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "embeddings"])
            keras.Model.compile(lm, optimizer=optimizer,
                                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
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
        assert optimizers.use_fused_adam(_adamw(optimizers.AdamW)) is False
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
    _train(_adamw(optimizers.AdamW), _variables(), steps=1)
    assert len(calls) == 3  # one per variable


def test_keras_adam_leaves_bfloat16_variables_unchanged_so_check_updates_refuses_it():
    """The premise of `check_updates` (which `fit` calls; its refusal in a
    model: `test_bfloat16_generate_and_fit`), then which optimizers and
    dtypes it refuses."""
    from gpt2_lib.optimizers.adam import check_updates

    variables = _variables(dtype="bfloat16")
    before = [keras.ops.convert_to_numpy(keras.ops.cast(v, "float32")) for v in variables]
    optimizer = keras.optimizers.Adam(learning_rate=0.1)
    optimizer.build(variables)
    optimizer.apply(_gradients(0, "bfloat16"), variables)
    for value, old in zip(variables, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras.ops.cast(value, "float32")), old)
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        check_updates(optimizers.AdamW(), variables)
    check_updates(keras.optimizers.Adam(beta_2=0.99), variables)  # 0.99 stays below 1 in bfloat16
    check_updates(keras.optimizers.SGD(), variables)
    check_updates(optimizers.AdamW(), _variables())
