"""Subprocess side of the distribution tests: 8 virtual CPU devices (JAX).

Run as `python -m tests.distribution.worker SCENARIO WORKDIR [DISTRIBUTION]`
with `XLA_FLAGS=--xla_force_host_platform_device_count=8` (see `helpers.py`).
Each scenario computes the single-device reference first (no distribution:
every variable on device 0), then the same under a distribution, and
asserts they agree; a failed check exits non-zero with its message.

Scenarios:
    train        fit (SGD, and "auto": gpt2_lib's AdamW), partial batches,
                 strings, generate, score, predict, evaluate, under
                 DataParallel(8), ModelParallel (1, 8) and (2, 4).
    io           from_preset (KerasHub and Transformers formats) under
                 DataParallel, ModelParallel(1, 8) and (2, 4); save_to_preset
                 and export from a sharded model; LoRA; int8 layouts.
    memory DIST  peak RSS of from_preset (prints JSON).
"""

import json
import os
import sys
import warnings

import keras
import numpy as np

import gpt2_lib
from gpt2_lib.backends import attention
from gpt2_lib.models import GPT2Backbone
from gpt2_lib.models import GPT2CausalLM
from gpt2_lib.models import generation_inputs

# Cache windows of 4 over generate()'s 12 slots (buckets of 4: not padded):
# the windows' `ops.switch` runs under every layout too (`windowed_attention`).
attention.CACHE_WINDOW = 4
generation_inputs.LENGTH_BUCKET = 4

# heads=4: (2, 4) splits heads, (1, 8) falls back to head_dim (with a warning);
# vocabulary 127 is odd, as GPT-2's 50257.
CONFIG = dict(
    vocabulary_size=127, num_layers=2, num_heads=4, hidden_dim=64,
    intermediate_dim=128, max_sequence_length=32, dropout=0.0,
)
PROMPT_LENGTH, LENGTH = 5, 12


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, "float64") - np.asarray(y, "float64")))) for x, y in zip(a, b))


def set_distribution(name):
    """`none`, `dp` (DataParallel over 8), `mp18` / `mp24` (ModelParallel meshes)."""
    if name == "none":
        keras.distribution.set_distribution(None)
        return None
    if name == "dp":
        distribution = keras.distribution.DataParallel()
    else:
        shape = {"mp18": (1, 8), "mp24": (2, 4), "mp42": (4, 2)}[name]
        mesh = keras.distribution.DeviceMesh(shape, ["batch", "model"])
        distribution = keras.distribution.ModelParallel(
            layout_map=GPT2Backbone.get_layout_map(mesh), batch_dim_name="batch"
        )
    keras.distribution.set_distribution(distribution)
    return distribution


def make_preset(path, **overrides):
    """A preset with lively random weights (so that greedy tokens depend on the prompt)."""
    keras.distribution.set_distribution(None)
    backbone = GPT2Backbone(**{**CONFIG, **overrides})
    rng = np.random.RandomState(0)
    for variable in backbone.weights:
        variable.assign(rng.normal(0.0, 0.3, variable.shape).astype("float32"))
    backbone.save_to_preset(path)
    return backbone


def weights(model):
    return [keras.ops.convert_to_numpy(v.value) for v in model.weights]


def spec(variable):
    """The variable's PartitionSpec, one entry per dimension."""
    entries = tuple(variable.value.sharding.spec)
    return entries + (None,) * (len(variable.shape) - len(entries))


def data():
    rng = np.random.RandomState(1)
    tokens = rng.randint(1, CONFIG["vocabulary_size"], (13, LENGTH)).astype("int32")
    prompt_mask = np.arange(LENGTH) < PROMPT_LENGTH
    prompts = {
        "token_ids": np.where(prompt_mask, tokens[:4], 0).astype("int32"),
        "padding_mask": np.broadcast_to(prompt_mask, (4, LENGTH)).copy(),
    }
    return tokens, prompts


# ---------------------------------------------------------------------------
# train


