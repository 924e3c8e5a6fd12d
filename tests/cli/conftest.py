"""Fixtures of the `gpt2-lib` tests (helpers in `tests/cli/helpers.py`)."""

import pytest

from tests.cli.helpers import PRESET
from tests.cli.helpers import TEXT
from tests.cli.helpers import write


@pytest.fixture(scope="session", autouse=True)
def compilation_cache_folder(tmp_path_factory):
    """The commands keep compiled programs in a folder of this session, not ~/.cache."""
    folder = tmp_path_factory.mktemp("gpt2_lib_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPT2_LIB_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def shipped_lm():
    from gpt2_lib.models import GPT2CausalLM

    return GPT2CausalLM.from_preset(PRESET)


@pytest.fixture
def text_file(tmp_path):
    return write(tmp_path / "my.txt", TEXT)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "multi_process: starts several JAX processes over localhost (runs on the jax pass)",
    )
