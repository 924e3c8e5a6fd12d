"""A distribution on torch or TensorFlow is a clear error naming JAX.

`keras.distribution` places variables on the JAX backend only; elsewhere
gpt2_lib refuses a distribution where it would act on it (building or
loading a model, `fit`/`evaluate`/`predict`) instead of failing deep inside
Keras. On JAX the same calls work (one device here).
"""

import keras
import numpy as np
import pytest

from gpt2_lib.models import GPT2Backbone
from gpt2_lib.models import GPT2CausalLM

CONFIG = dict(vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8,
              intermediate_dim=16, max_sequence_length=8)


@pytest.fixture
def one_device_distribution():
    distribution = keras.distribution.DataParallel(devices=["cpu:0"])
    yield distribution
    keras.distribution.set_distribution(None)


@pytest.fixture
def one_device_model_parallel():
    mesh = keras.distribution.DeviceMesh((1, 1), ["batch", "model"], devices=["cpu:0"])
    distribution = keras.distribution.ModelParallel(
        layout_map=GPT2Backbone.get_layout_map(mesh), batch_dim_name="batch"
    )
    yield distribution
    keras.distribution.set_distribution(None)


def test_building_and_loading(one_device_distribution, one_device_model_parallel, tmp_path):
    GPT2Backbone(**CONFIG).save_to_preset(tmp_path / "preset")
    for distribution in (one_device_distribution, one_device_model_parallel):
        keras.distribution.set_distribution(distribution)
        if keras.config.backend() == "jax":
            backbone = GPT2Backbone.from_preset(tmp_path / "preset")
            assert GPT2Backbone(**CONFIG).num_layers == 1
            assert backbone.weights[0].value.sharding is not None
            continue
        message = rf"under {type(distribution).__name__}.*JAX backend only.*{keras.config.backend()}"
        with pytest.raises(ValueError, match=message):
            GPT2Backbone(**CONFIG)
        with pytest.raises(ValueError, match="KERAS_BACKEND=jax"):
            GPT2Backbone.from_preset(tmp_path / "preset")


def test_training_and_inference(one_device_distribution):
    lm = GPT2CausalLM(GPT2Backbone(**CONFIG))
    lm.compile(optimizer="sgd")
    data = {"token_ids": np.ones((3, 6), "int32"), "padding_mask": np.ones((3, 6), bool)}
    keras.distribution.set_distribution(one_device_distribution)
    if keras.config.backend() == "jax":
        history = lm.fit(data, batch_size=2, validation_split=1 / 3, verbose=0)
        assert "val_loss" in history.history and len(history.history["val_loss"]) == 1
        history = lm.fit(data, batch_size=2, validation_data=data, verbose=0)
        assert "val_loss" in history.history and len(history.history["val_loss"]) == 1
        assert lm.predict(data, verbose=0).shape == (3, 6, 50)
        return
    for call in (lambda: lm.fit(data), lambda: lm.evaluate(data), lambda: lm.predict(data)):
        with pytest.raises(ValueError, match="Cannot run GPT2CausalLM under DataParallel.*JAX"):
            call()


def test_make_distribution():
    from gpt2_lib.models.distribution import WeightTableLayoutMap
    from gpt2_lib.models.distribution import make_distribution

    if keras.config.backend() != "jax":
        with pytest.raises(ValueError, match="JAX backend only.*KERAS_BACKEND=jax"):
            make_distribution()
        return
    assert isinstance(make_distribution(), keras.distribution.DataParallel)
    devices = [f"cpu:{i}" for i in range(8)]
    distribution = make_distribution(model_parallel=4, devices=devices)
    assert isinstance(distribution, keras.distribution.ModelParallel)
    assert distribution.device_mesh.shape == (2, 4)
    assert isinstance(distribution._layout_map, WeightTableLayoutMap)
    with pytest.raises(ValueError, match="model_parallel=3 does not divide the 8 devices"):
        make_distribution(model_parallel=3, devices=devices)
    with pytest.raises(ValueError, match="data_parallel=4 x model_parallel=4 = 16 devices, but there are 8"):
        make_distribution(model_parallel=4, data_parallel=4, devices=devices)
    with pytest.raises(ValueError, match="positive integer"):
        make_distribution(model_parallel=0, devices=devices)
