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

# XLA's compile time is most of a JAX test's time: the suite builds many small
# models and compiles each one's programs once. For these tests (tiny shapes;
# nothing here is timed) LLVM at -O0 compiles ~1.5x faster
# (tests/backends/test_loop_weights.py: 83 -> 56 s on 2 cores); HLO passes,
# and so every HLO-level assertion, are unchanged. Subprocesses inherit it.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()
# One persistent compilation cache for the whole run: the xdist workers and the
# commands the tests start share what they compile (set before JAX starts).
if os.environ["KERAS_BACKEND"] == "jax" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gpt2_lib_tests_jax_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import keras  # noqa: E402
import pytest  # noqa: E402


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


# Tests of logic that no backend touches (argument and data errors, terminal
# output, step counting) run on one pass of the README's test command only.
# The torch pass: its `gpt2-lib` subprocesses compile nothing.
BACKEND_INDEPENDENT_PASS = "torch"


def pytest_collection_modifyitems(config, items):
    if keras.config.backend() == BACKEND_INDEPENDENT_PASS:
        return
    skip = pytest.mark.skip(
        reason=f"backend-independent: runs on the KERAS_BACKEND={BACKEND_INDEPENDENT_PASS} pass"
    )
    for item in items:
        if item.get_closest_marker("backend_independent"):
            item.add_marker(skip)


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
