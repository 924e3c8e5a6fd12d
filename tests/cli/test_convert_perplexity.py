"""`gpt2-lib convert` and `gpt2-lib perplexity`."""

import hashlib
import json
import os
import re

import keras
import numpy as np
import pytest

from gpt2_lib.models import Backbone
from gpt2_lib.models import GPT2Backbone
from gpt2_lib.models import GPT2CausalLM
from tests.cli.helpers import PRESET
from tests.cli.helpers import TEXT
from tests.cli.helpers import assert_user_error
from tests.cli.helpers import run_cli
from tests.cli.helpers import write
from tests.cli.test_finetune import reference_perplexity


def tree_digest(path):
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                digest.update(name.encode() + f.read())
    return digest.hexdigest()


def test_convert_to_transformers_and_back(tmp_path, shipped_lm):
    import torch
    import transformers

    hf_dir = str(tmp_path / "hf")
    result = run_cli("convert", PRESET, hf_dir, "--to", "transformers")
    assert result.returncode == 0, result.stderr
    seconds = re.search(r"in (\d+\.\d) s \(load (\d+\.\d) s, write (\d+\.\d) s\)", result.stderr)
    assert seconds and float(seconds.group(1)) > 0.0, result.stderr  # real elapsed time
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ids = shipped_lm.preprocessor.tokenizer.tokenize("ROMEO.\nWhat light")
    assert hf_tokenizer("ROMEO.\nWhat light")["input_ids"] == list(ids)
    with torch.no_grad():
        expected = hf_model(torch.tensor([ids])).logits.numpy()
    x = {"token_ids": np.array([ids]), "padding_mask": np.ones((1, len(ids)), bool)}
    # float32 logits of two libraries (magnitudes up to ~13): 9e-6 apart when
    # run alone; one CI run (JAX, in an xdist worker) saw 2.1e-4 at one
    # position, not reproduced since. A wrong conversion moves them by > 0.1.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(shipped_lm(x)), expected, atol=1e-3)

    # Converting in place is refused, and leaves the checkpoint as it was.
    before = tree_digest(hf_dir)
    assert_user_error(run_cli("convert", hf_dir, hf_dir), "is the source")
    assert_user_error(run_cli("convert", hf_dir, hf_dir + "/", "--overwrite"), "is the source")
    assert tree_digest(hf_dir) == before

    keras_dir = str(tmp_path / "keras")
    result = run_cli("convert", hf_dir, keras_dir)
    assert result.returncode == 0, result.stderr
    back = GPT2CausalLM.from_preset(keras_dir)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(back(x)), keras.ops.convert_to_numpy(shipped_lm(x)), atol=1e-5
    )


def test_convert_a_backbone_only_preset(tmp_path):
    """#15: it said "has no tokenizer" instead of exporting the backbone."""
    backbone = GPT2Backbone.from_preset(PRESET)
    source = str(tmp_path / "backbone")
    backbone.save_to_preset(source)
    hf_dir = str(tmp_path / "hf")
    result = run_cli("convert", source, hf_dir, "--to", "transformers")
    assert result.returncode == 0, result.stderr
    assert "backbone only" in result.stderr
    assert sorted(os.listdir(hf_dir)) == ["config.json", "model.safetensors"]
    restored = Backbone.from_preset(hf_dir)
    for a, b in zip(restored.get_weights(), backbone.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_convert_to_bfloat16(tmp_path):
    output = str(tmp_path / "bf16")
    result = run_cli("convert", PRESET, output, "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    with open(os.path.join(output, "config.json")) as f:
        assert "bfloat16" in f.read()


def test_perplexity_matches_a_numpy_reference(tmp_path, shipped_lm):
    data = write(tmp_path / "held_out.txt", TEXT)
    result = run_cli("perplexity", data, "--sequence-length", "32")
    assert result.returncode == 0, result.stderr
    expected, count = reference_perplexity(shipped_lm, TEXT, 32)
    assert float(result.stdout.split()[1]) == pytest.approx(expected, rel=1e-4)
    assert f"({count:,} tokens" in result.stdout
    as_json = json.loads(run_cli("perplexity", data, "--sequence-length", "32", "--json").stdout)
    assert as_json["perplexity"] == pytest.approx(expected, rel=1e-4) and as_json["tokens"] == count


@pytest.mark.backend_independent
def test_perplexity_errors(tmp_path):
    empty = write(tmp_path / "empty.txt", "  \n\n")
    assert_user_error(run_cli("perplexity", empty), "is empty")
    data = write(tmp_path / "d.txt", TEXT)
    assert_user_error(run_cli("perplexity", data, "--sequence-length", "5000"),
                      "--sequence-length", "max_sequence_length=256")


def test_convert_quantize_int8_writes_a_quantized_preset(tmp_path):
    """convert --quantize int8: a preset in KerasHub's quantized layout that loads
    quantized and computes what quantizing in Python computes."""
    output = str(tmp_path / "int8")
    result = run_cli("convert", PRESET, output, "--quantize", "int8")
    assert result.returncode == 0, result.stderr
    assert "int8 weights" in result.stderr
    loaded = GPT2CausalLM.from_preset(output)
    assert any("int8" in str(v.dtype) for v in loaded.backbone.weights)
    reference = GPT2CausalLM.from_preset(PRESET)
    reference.quantize("int8")
    token_ids = np.array([[5, 17, 300, 42, 7]], "int32")
    inputs = {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids, bool)}
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded.backbone(inputs)),
        keras.ops.convert_to_numpy(reference.backbone(inputs)),
    )
    assert_user_error(
        run_cli("convert", PRESET, str(tmp_path / "hf"), "--to", "transformers",
                "--quantize", "int8"),
        "--quantize", "--to keras",
    )


def test_perplexity_with_int8_weights_stays_within_one_percent(tmp_path, shipped_lm):
    data = write(tmp_path / "held_out.txt", TEXT)
    result = run_cli("perplexity", data, "--sequence-length", "32", "--json",
                     "--quantize", "int8")
    assert result.returncode == 0, result.stderr
    expected, _ = reference_perplexity(shipped_lm, TEXT, 32)
    quantized = json.loads(result.stdout)["perplexity"]
    assert quantized != expected
    assert quantized == pytest.approx(expected, rel=0.01)