def train_run(preset, tokens, prompts, texts=None):
    """Everything `train` compares, on the current distribution."""
    keras.utils.set_random_seed(0)
    out = {}
    lm = GPT2CausalLM(GPT2Backbone.from_preset(preset))
    lm.compile(optimizer=keras.optimizers.SGD(0.1), sampler="greedy")
    out["score"] = keras.ops.convert_to_numpy(lm.score(tokens[:5], scoring_mode="loss"))
    out["generate"] = lm.generate(prompts, stop_token_ids=None)["token_ids"]
    out["predict"] = lm.predict({"token_ids": tokens[:5], "padding_mask": np.ones((5, LENGTH), bool)}, verbose=0)
    out["evaluate"] = lm.evaluate({"token_ids": tokens[:8]}, batch_size=8, verbose=0)
    # 13 rows, batch 8: the second batch (5 rows) does not split over 8 or 2 shards.
    lm.fit({"token_ids": tokens}, batch_size=8, epochs=2, shuffle=False, verbose=0)
    out["sgd"] = weights(lm.backbone)
    # "auto": gpt2_lib's AdamW (fused update, weight decay, gradient clipping).
    lm = GPT2CausalLM(GPT2Backbone.from_preset(preset))
    lm.compile(optimizer="auto")
    lm.fit({"token_ids": tokens}, batch_size=8, epochs=2, shuffle=False, verbose=0)
    out["adamw"] = weights(lm.backbone)
    if texts is not None:
        # Strings through the preprocessor, batch_size 3 (a multiple of no shard count).
        tokenizer = gpt2_lib.models.GPT2Tokenizer.from_preset("gpt2_tiny_shakespeare_en")
        preprocessor = gpt2_lib.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=LENGTH)
        lm = GPT2CausalLM(GPT2Backbone.from_preset(preset + "_text"), preprocessor=preprocessor)
        lm.compile(optimizer=keras.optimizers.SGD(0.1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the batch_size advice
            lm.fit(texts, batch_size=3, epochs=1, shuffle=False, verbose=0)
        out["strings"] = weights(lm.backbone)
    return out


TEXTS = ["To be, or not to be", "that is the question", "ROMEO: hi", "JULIET: hello", "A horse!"]


def scenario_train(workdir):
    """One device, then DataParallel(8), ModelParallel (1, 8) and (2, 4): equal results."""
    preset = os.path.join(workdir, "preset")
    make_preset(preset)
    make_preset(preset + "_text", vocabulary_size=2257)
    tokens, prompts = data()
    reference = train_run(preset, tokens, prompts, TEXTS)
    for name in ("dp", "mp18", "mp24"):
        set_distribution(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mp18's head_dim fallback, tested in `io`
            got = train_run(preset, tokens, prompts, TEXTS if name == "dp" else None)
        check(np.array_equal(got["generate"], reference["generate"]), f"{name}: greedy tokens differ")
        check(max_diff([got["score"]], [reference["score"]]) < 1e-5, f"{name}: score differs")
        check(got["predict"].shape == reference["predict"].shape, f"{name}: predict shape {got['predict'].shape}")
        check(max_diff([got["predict"]], [reference["predict"]]) < 1e-5, f"{name}: predict differs")
        check(max_diff(got["evaluate"], reference["evaluate"]) < 1e-5, f"{name}: evaluate differs")
        for key in ("sgd", "adamw", "strings"):
            if key in got:
                diff = max_diff(got[key], reference[key])
                check(diff < 1e-6, f"{name}: weights after fit ({key}) differ by {diff}")
        print(json.dumps({"scenario": "train", "distribution": name, "ok": True}), flush=True)


# ---------------------------------------------------------------------------
# io


def scenario_io(workdir):
    preset = os.path.join(workdir, "preset")
    hf_dir = os.path.join(workdir, "hf")
    reference_backbone = make_preset(preset)
    gpt2_lib.models.GPT2Backbone.from_preset(preset).export_to_transformers(hf_dir)
    reference = weights(reference_backbone)
    paths = [v.path for v in reference_backbone.weights]
    token_ids = np.random.RandomState(2).randint(0, 127, (8, LENGTH)).astype("int32")
    inputs = {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids, bool)}
    expected = keras.ops.convert_to_numpy(reference_backbone(inputs))
    query = paths.index("transformer_layer_0/self_attention/query/kernel")
    for name, query_spec in [("dp", (None, None, None)), ("mp18", (None, None, "model")), ("mp24", ("batch", "model", None))]:
        set_distribution(name)
        for source in (preset, hf_dir):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                backbone = GPT2Backbone.from_preset(source)
            fallbacks = [str(w.message) for w in caught if "layout" in str(w.message)]
            if name == "mp18":
                check(len(fallbacks) == 1 and "heads=4" in fallbacks[0] and "head_dim" in fallbacks[0],
                      f"mp18: expected one head_dim fallback warning, got {fallbacks}")
            check(max_diff(weights(backbone), reference) == 0, f"{name}: from_preset({source}) weights differ")
            got_spec = spec(backbone.weights[query])
            check(got_spec == query_spec, f"{name}: query kernel sharded {got_spec}, expected {query_spec}")
        check(max_diff([backbone(inputs)], [expected]) < 1e-5, f"{name}: forward differs")
    # Saving from the (2, 4) model: gathered, equal to what was loaded.
    set_distribution("mp24")
    backbone = GPT2Backbone.from_preset(preset)
    backbone.save_to_preset(os.path.join(workdir, "saved"))
    backbone.export_to_transformers(os.path.join(workdir, "saved_hf"))
    set_distribution("none")
    for saved in ("saved", "saved_hf"):
        again = GPT2Backbone.from_preset(os.path.join(workdir, saved))
        check(max_diff(weights(again), reference) == 0, f"mp24: {saved} differs from the loaded weights")
    # LoRA under (2, 4): adapters sharded like their kernels, trained, saved.
    set_distribution("mp24")
    lm = GPT2CausalLM(GPT2Backbone.from_preset(preset))
    lm.backbone.enable_lora(2)
    adapters = {v.path.rsplit("/", 2)[-2] + "/" + v.name: v for v in lm.backbone.weights if "lora" in v.name}
    lora_a, lora_b = spec(adapters["query/lora_kernel_a"]), spec(adapters["query/lora_kernel_b"])
    check(lora_a == ("batch", "model", None), f"lora_kernel_a spec {lora_a}")
    check(lora_b == (None, None), f"lora_kernel_b spec {lora_b}")
    for v in lm.backbone.weights:
        if "lora_kernel_b" in v.path:
            v.assign(np.full(v.shape, 0.01, "float32"))
    lm.compile(optimizer=keras.optimizers.SGD(0.1))
    lm.fit({"token_ids": token_ids}, batch_size=8, epochs=1, verbose=0)
    lora_file = os.path.join(workdir, "adapters.lora.h5")
    lm.backbone.save_lora_weights(lora_file)
    trained = {v.path: keras.ops.convert_to_numpy(v.value) for v in lm.backbone.weights if "lora" in v.path}
    set_distribution("none")
    plain = GPT2Backbone.from_preset(preset)
    plain.load_lora_weights(lora_file)
    loaded = {v.path: keras.ops.convert_to_numpy(v.value) for v in plain.weights if "lora" in v.path}
    check(sorted(loaded) == sorted(trained), "LoRA paths differ")
    check(max_diff([loaded[k] for k in sorted(loaded)], [trained[k] for k in sorted(trained)]) == 0, "LoRA file differs")
    # A model built before the distribution was set is laid out by `fit`.
    lm = GPT2CausalLM(GPT2Backbone.from_preset(preset))
    set_distribution("mp24")
    lm.compile(optimizer=keras.optimizers.SGD(0.1))
    lm.fit({"token_ids": token_ids}, batch_size=8, epochs=1, verbose=0)
    check(spec(lm.backbone.weights[query]) == ("batch", "model", None), "fit did not lay out the weights")
    set_distribution("none")
    # int8: quantized kernels and their scales laid out like the float kernels.
    warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
    plain = GPT2Backbone.from_preset(preset)
    plain.quantize("int8")
    expected_int8 = keras.ops.convert_to_numpy(plain(inputs))
    set_distribution("mp24")
    backbone = GPT2Backbone.from_preset(preset)
    backbone.quantize("int8")
    gpt2_lib.models.distribution.apply_layouts(backbone)
    by_path = {v.path: v for v in backbone.weights}
    kernel = by_path["transformer_layer_0/feedforward_intermediate_dense/kernel"]
    scale = by_path["transformer_layer_0/feedforward_intermediate_dense/kernel_scale"]
    check(kernel.dtype == "int8" and spec(kernel) == ("batch", "model"), f"int8 kernel spec {spec(kernel)}")
    check(spec(scale) == ("model",), f"kernel_scale spec {spec(scale)}")
    check(max_diff([backbone(inputs)], [expected_int8]) < 1e-4, "int8 forward differs")
    print(json.dumps({"scenario": "io", "ok": True}))


# ---------------------------------------------------------------------------
# memory


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def scenario_memory(workdir, name, preset):
    """Peak RSS of `from_preset(preset)` above the RSS before it, as JSON.

    The peak is the kernel's high-water mark (`VmHWM`), reset just before
    loading (`/proc/self/clear_refs`); `ru_maxrss` would include the peak of
    the process that started this one.
    """
    import time

    import jax

    set_distribution(name)
    jax.device_put(np.ones(3)).block_until_ready()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status("VmRSS")
    start = time.perf_counter()
    backbone = GPT2Backbone.from_preset(preset)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    nbytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in backbone.weights)
    print(json.dumps({"seconds": seconds, "rss_before": before, "peak_rss": peak, "weight_bytes": nbytes}))


if __name__ == "__main__":
    scenario, workdir = sys.argv[1], sys.argv[2]
    if scenario == "train":
        scenario_train(workdir)
    elif scenario == "io":
        scenario_io(workdir)
    elif scenario == "memory":
        scenario_memory(workdir, sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
