"""`gpt2-lib` end to end on the shipped preset, including its error paths."""

import argparse
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from gpt2_lib import cli
from gpt2_lib.models import GPT2CausalLM

PRESET = "gpt2_tiny_shakespeare_en"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = (
    "ROMEO.\nBut soft, what light through yonder window breaks?\n\n"
    "JULIET.\nO Romeo, Romeo, wherefore art thou Romeo?\n\n"
) * 6


@pytest.fixture(scope="module")
def shipped_lm():
    return GPT2CausalLM.from_preset(PRESET)


def run_cli(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_help_for_every_subcommand(capsys):
    for command in ("generate", "finetune", "perplexity", "presets", "convert"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        assert command in capsys.readouterr().out


def test_python_dash_m_runs_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "gpt2_lib", "presets"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert PRESET in result.stdout


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert cli.choose_backend(None) == cli.installed_backends()[0]
    assert cli.choose_backend("torch") == "torch"
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert cli.choose_backend(None) == "tensorflow"
    with pytest.raises(cli.CLIError, match="unknown backend 'mxnet'"):
        cli.choose_backend("mxnet")


def test_presets_table(capsys):
    status, out, _ = run_cli(capsys, "presets")
    assert status == 0
    header, *rows = out.strip().splitlines()
    assert header.split()[:3] == ["name", "params", "description"]
    names = [row.split()[0] for row in rows]
    assert names == sorted(names) and PRESET in names and "gpt2_base_en" in names
    base = next(row for row in rows if row.startswith("gpt2_base_en "))
    assert "124,439,808" in base and "kaggle://keras/gpt2/keras/gpt2_base_en/3" in base
    tiny = next(row for row in rows if row.startswith(PRESET))
    assert "embedded" in tiny


def test_generate_greedy_matches_the_python_api(capsys, shipped_lm):
    status, out, _ = run_cli(
        capsys, "generate", "ROMEO.", "JULIET.\nO", "--sampler", "greedy", "--max-length", "24"
    )
    assert status == 0
    shipped_lm.compile(sampler="greedy")
    expected = shipped_lm.generate(["ROMEO.", "JULIET.\nO"], max_length=24)
    assert out == expected[0] + "\n\n" + expected[1] + "\n"
    assert expected[0].startswith("ROMEO.") and len(expected[0]) > len("ROMEO.")


def test_generate_streams_one_prompt_with_the_same_text(capsys, shipped_lm):
    streamed = run_cli(capsys, "generate", "ROMEO.", "--sampler", "greedy", "--max-length", "40")
    whole = run_cli(capsys, "generate", "ROMEO.", "--sampler", "greedy", "--max-length", "40", "--no-stream")
    assert streamed[0] == whole[0] == 0
    assert streamed[1] == whole[1]
    shipped_lm.compile(sampler="greedy")
    assert whole[1] == shipped_lm.generate("ROMEO.", max_length=40) + "\n"
    pieces = list(shipped_lm.stream_generate("ROMEO.", max_length=40))
    assert len(pieces) > 1
    assert "".join(pieces) == shipped_lm.generate("ROMEO.", max_length=40, strip_prompt=True)


def test_stream_generate_errors(shipped_lm):
    shipped_lm.compile(sampler="beam")
    with pytest.raises(ValueError, match="Beam search cannot stream"):
        next(shipped_lm.stream_generate("ROMEO."))
    shipped_lm.compile(sampler="greedy")
    with pytest.raises(ValueError, match="one string prompt"):
        next(shipped_lm.stream_generate(["a", "b"]))


def test_generate_seed_is_reproducible(capsys):
    argv = ["generate", "ROMEO.", "--seed", "7", "--max-length", "32", "--sampler", "top_p"]
    first = run_cli(capsys, *argv)[1]
    second = run_cli(capsys, *argv)[1]
    assert first == second and first.startswith("ROMEO.")


def reference_perplexity(lm, text, length):
    """exp(mean NLL) from the model's logits and a NumPy log-softmax."""
    ids = np.asarray(lm.preprocessor.tokenizer.tokenize(text), "int32")
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, length - 1):
        window = ids[start : start + length]
        if len(window) < 2:
            continue
        x = {"token_ids": window[None], "padding_mask": np.ones((1, len(window)), bool)}
        logits = keras.ops.convert_to_numpy(lm(x))[0].astype("float64")
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        total -= log_probs[np.arange(len(window) - 1), window[1:]].sum()
        count += len(window) - 1
    return float(np.exp(total / count)), count


def test_perplexity_matches_a_numpy_reference(capsys, tmp_path, shipped_lm):
    data = write(tmp_path / "held_out.txt", TEXT)
    status, out, _ = run_cli(capsys, "perplexity", data, "--sequence-length", "32")
    assert status == 0
    expected, count = reference_perplexity(shipped_lm, TEXT, 32)
    value = float(out.split()[1])
    assert value == pytest.approx(expected, rel=1e-4)
    assert f"({count:,} tokens" in out


def test_finetune_lora_then_perplexity(capsys, tmp_path, shipped_lm):
    data = write(tmp_path / "my.txt", TEXT)
    output = str(tmp_path / "mine")
    before, _ = reference_perplexity(shipped_lm, TEXT, 32)
    status, _, err = run_cli(
        capsys, "finetune", "--preset", PRESET, "--data", data, "--lora-rank", "4",
        "--output", output, "--epochs", "3", "--sequence-length", "32",
        "--learning-rate", "1e-2", "--batch-size", "2",
    )
    assert status == 0, err
    assert os.path.isfile(os.path.join(output, "adapters.lora.h5"))
    assert not os.path.exists(output + ".checkpoint")
    tuned = GPT2CausalLM.from_preset(output)
    after, _ = reference_perplexity(tuned, TEXT, 32)
    assert after < before
    status, out, _ = run_cli(capsys, "perplexity", "--preset", output, data, "--sequence-length", "32")
    assert status == 0 and float(out.split()[1]) == pytest.approx(after, rel=1e-4)
    # The adapter file alone reproduces the fine-tuned model on the base preset.
    base = GPT2CausalLM.from_preset(PRESET)
    base.backbone.load_lora_weights(os.path.join(output, "adapters.lora.h5"))
    x = {"token_ids": np.array([[10, 20, 30]]), "padding_mask": np.ones((1, 3), bool)}
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(base(x)), keras.ops.convert_to_numpy(tuned(x)), atol=1e-4
    )


