"""Helpers of the `gpt2-lib` tests: run the command in a subprocess.

Every test runs the command the way a user does (`python -m gpt2_lib ...`
in a new process) on the backend of the test session (`KERAS_BACKEND`,
default jax), so the suite covers each backend when CI runs it once per
backend. In-process models are only used as references for numbers.
"""

import os
import subprocess
import sys

import keras

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
PRESET = "gpt2_tiny_shakespeare_en"
BACKEND = keras.config.backend()
TEXT = (
    "ROMEO.\nBut soft, what light through yonder window breaks?\n\n"
    "JULIET.\nO Romeo, Romeo, wherefore art thou Romeo?\n\n"
) * 6


def cli_env(**overrides):
    """The environment of a `gpt2-lib` subprocess: this checkout's gpt2_lib first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    env["KERAS_BACKEND"] = BACKEND
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command must quiet TensorFlow itself
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cli(*argv, input=None, env=None, timeout=600, cwd=None):
    """`python -m gpt2_lib ARGV` -> CompletedProcess (text, stdout and stderr apart)."""
    return subprocess.run(
        [sys.executable, "-m", "gpt2_lib", *argv],
        input=input, capture_output=True, text=True, timeout=timeout,
        env=env or cli_env(), cwd=cwd or REPO,
    )


def popen_cli(*argv, env=None, cwd=None):
    """The command as a running process (stdout line-buffered text, stderr apart)."""
    return subprocess.Popen(
        [sys.executable, "-m", "gpt2_lib", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        env=env or cli_env(), cwd=cwd or REPO,
    )


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def assert_user_error(result, *fragments):
    """Exit 2, nothing on stdout, one `gpt2-lib: error:` line naming the problem."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpt2-lib: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.stderr
