"""`gpt2-lib generate`: same text as the Python API, prompts from files, JSON, pipes."""

import json
import subprocess
import sys

import numpy as np
import pytest

from gpt2_lib import samplers
from tests.cli.helpers import BACKEND
from tests.cli.helpers import REPO
from tests.cli.helpers import assert_user_error
from tests.cli.helpers import cli_env
from tests.cli.helpers import run_cli
from tests.cli.helpers import write


def test_greedy_batch_equals_the_python_api(shipped_lm):
    result = run_cli("generate", "ROMEO.", "JULIET.\nO", "--sampler", "greedy",
                     "--max-length", "24")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    shipped_lm.compile(sampler="greedy")
    expected = shipped_lm.generate(["ROMEO.", "JULIET.\nO"], max_length=24)
    assert result.stdout == expected[0] + "\n\n" + expected[1] + "\n"
    assert expected[0].startswith("ROMEO.") and len(expected[0]) > len("ROMEO.")


def test_stream_equals_no_stream_and_the_python_api(shipped_lm):
    streamed = run_cli("generate", "ROMEO.", "--sampler", "greedy", "--max-length", "40")
    whole = run_cli("generate", "ROMEO.", "--sampler", "greedy", "--max-length", "40",
                    "--no-stream")
    assert streamed.returncode == whole.returncode == 0
    assert streamed.stdout == whole.stdout
    shipped_lm.compile(sampler="greedy")
    assert whole.stdout == shipped_lm.generate("ROMEO.", max_length=40) + "\n"


def test_seeded_sampling_is_reproducible():
    argv = ["generate", "ROMEO.", "--seed", "7", "--max-length", "32", "--top-p", "0.9"]
    first, second = run_cli(*argv), run_cli(*argv)
    assert first.returncode == 0 and first.stdout == second.stdout
    assert first.stdout.startswith("ROMEO.")


def test_prompts_from_a_file_stdin_and_jsonl_with_json_output(tmp_path, shipped_lm):
    prompts = ["ROMEO.", "JULIET.", "KING.\nWhat", "HAMLET."]
    plain = write(tmp_path / "prompts.txt", "\n".join(prompts[:2]) + "\n\n" + "\n".join(prompts[2:3]))
    jsonl = write(tmp_path / "prompts.jsonl",
                  "".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    greedy = ["--sampler", "greedy", "--max-length", "20", "--json", "--batch-size", "3"]
    from_file = run_cli("generate", "--input", plain, *greedy)
    from_stdin = run_cli("generate", "--input", "-", *greedy, input=open(plain).read())
    from_jsonl = run_cli("generate", "--input", jsonl, "--input-field", "prompt", *greedy)
    for result in (from_file, from_stdin, from_jsonl):
        assert result.returncode == 0 and result.stderr == "", result.stderr
    def without_timing(result):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in result.stdout.splitlines()]

    records = [json.loads(line) for line in from_jsonl.stdout.splitlines()]
    assert without_timing(from_file) == without_timing(from_stdin)
    # "KING.\nWhat" is two lines of the plain file, one JSON string.
    assert [r["prompt"] for r in map(json.loads, from_file.stdout.splitlines())] == [
        "ROMEO.", "JULIET.", "KING.", "What"]
    assert [r["prompt"] for r in records] == prompts
    shipped_lm.compile(sampler="greedy")
    tokenizer = shipped_lm.preprocessor.tokenizer
    # Batches of 3 (the last one padded) give each prompt the text it gets alone.
    for record, prompt in zip(records, prompts):
        expected = shipped_lm.generate(prompt, max_length=20)
        assert record["text"] == expected
        assert record["text"] == prompt + record["completion"]
        assert record["prompt_tokens"] == len(tokenizer.tokenize(prompt))
        x = shipped_lm.preprocessor.generate_preprocess([prompt], sequence_length=20)
        out = shipped_lm.generate({k: np.asarray(v) for k, v in x.items()})
        new_tokens = int(np.asarray(out["padding_mask"]).sum() - np.asarray(x["padding_mask"]).sum())
        assert record["completion_tokens"] == new_tokens
        assert 1 + record["prompt_tokens"] + record["completion_tokens"] <= 20
        assert record["seconds"] > 0 and record["batch_size"] in (3, 1)


def test_make_sampler_names_mean_what_compile_means():
    from gpt2_lib.cli.generate import make_sampler
    from gpt2_lib.cli.parser import parse_args

    def sampler(*argv):
        return make_sampler(parse_args(["generate", "x", *argv]))

    assert sampler().get_config() == samplers.get("top_k").get_config()  # k=5, as compile()
    assert sampler("--sampler", "top_p").get_config() == samplers.get("top_p").get_config()
    assert sampler("--sampler", "beam").get_config() == samplers.get("beam").get_config()
    assert sampler("--top-k", "50", "--temperature", "0.7", "--seed", "3").get_config() == (
        samplers.TopKSampler(k=50, temperature=0.7, seed=3).get_config())
    assert sampler("--top-p", "0.9", "--top-k", "40").get_config() == (
        samplers.TopPSampler(p=0.9, k=40).get_config())
    assert sampler("--num-beams", "3").num_beams == 3
    assert type(sampler("--sampler", "greedy")) is samplers.GreedySampler


