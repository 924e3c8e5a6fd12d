"""Test configuration shared by the whole suite.

The backend is chosen with `KERAS_BACKEND` before Keras is imported (the
README's test command runs the suite once per backend). Tests must be
deterministic: every test starts from the same Keras seed.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import keras  # noqa: E402
import pytest  # noqa: E402


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _reset_keras_state():
    keras.utils.set_random_seed(1337)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    """Names every docstring example may use without importing them."""
    import numpy as np

    import gpt2_lib

    doctest_namespace.update({"np": np, "keras": keras, "gpt2_lib": gpt2_lib})