def test_finetune_adapters_only(capsys, tmp_path):
    data = write(tmp_path / "my.txt", TEXT)
    output = str(tmp_path / "shakespeare.lora.h5")
    status, _, err = run_cli(
        capsys, "finetune", "--data", data, "--lora-rank", "2", "--output", output,
        "--max-steps", "1", "--sequence-length", "32",
    )
    assert status == 0, err
    assert os.path.isfile(output) and os.path.getsize(output) < 200_000
    assert [f for f in os.listdir(tmp_path) if "tmp" in f] == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "hi", "--preset", "gpt2_tiny_shakespeare"], "Did you mean 'gpt2_tiny_shakespeare_en'"),
        (["generate", "hi", "--preset", "./no/such/dir"], "does not exist"),
        (["perplexity", "missing.txt"], "data file 'missing.txt' does not exist"),
        (["finetune", "--data", "missing.txt", "--output", "out"], "data file 'missing.txt' does not exist"),
        (["finetune", "--data", "DATA", "--output", "/proc/gpt2_lib_out"], "cannot write to '/proc'"),
        (["finetune", "--data", "DATA", "--output", "x.lora.h5"], "add --lora-rank"),
        (["finetune", "--data", "DATA", "--output", "o", "--lora-rank", "0"], "--lora-rank must be a positive"),
        (["finetune", "--data", "DATA", "--output", "o", "--sequence-length", "5000"], "max_sequence_length=256"),
        (["perplexity", "EMPTY"], "is empty"),
        (["finetune", "--data", "EMPTY", "--output", "o"], "is empty"),
    ],
)
def test_errors_are_clear(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "DATA", TEXT)
    write(tmp_path / "EMPTY", "  \n\n")
    status, out, err = run_cli(capsys, *argv)
    assert status == 2
    assert message in err and err.startswith("gpt2-lib: error:")
    assert not os.path.exists(tmp_path / "o") and not os.path.exists(tmp_path / "out")


def test_convert_to_transformers_and_back(capsys, tmp_path, shipped_lm):
    import torch
    import transformers

    hf_dir = str(tmp_path / "hf")
    status, _, err = run_cli(capsys, "convert", PRESET, hf_dir, "--to", "transformers")
    assert status == 0, err
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ids = shipped_lm.preprocessor.tokenizer.tokenize("ROMEO.\nWhat light")
    assert hf_tokenizer("ROMEO.\nWhat light")["input_ids"] == list(ids)
    with torch.no_grad():
        expected = hf_model(torch.tensor([ids])).logits.numpy()
    x = {"token_ids": np.array([ids]), "padding_mask": np.ones((1, len(ids)), bool)}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(shipped_lm(x)), expected, atol=1e-4)

    keras_dir = str(tmp_path / "keras")
    status, _, err = run_cli(capsys, "convert", hf_dir, keras_dir)
    assert status == 0, err
    back = GPT2CausalLM.from_preset(keras_dir)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(back(x)), keras.ops.convert_to_numpy(shipped_lm(x)), atol=1e-5
    )


def test_interrupted_finetune_resumes_and_leaves_nothing_half_written(tmp_path):
    data = write(tmp_path / "my.txt", TEXT * 4)
    output = str(tmp_path / "mine")
    command = [
        sys.executable, "-m", "gpt2_lib", "finetune", "--data", data, "--output", output,
        "--sequence-length", "32", "--batch-size", "2", "--max-steps", "2",
    ]
    env = dict(os.environ)
    process = subprocess.Popen(
        command + ["--epochs", "40"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    checkpoint = os.path.join(output + ".checkpoint", "state.npz")
    deadline = time.time() + 240
    while not os.path.exists(checkpoint) and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert os.path.exists(checkpoint), process.communicate(timeout=60)[0][-3000:]
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not os.path.exists(output)  # nothing half-written
    # Starting over without --resume is refused; --resume finishes the run.
    fresh = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 2 and "--resume" in fresh.stderr
    resumed = subprocess.run(
        command + ["--epochs", "4", "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch" in resumed.stderr
    assert not os.path.exists(output + ".checkpoint")
    assert GPT2CausalLM.from_preset(output).backbone.count_params() == 2262336
