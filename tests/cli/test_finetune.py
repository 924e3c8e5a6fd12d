"""`gpt2-lib finetune`: LoRA and full runs, validation, metrics, checkpoints, Ctrl-C."""

import csv
import importlib.util
import json
import math
import os
import signal
import time

import keras
import numpy as np
import pytest

from gpt2_lib.models import GPT2CausalLM
from tests.cli.helpers import PRESET
from tests.cli.helpers import TEXT
from tests.cli.helpers import assert_user_error
from tests.cli.helpers import popen_cli
from tests.cli.helpers import run_cli
from tests.cli.helpers import write

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAVE_TENSORBOARD = all(importlib.util.find_spec(m) for m in ("tensorflow", "tensorboard"))


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


def data_path(tmp):
    return str(tmp / "my.txt")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """One LoRA run with a validation split and TensorBoard logs, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("lora")
    data = write(tmp / "my.txt", TEXT * 4)
    output = str(tmp / "mine")
    argv = ["finetune", "--preset", PRESET, "--data", data, "--lora-rank", "4",
            "--output", output, "--epochs", "3", "--sequence-length", "32",
            "--learning-rate", "1e-2", "--batch-size", "2", "--validation-split", "0.25",
            "--log-every", "2"]
    if HAVE_TENSORBOARD:
        argv += ["--tensorboard", str(tmp / "tb")]
    result = run_cli(*argv)
    return tmp, data, output, result


def test_lora_run_reports_validation_and_writes_metrics(lora_run):
    tmp, _, output, result = lora_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    out = result.stdout
    # Not a terminal: plain lines, no progress-bar control codes.
    assert "\x1b" not in out and "\r" not in out
    lines = out.splitlines()
    assert lines[0].startswith(f"fine-tuning {PRESET} (LoRA rank 4")
    assert lines[1].startswith("validation before training: loss ")
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) >= 3 and all("tokens/s" in s and "eta" in s for s in steps)
    rows = read_csv(os.path.join(output, "metrics.csv"))
    assert list(rows[0]) == ["step", "epoch", "train_loss", "val_loss", "val_perplexity",
                             "learning_rate", "tokens", "elapsed_seconds"]
    validation = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    steps_per_epoch = int(rows[-1]["step"]) // 3
    assert [s for s, _ in validation] == [0, steps_per_epoch, 2 * steps_per_epoch, 3 * steps_per_epoch]
    assert validation[-1][1] < validation[0][1]
    train = [float(r["train_loss"]) for r in rows if r["train_loss"]]
    assert train[-1] < train[0]
    with open(os.path.join(output, "metrics.json")) as f:
        summary = json.load(f)["summary"]
    assert summary["val_loss_before"] == pytest.approx(validation[0][1], rel=1e-5)
    assert summary["val_loss_after"] == pytest.approx(validation[-1][1], rel=1e-5)
    assert summary["val_perplexity_after"] == pytest.approx(np.exp(validation[-1][1]), rel=1e-5)
    assert f"validation perplexity {summary['val_perplexity_before']:.2f} -> " in out
    png = os.path.join(output, "loss_curve.png")
    if HAVE_MATPLOTLIB:
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    else:
        assert not os.path.exists(png) and "[plot] extra" in out
    if HAVE_TENSORBOARD:
        events = os.listdir(os.path.join(tmp, "tb", "train"))
        assert any(name.startswith("events.out.tfevents") for name in events)
    else:
        missing = run_cli("finetune", "--data", data_path(tmp), "--output", str(tmp / "x"),
                          "--tensorboard", str(tmp / "tb"))
        assert_user_error(missing, "--tensorboard", "pip install")
    assert not os.path.exists(output + ".checkpoint")
    assert [f for f in os.listdir(tmp) if "tmp" in f] == []


def test_lora_run_improves_perplexity_and_its_adapters_reproduce_it(lora_run, shipped_lm):
    _, data, output, result = lora_run
    assert result.returncode == 0, result.stderr[-3000:]
    text = open(data).read()
    before, _ = reference_perplexity(shipped_lm, text, 32)
    tuned = GPT2CausalLM.from_preset(output)
    after, _ = reference_perplexity(tuned, text, 32)
    assert after < before
    scored = run_cli("perplexity", "--preset", output, data, "--sequence-length", "32", "--json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["perplexity"] == pytest.approx(after, rel=1e-4)
    # The adapter file on the base preset gives the same model (and `--lora` uses it).
    adapters = os.path.join(output, "adapters.lora.h5")
    base = GPT2CausalLM.from_preset(PRESET)
    base.backbone.load_lora_weights(adapters)
    x = {"token_ids": np.array([[10, 20, 30]]), "padding_mask": np.ones((1, 3), bool)}
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(base(x)), keras.ops.convert_to_numpy(tuned(x)), atol=1e-4
    )
    with_lora = run_cli("perplexity", data, "--lora", adapters, "--sequence-length", "32", "--json")
    assert json.loads(with_lora.stdout)["perplexity"] == pytest.approx(after, rel=1e-3)


@pytest.mark.backend_independent
def test_max_steps_counts_total_steps_across_epochs(tmp_path, text_file, shipped_lm):
    """--max-steps overrides --epochs (Transformers' Trainer); adapters-only output."""
    output = str(tmp_path / "shakespeare.lora.h5")
    result = run_cli("finetune", "--data", text_file, "--lora-rank", "2", "--output", output,
                     "--max-steps", "9", "--sequence-length", "32", "--batch-size", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isfile(output) and os.path.getsize(output) < 200_000
    rows = read_csv(str(tmp_path / "shakespeare.metrics.csv"))
    assert int(rows[-1]["step"]) == 9 and float(rows[-1]["epoch"]) > 1  # 9 steps > one epoch
    # Tokens count real (input, label) pairs, not the padding of the last window.
    ids = len(shipped_lm.preprocessor.tokenizer.tokenize(TEXT)) + 1  # + <|endoftext|>
    steps_per_epoch = math.ceil(math.ceil((ids - 1) / 32) / 4)
    row = next(r for r in rows if int(r["step"]) == steps_per_epoch)
    assert int(row["tokens"]) == ids - 1
    assert "done: 9 steps" in result.stdout
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["my.txt", "shakespeare.lora.h5", "shakespeare.metrics.csv", "shakespeare.metrics.json"]
        + (["shakespeare.loss_curve.png"] if HAVE_MATPLOTLIB else []))


@pytest.mark.backend_independent
def test_progress_is_a_live_bar_on_a_terminal(tmp_path, text_file):
    import pty
    import subprocess
    import sys

    from tests.cli.helpers import REPO
    from tests.cli.helpers import cli_env

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "gpt2_lib", "finetune", "--data", text_file, "--lora-rank", "2",
         "--output", str(tmp_path / "a.lora.h5"), "--max-steps", "4", "--sequence-length", "32"],
        stdout=follower, stderr=subprocess.PIPE, env=cli_env(), cwd=REPO,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=600) == 0, process.stderr.read()
    out = b"".join(chunks).decode("utf-8", "replace")
    assert "4/4" in out and "tokens/s" in out and "loss" in out
    assert "\r" in out  # redrawn in place
    assert "step 4/4  epoch" not in out  # not the plain lines


