"""`xla_cpu`: where code is traced for XLA:CPU, and its argmax."""

import keras
import numpy as np
import pytest

from gpt2_lib.backends import xla_cpu
from gpt2_lib.samplers import GreedySampler
from tests.backends.helpers import counted_calls
from tests.backends.helpers import greedy_lm

BACKEND = keras.config.backend()


def _rows():
    """Random rows, and rows with ties, NaNs, infinities."""
    rng = np.random.default_rng(0)
    random = rng.normal(size=(6, 1003)).astype("float32")
    special = np.zeros((6, 1003), "float32")
    special[0, [5, 700, 1002]] = 3.0  # ties: the first
    special[1, [9, 500]] = np.nan  # NaNs: the first
    special[1, 3] = 7.0
    special[2] = -np.inf
    special[3, [17, 30]] = np.inf
    special[4, 1002] = 1e-30  # the last
    # row 5: all equal -> 0
    return np.concatenate([random, special])


def _compiled(function):
    """`function` compiled for XLA:CPU on JAX and TensorFlow, eager on torch."""
    if BACKEND == "jax":
        import jax

        return jax.jit(function)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def in_xla(values):
            with xla_cpu.tensorflow_xla():
                return function(values)

        return tf.function(in_xla, jit_compile=True, autograph=False)
    return function


def test_on_xla_cpu_only_for_jax_and_tensorflow_inside_its_xla():
    if BACKEND == "tensorflow":
        assert not xla_cpu.on_xla_cpu()
        with xla_cpu.tensorflow_xla():
            assert xla_cpu.on_xla_cpu()
        assert not xla_cpu.on_xla_cpu()
    else:
        assert xla_cpu.on_xla_cpu() == (BACKEND == "jax")


@pytest.mark.parametrize("function", [xla_cpu.argmax, xla_cpu._first_index_of_max])
@pytest.mark.parametrize("compiled", [False, True])
def test_argmax_is_numpys_first_index_of_the_max(function, compiled):
    """Both forms, on every backend, eager and compiled: NumPy's argmax on
    random rows and on ties, NaNs, infinities and equal rows."""
    rows = _rows()
    if BACKEND == "tensorflow" and function is xla_cpu.argmax and not compiled:
        rows = rows[np.isnan(rows).sum(axis=1) == 0]  # TensorFlow's own argmax skips NaNs
    run = _compiled(function) if compiled else function
    indices = keras.ops.convert_to_numpy(run(keras.ops.convert_to_tensor(rows)))
    assert indices.dtype == np.int32
    np.testing.assert_array_equal(indices, np.argmax(rows, axis=-1))
    stacked = np.stack([rows, rows[::-1]])  # (2, rows, 1003)
    batched = keras.ops.convert_to_numpy(run(keras.ops.convert_to_tensor(stacked)))
    np.testing.assert_array_equal(batched, np.argmax(stacked, axis=-1))


@pytest.mark.skipif(BACKEND == "torch", reason="torch keeps its own argmax")
def test_greedy_generation_takes_the_first_index_of_the_max_on_xla(monkeypatch):
    """A compiled greedy generation picks its tokens with the two-reduction
    form, and they equal those of `ops.argmax`."""
    lm = greedy_lm(vocabulary_size=97, hidden_dim=16, intermediate_dim=32)
    prompt = {
        "token_ids": np.array([[5, 9, 2, 0, 0, 0, 0, 0], [7, 1, 0, 0, 0, 0, 0, 0]]),
        "padding_mask": np.array([[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]], bool),
    }
    calls = counted_calls(monkeypatch, xla_cpu, "_first_index_of_max")
    tokens = lm.generate(prompt, stop_token_ids=None)["token_ids"]
    assert calls  # traced into the compiled generation

    monkeypatch.setattr(
        GreedySampler, "get_next_token", lambda self, p: keras.ops.argmax(p, axis=-1)
    )
    lm.generate_function = None
    calls.clear()
    np.testing.assert_array_equal(lm.generate(prompt, stop_token_ids=None)["token_ids"], tokens)
    assert not calls
