"""Two processes x four CPU devices over localhost equal one device.

`multi_worker.py` computes the single-device reference in one process, then
two processes (`keras.distribution.initialize`, gloo collectives) train,
evaluate, predict, generate and save under DataParallel across both and
under ModelParallel with the model axis spanning both; each compares with
the reference. Here, the files process 0 wrote are loaded on one device.
JAX only (the CI's jax pass): multi-process `keras.distribution` is JAX's.
"""

import os

import numpy as np
import pytest

from tests.distribution.helpers import jax_only
from tests.distribution.helpers import run_processes
from tests.distribution.helpers import run_worker


@jax_only
@pytest.mark.multi_process
def test_two_processes_of_four_devices(tmp_path):
    run_worker("tests.distribution.multi_worker", "reference", tmp_path, devices=1)
    outputs = run_processes("tests.distribution.multi_worker", 2, [tmp_path], devices=4)
    assert all('"max_diffs"' in out for out in outputs)

    from gpt2_lib.models import GPT2Backbone

    expected = np.load(tmp_path / "reference.npz")
    for saved, key in (("saved_dp", "dp_fit"), ("saved_mp", "mp_fit")):
        backbone = GPT2Backbone.from_preset(os.fspath(tmp_path / saved))
        for i, variable in enumerate(backbone.weights):
            np.testing.assert_allclose(np.asarray(variable.value), expected[f"{key}/{i}"], atol=1e-6, rtol=0)
    backbone = GPT2Backbone.from_preset(os.fspath(tmp_path / "preset"))
    backbone.load_lora_weights(os.fspath(tmp_path / "saved_mp.lora.h5"))
    lora = [np.asarray(v.value) for v in backbone.weights if "lora" in v.path]
    assert len(lora) == 8
    for i, value in enumerate(lora):
        np.testing.assert_allclose(value, expected[f"mp_lora/{i}"], atol=1e-6, rtol=0)