def test_interrupt_stops_promptly_checkpoints_and_resumes_at_the_step(tmp_path):
    """#15: Ctrl-C was swallowed on JAX (training ran to the end). Now: stop after
    the current step, write a checkpoint, exit 130 with one line; `--resume`
    continues at that step and ends with the weights of an uninterrupted run."""
    data = write(tmp_path / "my.txt", TEXT * 8)
    common = ["finetune", "--data", data, "--sequence-length", "32", "--batch-size", "2",
              "--max-steps", "120", "--log-every", "1", "--save-every", "1000"]
    output = str(tmp_path / "mine")
    process = popen_cli(*common, "--output", output)
    deadline = time.time() + 300
    line = ""
    while time.time() < deadline:
        line = process.stdout.readline()
        if line.startswith("step 3/") or not line:
            break
    assert line.startswith("step 3/"), process.communicate(timeout=60)
    process.send_signal(signal.SIGINT)
    sent = time.time()
    out, err = process.communicate(timeout=120)
    assert time.time() - sent < 60
    assert process.returncode == 130, (out[-2000:], err[-2000:])
    assert err.count("\n") == 1 and err.startswith("gpt2-lib: stopped by Ctrl-C after step ")
    stopped_at = int(err.split("after step ")[1].split()[0])
    assert 3 <= stopped_at < 120
    assert os.path.isfile(os.path.join(output + ".checkpoint", "state.npz"))
    assert not os.path.exists(output)  # nothing half-written

    fresh = run_cli(*common, "--output", output)
    assert_user_error(fresh, "--resume")
    other = run_cli(*common, "--output", output, "--resume", "--seed", "5")
    assert_user_error(other, "--seed: 1337 then, 5 now")
    resumed = run_cli(*common, "--output", output, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at step {stopped_at} of 120" in resumed.stdout
    assert not os.path.exists(output + ".checkpoint")
    rows = read_csv(os.path.join(output, "metrics.csv"))
    assert [int(r["step"]) for r in rows] == list(range(1, 121))  # continued, not restarted
    tokens = [int(r["tokens"]) for r in rows]
    assert tokens == sorted(tokens) and tokens[stopped_at] > tokens[stopped_at - 1]

    straight = str(tmp_path / "straight")
    uninterrupted = run_cli(*common, "--output", straight)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    resumed_lm, straight_lm = GPT2CausalLM.from_preset(output), GPT2CausalLM.from_preset(straight)
    for a, b in zip(resumed_lm.backbone.get_weights(), straight_lm.backbone.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-5)


@pytest.mark.backend_independent
def test_resume_without_a_checkpoint_and_past_the_end(tmp_path, text_file):
    result = run_cli("finetune", "--data", text_file, "--output", str(tmp_path / "o"), "--resume")
    assert_user_error(result, "--resume: no checkpoint")


@pytest.mark.backend_independent
def test_data_that_is_not_utf8_or_has_no_field(tmp_path):
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    result = run_cli("finetune", "--data", str(binary), "--output", str(tmp_path / "o"))
    assert_user_error(result, "not UTF-8")
    jsonl = write(tmp_path / "d.jsonl", '{"content": "hello"}\n')
    result = run_cli("finetune", "--data", jsonl, "--output", str(tmp_path / "o"))
    assert_user_error(result, "line 1 has no string field 'text'", "--text-field")
