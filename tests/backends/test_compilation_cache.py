"""`gpt2_lib.enable_compilation_cache`: compiled programs land on disk (JAX)."""

import os
import subprocess
import sys

import keras

import gpt2_lib

SCRIPT = """
import sys, numpy as np, gpt2_lib
print(gpt2_lib.enable_compilation_cache(sys.argv[1]))
lm = gpt2_lib.models.GPT2CausalLM.from_preset("gpt2_tiny_shakespeare_en")
lm.compile(sampler="greedy")
lm.generate("ROMEO:", max_length=16)
"""


def test_compiled_generation_is_stored(tmp_path):
    directory = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(directory)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    if keras.config.backend() == "jax":
        assert done.stdout.strip().splitlines()[0] == str(directory)
        assert any(directory.iterdir())  # the compiled programs
    else:
        assert done.stdout.strip().splitlines()[0] == "None"
        assert not directory.exists()


def test_default_directory_follows_the_environment(monkeypatch, tmp_path):
    from gpt2_lib.backends.compilation_cache import default_cache_directory

    monkeypatch.setenv("GPT2_LIB_CACHE", str(tmp_path))
    assert default_cache_directory().startswith(str(tmp_path))
    assert callable(gpt2_lib.enable_compilation_cache)
