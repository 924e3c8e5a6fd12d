"""Preset loads allocate each weight once, straight from the file."""

import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
from keras.src.backend.common import global_state

import gpt2_lib
from gpt2_lib.models import Backbone
from gpt2_lib.preset_io import fast_init
from tests.preset_io.helpers import tiny_backbone
from tests.preset_io.helpers import weights_of

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _deferred_registry():
    return global_state.get_global_attribute("uninitialized_variables", []) or []


def _inputs():
    return {"token_ids": np.array([[1, 2, 3, 4]]), "padding_mask": np.ones((1, 4), "int32")}


def test_load_initializes_every_variable_and_unregisters_them(tmp_path):
    source = tiny_backbone(dropout=0.5)
    source.save_to_preset(tmp_path)
    loaded = Backbone.from_preset(tmp_path)
    assert _deferred_registry() == []
    for expected, actual in zip(weights_of(source), weights_of(loaded)):
        np.testing.assert_array_equal(actual, expected)
    # Seed generators (not in the file) got their own initial values: dropout runs.
    train_out = keras.ops.convert_to_numpy(loaded(_inputs(), training=True))
    eval_out = keras.ops.convert_to_numpy(loaded(_inputs()))
    assert np.isfinite(train_out).all() and not np.allclose(train_out, eval_out)


def test_task_load_initializes_and_unregisters(tmp_path):
    lm = gpt2_lib.models.GPT2CausalLM(tiny_backbone(), preprocessor=None)
    lm.save_to_preset(tmp_path)
    loaded = gpt2_lib.models.GPT2CausalLM.from_preset(tmp_path)
    assert _deferred_registry() == []
    for expected, actual in zip(weights_of(lm.backbone), weights_of(loaded.backbone)):
        np.testing.assert_array_equal(actual, expected)
    logits = loaded(_inputs())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(logits), keras.ops.convert_to_numpy(lm(_inputs())), atol=1e-6
    )


def test_failed_load_leaves_no_deferred_variables(tmp_path):
    tiny_backbone().save_to_preset(tmp_path)
    with h5py.File(tmp_path / "model.weights.h5", "a") as f:
        name = "layers/transformer_decoder_1/_feedforward_output_dense/vars/0"
        data = f[name][()]
        del f[name]
        f.create_dataset(name, data=data.astype("int32"))
    with pytest.raises(ValueError, match="_feedforward_output_dense/vars/0.*dtype int32"):
        Backbone.from_preset(tmp_path)
    assert _deferred_registry() == []
    # The next model builds and runs normally.
    assert np.isfinite(keras.ops.convert_to_numpy(tiny_backbone()(_inputs()))).all()


def test_loaded_weights_do_not_alias_the_file(tmp_path):
    # Weights are read through memory maps; the model must own a copy, or
    # rewriting the file in place would change (or crash) the model.
    source = tiny_backbone()
    source.save_to_preset(tmp_path)
    loaded = Backbone.from_preset(tmp_path)
    before = weights_of(loaded)
    with h5py.File(tmp_path / "model.weights.h5", "r+") as f:
        f.visititems(
            lambda _, obj: obj.__setitem__((), np.zeros(obj.shape, obj.dtype))
            if isinstance(obj, h5py.Dataset)
            else None
        )
    for expected, actual in zip(before, weights_of(loaded)):
        np.testing.assert_array_equal(actual, expected)
    assert any(np.abs(w).sum() > 0 for w in before)


def test_chunked_and_compressed_datasets_load(tmp_path):
    # Not memory-mappable: read through h5py instead.
    source = tiny_backbone()
    source.save_to_preset(tmp_path)
    path = tmp_path / "model.weights.h5"
    with h5py.File(path, "a") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        for name in names:
            data = f[name][()]
            del f[name]
            f.create_dataset(name, data=data, chunks=True, compression="gzip")
    loaded = Backbone.from_preset(tmp_path)
    for expected, actual in zip(weights_of(source), weights_of(loaded)):
        np.testing.assert_array_equal(actual, expected)


def test_dtype_override_casts_loaded_weights(tmp_path):
    source = tiny_backbone()
    source.save_to_preset(tmp_path)
    loaded = Backbone.from_preset(tmp_path, dtype="bfloat16")
    assert {w.dtype for w in loaded.weights if "seed" not in w.path} == {"bfloat16"}
    for expected, actual in zip(weights_of(source), weights_of(loaded)):
        np.testing.assert_allclose(actual.astype("float32"), expected, rtol=1e-2, atol=1e-2)


def test_initialize_variable_assigns_when_not_deferred():
    variable = keras.Variable(np.zeros((2, 3), "float32"))
    fast_init.initialize_variable(variable, np.ones((2, 3), "float64"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), np.ones((2, 3)))
    assert variable.dtype == "float32"


def test_building_and_loading_do_not_import_tensorflow(tmp_path):
    # Keras' serializer imports TensorFlow whenever it is installed, which
    # costs seconds and hundreds of MB on the other backends.
    backend = keras.backend.backend()
    backend = "jax" if backend == "tensorflow" else backend
    tiny_backbone().save_to_preset(tmp_path)
    code = (
        "import sys, gpt2_lib\n"
        "gpt2_lib.models.GPT2Backbone(vocabulary_size=50, num_layers=1, num_heads=2,"
        " hidden_dim=8, intermediate_dim=16, max_sequence_length=8)\n"
        f"gpt2_lib.models.Backbone.from_preset({str(tmp_path)!r})\n"
        "print('tensorflow' in sys.modules)\n"
    )
    env = dict(os.environ, KERAS_BACKEND=backend)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
