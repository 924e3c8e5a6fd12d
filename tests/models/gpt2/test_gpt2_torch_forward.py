"""The torch backend's direct forward pass equals the Keras graph."""

import keras
import numpy as np
import pytest
from keras.src.models.functional import Functional

import gpt2_lib.models.gpt2.gpt2_backbone as backbone_module
from gpt2_lib.models import GPT2Backbone
from gpt2_lib.models.gpt2.gpt2_torch_forward import supports_torch_forward

TORCH = keras.config.backend() == "torch"


def _backbone(**kwargs):
    keras.utils.set_random_seed(0)
    config = dict(vocabulary_size=100, num_layers=2, num_heads=4, hidden_dim=32,
                  intermediate_dim=64, max_sequence_length=32, dropout=0.0)
    config.update(kwargs)
    return GPT2Backbone(**config)


def _inputs(position_ids=False):
    rng = np.random.default_rng(0)
    mask = np.ones((3, 10), "int32")
    mask[1, 7:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    inputs = {"token_ids": rng.integers(0, 100, (3, 10)).astype("int32"), "padding_mask": mask}
    if position_ids:
        inputs["position_ids"] = rng.integers(0, 32, (3, 10)).astype("int32")
    return inputs


def _graph(backbone, inputs, training=False):
    """The functional graph itself, never the direct path."""
    return Functional.call(backbone, {"position_ids": None, **inputs}, training=training)


@pytest.fixture
def count_direct(monkeypatch):
    calls = []
    original = backbone_module.torch_forward
    monkeypatch.setattr(
        backbone_module, "torch_forward", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    return calls


@pytest.mark.parametrize("position_ids", [False, True])
@pytest.mark.parametrize("lora", [False, True])
def test_direct_forward_equals_graph(count_direct, position_ids, lora):
    backbone = _backbone()
    if lora:
        backbone.enable_lora(rank=2)
        for variable in backbone.trainable_variables:  # LoRA B starts at zero
            variable.assign(np.random.default_rng(1).normal(0, 0.1, variable.shape))
    inputs = _inputs(position_ids)
    out = keras.ops.convert_to_numpy(backbone(inputs))
    reference = keras.ops.convert_to_numpy(_graph(backbone, inputs))
    mask = inputs["padding_mask"].astype(bool)
    np.testing.assert_allclose(out[mask], reference[mask], atol=1e-5, rtol=0)
    assert len(count_direct) == (1 if TORCH else 0)


def test_direct_forward_gradients_equal_graph():
    backbone = _backbone()
    inputs = _inputs()
    if not TORCH:
        assert not supports_torch_forward(backbone, inputs, training=True)
        return
    weights = keras.ops.convert_to_tensor(np.asarray(inputs["padding_mask"], "float32")[..., None])

    def gradients(forward):
        for variable in backbone.trainable_variables:
            variable.value.grad = None
        keras.ops.sum(forward() ** 2 * weights).backward()
        return [keras.ops.convert_to_numpy(v.value.grad) for v in backbone.trainable_variables]

    direct = gradients(lambda: backbone(inputs, training=True))
    graph = gradients(lambda: _graph(backbone, inputs, training=True))
    assert len(direct) == len(backbone.trainable_variables)
    for a, b in zip(direct, graph):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_keras_path_when_direct_forward_cannot_match(count_direct):
    inputs = _inputs()
    with_dropout = _backbone(dropout=0.5)
    assert supports_torch_forward(with_dropout, inputs, training=False) == TORCH
    assert not supports_torch_forward(with_dropout, inputs, training=True)
    with_dropout(inputs, training=True)
    assert not supports_torch_forward(_backbone(dtype="mixed_bfloat16"), inputs)
    assert not supports_torch_forward(_backbone(dtype="bfloat16"), inputs)
    symbolic = {"token_ids": keras.KerasTensor((None, 10), "int32"),
                "padding_mask": keras.KerasTensor((None, 10), "int32")}
    assert not supports_torch_forward(_backbone(), symbolic)
    assert count_direct == []