def test_lora_adapters_apply_on_load(tmp_path, shipped_lm):
    """--lora FILE generates (and scores) with the adapted model."""
    from gpt2_lib.models import GPT2CausalLM

    lm = GPT2CausalLM.from_preset("gpt2_tiny_shakespeare_en")
    lm.backbone.enable_lora(2)
    rng = np.random.default_rng(0)
    for variable in lm.backbone.trainable_variables:  # adapters only: make them matter
        variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))
    adapters = str(tmp_path / "a.lora.h5")
    lm.backbone.save_lora_weights(adapters)
    lm.compile(sampler="greedy")
    expected = lm.generate("ROMEO.", max_length=24)
    shipped_lm.compile(sampler="greedy")
    assert expected != shipped_lm.generate("ROMEO.", max_length=24)
    result = run_cli("generate", "ROMEO.", "--sampler", "greedy", "--max-length", "24",
                     "--lora", adapters, "--no-stream")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"


def test_dtype_bfloat16_generates():
    result = run_cli("generate", "ROMEO.", "--dtype", "bfloat16", "--max-length", "16",
                     "--sampler", "greedy", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["text"].startswith("ROMEO.")


@pytest.mark.backend_independent
def test_closed_pipe_exits_quietly():
    """`gpt2-lib generate ... | head -1`: no "Broken pipe", status 0."""
    command = (f"{sys.executable} -m gpt2_lib generate ROMEO. JULIET. KING. --sampler greedy "
               "--max-length 200 | head -1; echo \"status=${PIPESTATUS[0]}\"")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                            env=cli_env(), cwd=REPO, timeout=600)
    lines = result.stdout.splitlines()
    assert lines[0] == "ROMEO." and lines[-1] == "status=0", result.stdout
    assert result.stderr == ""


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--max-length", "300"], ["--max-length", "max_sequence_length=256"]),
        (["--top-k", "5000"], ["--top-k", "vocabulary"]),
        (["--preset", "gpt2_tiny_shakespeare"], ["Did you mean 'gpt2_tiny_shakespeare_en'"]),
        (["--preset", "./no/such/dir"], ["does not exist"]),
    ],
)
def test_errors_after_loading_print_nothing_on_stdout(argv, fragments):
    result = run_cli("generate", "ROMEO.", *argv)
    assert_user_error(result, *fragments)


@pytest.mark.backend_independent
def test_prompt_too_long_names_its_line(tmp_path):
    path = write(tmp_path / "p.txt", "short\n" + "word " * 300 + "\n")
    result = run_cli("generate", "--input", path, "--max-length", "64")
    assert_user_error(result, "p.txt line 2", "--max-length 64")


def test_max_new_tokens_counts_new_tokens_per_prompt(shipped_lm):
    prompts = ["ROMEO.", "A much longer prompt of several words here"]
    result = run_cli("generate", *prompts, "--max-new-tokens", "5", "--sampler", "greedy",
                     "--json")
    assert result.returncode == 0, result.stderr
    shipped_lm.compile(sampler="greedy")
    for line, prompt in zip(result.stdout.splitlines(), prompts):
        record = json.loads(line)
        assert record["completion_tokens"] == 5
        alone = 1 + record["prompt_tokens"] + 5  # start token + prompt + 5 new
        assert record["text"] == shipped_lm.generate(prompt, max_length=alone)
    streamed = run_cli("generate", prompts[0], "--max-new-tokens", "5", "--sampler", "greedy")
    assert streamed.stdout == json.loads(result.stdout.splitlines()[0])["text"] + "\n"


def test_quantize_int8_generates_as_the_quantized_python_model():
    """--quantize int8 is `lm.quantize("int8")` after loading (and differs from float32)."""
    from gpt2_lib.models import GPT2CausalLM

    lm = GPT2CausalLM.from_preset("gpt2_tiny_shakespeare_en")
    lm.quantize("int8")
    lm.compile(sampler="greedy")
    expected = lm.generate("ROMEO.", max_length=32)
    result = run_cli("generate", "ROMEO.", "--sampler", "greedy", "--max-length", "32",
                     "--quantize", "int8", "--no-stream")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    assert_user_error(run_cli("generate", "ROMEO.", "--quantize", "int3"),
                      "--quantize", "'int8', 'int4'")


def test_compiled_programs_are_kept_unless_told_not_to(tmp_path):
    """JAX: the command keeps compiled programs in $GPT2_LIB_CACHE by default."""
    kept, not_kept = tmp_path / "kept", tmp_path / "not_kept"
    argv = ("generate", "ROMEO.", "--sampler", "greedy", "--max-length", "16")
    result = run_cli(*argv, env=cli_env(GPT2_LIB_CACHE=str(kept)))
    assert result.returncode == 0, result.stderr
    result = run_cli(*argv, "--no-compilation-cache", env=cli_env(GPT2_LIB_CACHE=str(not_kept)))
    assert result.returncode == 0, result.stderr
    assert not not_kept.exists()
    if BACKEND == "jax":
        assert any((kept / "jax_compilation_cache").iterdir())
    else:  # JAX's cache only: torch compiles nothing, TensorFlow's programs are not kept
        assert not kept.exists()
