"""examples/train_tiny_shakespeare.py: never overwrites a preset by default (#15)."""

import os
import subprocess
import sys

import pytest

from tests.cli.helpers import REPO
from tests.cli.helpers import cli_env

SCRIPT = os.path.join(REPO, "examples", "train_tiny_shakespeare.py")


def test_the_training_example_imports_nothing_from_tests():
    with open(SCRIPT, encoding="utf-8") as f:
        source = f.read()
    assert "from tests" not in source and "import tests" not in source


@pytest.mark.backend_independent
def test_the_training_example_refuses_an_existing_preset(tmp_path):
    existing = tmp_path / "gpt2_tiny_shakespeare_en"  # the default --output, in the cwd
    existing.mkdir()
    (existing / "config.json").write_text("{}")
    shipped = os.path.join(REPO, "presets", "gpt2_tiny_shakespeare_en", "model.weights.h5")
    before = os.stat(shipped).st_mtime_ns
    for argv in ([], ["--output", os.path.dirname(shipped)]):
        result = subprocess.run([sys.executable, SCRIPT, *argv], capture_output=True, text=True,
                                env=cli_env(), cwd=tmp_path, timeout=300)
        assert result.returncode != 0
        assert "already exists. Pass --overwrite" in result.stderr
    assert os.stat(shipped).st_mtime_ns == before
    assert os.listdir(existing) == ["config.json"]
