"""DataParallel and ModelParallel on 8 virtual CPU devices equal one device.

Each test runs `tests/distribution/worker.py` in a subprocess (JAX, 8
devices) that computes the one-device reference and the distributed result
and compares them: weights after `fit` (SGD and gpt2_lib's AdamW, with a
final partial batch, and strings through the preprocessor) within 1e-6,
greedy `generate` token for token, `score`/`predict`/`evaluate` within
1e-5; `from_preset` of both preset formats straight into shards; saving,
exporting and LoRA files from a sharded model; int8 layouts.
"""

import json

from tests.distribution.helpers import jax_only
from tests.distribution.helpers import run_worker


@jax_only
def test_training_generation_and_scoring_equal_one_device(tmp_path):
    out = run_worker("tests.distribution.worker", "train", tmp_path)
    done = [json.loads(line)["distribution"] for line in out.splitlines() if line.startswith("{")]
    assert done == ["dp", "mp18", "mp24"]


@jax_only
def test_loading_saving_lora_and_int8_under_distributions(tmp_path):
    out = run_worker("tests.distribution.worker", "io", tmp_path)
    assert '"ok": true' in out


@jax_only
def test_sharded_loads_take_the_memory_of_a_plain_load(tmp_path):
    """Loading into shards peaks like a plain load (about 1x the weight bytes).

    ModelParallel holds each weight once; DataParallel's replicas share one
    host copy while loading. The ~90 MB preset keeps the test fast, so the
    bound allows the fixed overhead a plain load has too (at GPT-2 base size
    the ratios are ~1.07x: `benchmarks/distribution.py`).
    """
    preset = tmp_path / "preset"
    run_worker("tests.distribution.memory_preset", preset, devices=1)
    extra = {}
    for name in ("none", "mp24", "dp"):
        out = run_worker("tests.distribution.worker", "memory", tmp_path, name, preset)
        stats = json.loads(out.strip().splitlines()[-1])
        extra[name] = (stats["peak_rss"] - stats["rss_before"]) / stats["weight_bytes"]
    assert extra["none"] <= 1.5, extra
    assert extra["mp24"] <= extra["none"] + 0.1, extra
    assert extra["dp"] <= extra["none"] + 0.1, extra
