"""`dense.reverse_embedding`: a few float32 rows' logits, table first, on XLA:CPU."""

import keras
import numpy as np
import pytest

from gpt2_lib.backends import dense as dense_module
from gpt2_lib.backends import xla_cpu
from gpt2_lib.backends.dense import reverse_embedding
from tests.backends.gradients import values_and_gradients
from tests.backends.helpers import counted_calls
from tests.backends.helpers import greedy_lm

XLA = keras.config.backend() in ("jax", "tensorflow")
pytestmark = pytest.mark.skipif(not XLA, reason="table-first logits are XLA:CPU's (JAX, TensorFlow's XLA)")


def _table(vocabulary, dtype="float32", lora=False):
    keras.utils.set_random_seed(0)
    layer = keras.layers.ReversibleEmbedding(vocabulary, 32, dtype=dtype)
    layer.build((None, None))
    if lora:
        layer.enable_lora(2)
        layer.lora_embeddings_b.assign(np.full(layer.lora_embeddings_b.shape, 0.05, "float32"))
    return layer


def _hidden(rows):
    return np.random.default_rng(rows).normal(size=(rows, 1, 32)).astype("float32")


def test_table_first_only_for_two_to_32_float32_rows_in_xla():
    """The fewest equal vocabulary chunks (1003 = 17 x 59 -> 17; 1000 -> 2)
    for 2 to 32 float32 rows; not for one row or 33, a prime vocabulary, a
    symbolic batch, bfloat16, int8, nor TensorFlow outside its XLA generate
    function."""
    with xla_cpu.tensorflow_xla():
        assert dense_module._table_first_chunks(_table(1003), _hidden(8)) == 17
        assert dense_module._table_first_chunks(_table(1000), _hidden(2)) == 2
        assert dense_module._table_first_chunks(_table(1000), _hidden(32)) == 2
        assert dense_module._table_first_chunks(_table(1000), _hidden(1)) is None
        assert dense_module._table_first_chunks(_table(1000), _hidden(33)) is None
        assert dense_module._table_first_chunks(_table(1009), _hidden(8)) is None  # a prime
        symbolic = keras.KerasTensor((None, 1, 32))
        assert dense_module._table_first_chunks(_table(1000), symbolic) is None
        assert dense_module._table_first_chunks(_table(1000, "bfloat16"), _hidden(8)) is None
        quantized = _table(1000)
        quantized.quantize("int8")
        assert dense_module._table_first_chunks(quantized, _hidden(8)) is None
    outside_xla = dense_module._table_first_chunks(_table(1000), _hidden(8))
    assert outside_xla == (2 if keras.config.backend() == "jax" else None)


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("rows", [2, 8])
def test_table_first_logits_equal_the_layer_and_its_gradients(rows, lora, monkeypatch):
    """The logits, and the gradients of the hidden states and of every
    trainable weight (LoRA's included), within float32 rounding of
    `layer(x, reverse=True)`, eagerly and compiled, through the table-first
    product."""
    layer = _table(1003, lora=lora)
    x = _hidden(rows)
    chunks = counted_calls(monkeypatch, dense_module, "_table_first_logits")
    expected = values_and_gradients(layer, lambda x: layer(x, reverse=True), x, jit=False)
    assert not chunks
    for jit in (False, True):
        actual = values_and_gradients(layer, lambda x: reverse_embedding(layer, x), x, jit)
        assert chunks and set(chunks) == {17}
        assert len(actual) == len(expected) == 2 + len(layer.trainable_variables)
        for a, e in zip(actual, expected):
            assert a.shape == e.shape
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * np.abs(e).max())
        chunks.clear()


def test_generation_with_table_first_logits_equals_rows_first(monkeypatch):
    """Batch-2 greedy decoding, its LM head taken table first inside the
    compiled generation: the same tokens as rows first."""
    lm = greedy_lm(256, 32, 64)
    chunks = counted_calls(monkeypatch, dense_module, "_table_first_logits")
    mask = np.zeros((2, 24), bool)
    mask[:, :5] = True
    prompt = {"token_ids": np.arange(48, dtype="int32").reshape(2, 24) % 256, "padding_mask": mask}
    ours = np.asarray(lm.generate(prompt, max_length=24, stop_token_ids=None)["token_ids"])
    assert set(chunks) == {2}  # 256 = 2 x 128
    monkeypatch.setattr(dense_module, "_table_first_chunks", lambda layer, hidden_states: None)
    lm.generate_function = None
    chunks.clear()
    rows_first = np.asarray(lm.generate(prompt, max_length=24, stop_token_ids=None)["token_ids"])
    assert not chunks
    np.testing.assert_array_equal(ours, rows_first)
