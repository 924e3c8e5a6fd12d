"""Startup: help, version, presets and argument errors import no Keras; --backend wins.

#15: `--backend` ran on TensorFlow (gpt2_lib/__init__ imported Keras before
the CLI set the backend), `--help` took 6-10 s with TensorFlow's log lines,
and bad arguments gave odd messages or tracebacks.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from tests.cli.helpers import BACKEND
from tests.cli.helpers import PRESET
from tests.cli.helpers import REPO
from tests.cli.helpers import assert_user_error
from tests.cli.helpers import cli_env
from tests.cli.helpers import run_cli


def run_python(code, env=None):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        timeout=600, env=env or cli_env(), cwd=REPO,
    )


@pytest.mark.backend_independent
def test_help_version_presets_and_argument_errors_import_no_keras():
    result = run_python("""
        import contextlib, io, sys
        from gpt2_lib.cli import main
        codes = []
        for argv in (["--help"], ["generate", "--help"], ["finetune", "--help"],
                     ["perplexity", "--help"], ["convert", "--help"], ["presets", "--help"],
                     ["--version"], ["presets"], ["generate", "hi", "--batch-size", "0"]):
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                try:
                    codes.append(main(argv))
                except SystemExit as exit:
                    codes.append(exit.code)
        loaded = sorted(m for m in ("keras", "tensorflow", "jax", "torch") if m in sys.modules)
        print(codes, loaded)
    """, env=cli_env(KERAS_BACKEND="tensorflow"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0, 0, 0, 0, 0, 0, 0, 0, 2] []"
    assert result.stderr == ""


@pytest.mark.backend_independent
def test_version_and_presets_table():
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == "gpt2-lib 0.1.0"
    result = run_cli("presets", env=cli_env(KERAS_BACKEND="tensorflow"))
    assert result.returncode == 0 and result.stderr == ""
    header, *rows = result.stdout.strip().splitlines()
    assert header.split()[:3] == ["name", "params", "description"]
    names = [row.split()[0] for row in rows]
    assert names == sorted(names) and PRESET in names and "gpt2_base_en" in names
    base = next(row for row in rows if row.startswith("gpt2_base_en "))
    assert "124,439,808" in base and "kaggle://keras/gpt2/keras/gpt2_base_en/3" in base
    assert "embedded" in next(row for row in rows if row.startswith(PRESET))
    as_json = [json.loads(line) for line in run_cli("presets", "--json").stdout.splitlines()]
    assert [p["name"] for p in as_json] == names
    assert next(p for p in as_json if p["name"] == PRESET)["embedded"] is True


@pytest.mark.parametrize("other", [b for b in ("jax", "torch", "tensorflow") if b != BACKEND][:1])
def test_backend_option_wins_over_the_environment(other):
    """`--backend` (before or after the command) beats $KERAS_BACKEND."""
    result = run_python(f"""
        import sys
        from gpt2_lib.cli import main
        status = main(["generate", "--backend", "{BACKEND}", "ROMEO.", "--sampler", "greedy",
                       "--max-length", "12"])
        import keras
        print(status, keras.config.backend(), "tensorflow" in sys.modules)
    """, env=cli_env(KERAS_BACKEND=other))
    assert result.returncode == 0, result.stderr
    status, backend, tensorflow_loaded = result.stdout.strip().splitlines()[-1].split()
    assert (status, backend) == ("0", BACKEND)
    # TensorFlow is imported only on its own backend, and never prints its log lines.
    assert tensorflow_loaded == str(BACKEND == "tensorflow")
    assert result.stderr == ""


def test_console_script_is_the_main_that_python_dash_m_runs():
    import importlib
    import os
    import tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["gpt2-lib"]
    module, name = target.split(":")
    from gpt2_lib.cli import main

    assert getattr(importlib.import_module(module), name) is main
    with open(os.path.join(REPO, "gpt2_lib", "__main__.py")) as f:
        assert "from gpt2_lib.cli import main" in f.read()


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["generate"], ["give at least one PROMPT"]),
        (["generate", "hi", "--batch-size", "0"], ["--batch-size", "positive integer", "'0'"]),
        (["generate", "hi", "--max-length", "1"], ["--max-length", ">= 2"]),
        (["generate", "hi", "--sampler", "greedy", "--temperature", "0.5"],
         ["--temperature", "greedy"]),
        (["generate", "hi", "--temperature", "-1"], ["--temperature", "positive number"]),
        (["generate", "hi", "--temperature", "nan"], ["--temperature", "finite"]),
        (["generate", "hi", "--top-p", "1.5"], ["--top-p", "(0, 1]"]),
        (["generate", "hi", "--top-k", "5", "--num-beams", "2"], ["--num-beams", "--top-k"]),
        (["generate", "hi", "--sampler", "greedy", "--num-beams", "3"], ["--num-beams", "greedy"]),
        (["generate", "hi", "--input-field", "text"], ["--input-field", "needs --input"]),
        (["generate", "--input", "missing.txt"], ["--input", "does not exist"]),
        (["generate", "hi", "--lora", "adapters.h5"], ["--lora", ".lora.h5"]),
        (["generate", "hi", "--dtype", "int8"], ["--dtype", "invalid choice"]),
        (["generate", "hi", "--backend", "mxnet"], ["--backend", "invalid choice"]),
        (["perplexity", "missing.txt"], ["missing.txt", "does not exist"]),
        (["finetune", "--data", "missing.txt", "--output", "o"], ["--data", "does not exist"]),
        (["finetune", "--data", "DATA", "--output", "o", "--max-steps", "0"], ["--max-steps"]),
        (["finetune", "--data", "DATA", "--output", "o", "--max-steps", "-3"], ["--max-steps"]),
        (["finetune", "--data", "DATA", "--output", "o", "--learning-rate", "0"],
         ["--learning-rate", "positive"]),
        (["finetune", "--data", "DATA", "--output", "o", "--epochs", "0"], ["--epochs"]),
        (["finetune", "--data", "DATA", "--output", "o", "--lora-rank", "0"], ["--lora-rank"]),
        (["finetune", "--data", "DATA", "--output", "x.lora.h5"], ["add --lora-rank"]),
        (["finetune", "--data", "DATA", "--output", "DATA"], ["--output", "existing file"]),
        (["finetune", "--data", "DATA", "--output", "FULL"], ["--output", "non-empty folder"]),
        (["finetune", "--data", "DATA", "--output", "no/such/dir/out"], ["does not exist"]),
        (["finetune", "--data", "DATA", "--output", "o", "--eval-every", "5"],
         ["--eval-every", "--validation-data"]),
        (["finetune", "--data", "DATA", "--output", "o", "--validation-split", "1.5"],
         ["--validation-split", "(0, 1)"]),
        (["finetune", "--data", "DATA", "--output", "o", "--validation-split", "0.1",
          "--validation-data", "DATA"], ["not allowed with"]),
        (["convert", PRESET, "FULL"], ["non-empty folder"]),
        (["convert", "FULL", "FULL"], ["is the source"]),
        (["convert", "FULL", "FULL/inner"], ["is the source"]),
    ],
)
def test_argument_errors_are_one_line_before_any_work(tmp_path, argv, fragments):
    (tmp_path / "DATA").write_text("some text\n")
    (tmp_path / "FULL").mkdir()
    (tmp_path / "FULL" / "config.json").write_text("{}")
    result = run_cli(*argv, cwd=tmp_path, timeout=60)
    assert_user_error(result, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DATA", "FULL"]
