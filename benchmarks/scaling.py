"""Generation cost growth with context length and model size, and peak memory.

Two tables, one fresh process per row (`--timeout` each; a failure or a
timeout becomes a table row, not a crash), for every Keras backend asked for.
Models have random weights (`GPT2Backbone(**preset_config(...), dropout=0.0)`)
and generate greedily (`compile(sampler="greedy")`) from a dict of token ids,
batch 1, with `stop_token_ids=None` so that every call fills `max_length`.

1. Context length: GPT-2 base, float32, a 32-token prompt generated up to
   each of `--lengths` (128 512 1024). The first call (compilation included)
   and the best of `--repeats` (at least 1) further calls (decode tokens/s = new tokens /
   seconds) are timed; then one call at `max_length - 1` (a length this
   process has not seen, almost the same work) shows whether a new length
   recompiles: its time beside the steady time ("yes" when it takes over
   0.1 s and 25% more than the steady call scaled to one token fewer).
2. Model size: base, medium, large, extra_large in float32 and bfloat16
   (`GPT2Backbone(..., dtype=...)`), `max_length` `--size-length` (128):
   decode tokens/s and peak memory against what the model needs,
   weights + KV cache, where cache = 2 * layers * batch * max_length *
   hidden * bytes per element. Target: peak / (weights + cache) <= 1.2.

Memory. "Before" is the process's resident set (VmRSS) after importing the
framework and running one tiny op (which starts the backend's runtime),
before building. "Build peak" is `ru_maxrss` right after
building, minus before; "after build" is the resident set once the build's
freed temporaries are handed back (`malloc_trim`), the floor generation
starts from (TensorFlow keeps ~200 MB more after assigning base float32
weights than after Keras' own initializers: `--init keras` to compare).
"Generate peak" is the highest VmRSS that a thread
sampling /proc/self/statm every 5 ms saw from just before the first
`generate()` until the end (or `ru_maxrss` at the end if it rose above the
build peak: then it is exact), minus before. It includes compiled code and
the framework's working buffers, i.e. everything generation costs,
compilation included. "Compiled-call peak" leaves compilation out: the
highest VmRSS during the timed calls after the first (the compiler's freed
memory handed back with `malloc_trim` first), minus before; what a process
that loaded its programs from a compilation cache, or generates again, holds.

Weights are not drawn by Keras' random initializers (a minute or more for
extra_large on JAX): the backbone is built with deferred variables and each
one is allocated once from a cheap pseudo-random array
(`preset_io.fast_init.build_and_load`, as a preset load does). The build
time is printed; it is not what is measured. `--init keras` builds normally.

Usage (a quiet machine; see `--help` for the options):
    python benchmarks/scaling.py --json scaling.json
    python benchmarks/scaling.py --only lengths --backends jax
    python benchmarks/scaling.py --only sizes --sizes base medium --dtypes bfloat16
    python benchmarks/scaling.py --quick                 # smoke test, tiny model
"""

import argparse
import ctypes
import json
import math
import os
import subprocess
import sys
import threading
import time

from generate import REPO
from generate import SIZES
from generate import limit_threads
from generate import prompts
from generate import rss_mb
from generate import timed

PRESETS = {
    "base": "gpt2_base_en",
    "medium": "gpt2_medium_en",
    "large": "gpt2_large_en",
    "extra_large": "gpt2_extra_large_en",
}
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}
TARGET = 1.2
MB = 2**20


def config_of(size):
    if size in SIZES and size not in PRESETS:
        return dict(SIZES[size])
    from gpt2_lib.utils.builtin_presets import preset_config

    config = preset_config(PRESETS[size])
    config.pop("dropout", None)
    return config


def parameter_count(config):
    """GPT-2 parameters (tied embedding counted once)."""
    h, i, layers = config["hidden_dim"], config["intermediate_dim"], config["num_layers"]
    per_layer = 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h  # attention, MLP, 2 LayerNorms
    return (config["vocabulary_size"] + config["max_sequence_length"]) * h + layers * per_layer + 2 * h


def cache_bytes(config, batch, max_length, dtype):
    return 2 * config["num_layers"] * batch * max_length * config["hidden_dim"] * BYTES[dtype]


def current_rss():
    """Resident memory of this process now, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler(threading.Thread):
    """Highest resident memory seen, sampled every `interval` seconds."""

    def __init__(self, interval=0.005):
        super().__init__(daemon=True)
        self.interval, self.peak, self.done = interval, current_rss(), threading.Event()

    def run(self):
        while not self.done.wait(self.interval):
            self.peak = max(self.peak, current_rss())

    def stop(self):
        self.done.set()
        self.join()
        return max(self.peak, current_rss())


# Worker (runs in its own process) ------------------------------------------------


def build_backbone(config, dtype, init):
    from gpt2_lib.models import GPT2Backbone

    def build():
        return GPT2Backbone(**config, dropout=0.0, dtype=dtype)

    if init == "keras":
        return build()
    import numpy as np

    from gpt2_lib.preset_io.fast_init import skip_weight_init

    # Zeros (no random draw), then 1M normal values repeated into each weight:
    # as fast as a copy, and the values do not change the speed. Not
    # `fast_init.build_and_load` with `initialize_variable`: on torch that
    # leaves the weights resident twice (1022 vs 479 MB for base float32).
    with skip_weight_init():
        backbone = build()
    pool = np.random.default_rng(0).standard_normal(2**20, dtype="float32") * 0.02
    for variable in backbone.weights:
        shape = tuple(variable.shape)
        if variable.path.endswith("gamma"):
            variable.assign(np.ones(shape, "float32"))
        elif len(shape) > 1:
            variable.assign(np.resize(pool, shape))
    return backbone


def worker(row, args):
    limit_threads(args.threads)
    import keras

    from gpt2_lib.models import GPT2CausalLM

    imported = current_rss()
    # Start the backend's runtime (XLA client, oneDNN/MKL libraries) with a
    # tiny op first, so that "before" leaves out what any model would cost.
    keras.ops.convert_to_numpy(keras.ops.matmul(keras.ops.ones((8, 8)), keras.ops.ones((8, 8))))
    before = current_rss()
    config = config_of(row["size"])
    # No `keras.utils.set_random_seed()`: it imports TensorFlow and torch
    # (~430 MB) on every backend, which would count as the model's memory.
    start = time.perf_counter()
    backbone = build_backbone(config, row["dtype"], args.init)
    build_s = time.perf_counter() - start
    lm = GPT2CausalLM(backbone, preprocessor=None)
    if row.get("quantize"):
        lm.quantize(row["quantize"])  # the float kernels are freed
    lm.compile(sampler="greedy")
    build_maxrss = rss_mb() * MB
    # Hand freed build temporaries back to the OS (glibc keeps them otherwise:
    # 719 -> 524 MB for base float32 built by Keras on JAX): not generation's cost.
    ctypes.CDLL(None).malloc_trim(0)
    built = current_rss()
    weights = sum(math.prod(v.shape) * BYTES[v.dtype] for v in backbone.weights)
    batch, prompt_length, max_length = 1, row["prompt_length"], row["max_length"]
    ids = prompts(batch, prompt_length, config["vocabulary_size"])
    inputs = {"token_ids": ids, "padding_mask": ids != -1}

    def generate(length):
        out = lm.generate(inputs, max_length=length, stop_token_ids=None)
        assert out["token_ids"].shape == (batch, length), out["token_ids"].shape

    sampler = PeakSampler()
    sampler.start()
    first, _ = timed(lambda: generate(max_length), 0)
    first_peak = sampler.stop()
    # The compiler's working memory is freed after the first call: hand it
    # back to the OS, then sample the compiled calls on their own.
    ctypes.CDLL(None).malloc_trim(0)
    sampler = PeakSampler()
    sampler.start()
    best = min(timed(lambda: generate(max_length), 0)[0] for _ in range(max(1, args.repeats)))
    compiled_peak = sampler.stop()
    result = {}
    if row["kind"] == "lengths":
        start = time.perf_counter()
        generate(max_length - 1)
        result["new_length_s"] = time.perf_counter() - start
    peak = max(first_peak, compiled_peak, current_rss())
    end_maxrss = rss_mb() * MB
    if end_maxrss > build_maxrss:
        peak = max(peak, end_maxrss)
    new_tokens = max_length - prompt_length
    result.update(
        build_s=build_s, first_s=first, steady_s=best, new_tokens=new_tokens,
        tokens_per_s=batch * new_tokens / best,
        weight_bytes=weights, cache_bytes=cache_bytes(config, batch, max_length, row["dtype"]),
        runtime_bytes=before - imported, before_bytes=before, build_peak_bytes=build_maxrss - before, built_bytes=built - before, peak_bytes=peak - before,
        compiled_peak_bytes=compiled_peak - before,
    )
    result["ratio"] = result["peak_bytes"] / (weights + result["cache_bytes"])
    result["compiled_ratio"] = result["compiled_peak_bytes"] / (weights + result["cache_bytes"])
    return result


# Driver ----------------------------------------------------------------------


def plan(args):
    """The rows to run: dicts of kind, backend, size, dtype, max_length, prompt_length."""
    rows = []
    if "lengths" in args.only:
        for backend in args.backends:
            for length in args.lengths:
                rows.append(dict(kind="lengths", backend=backend, size=args.length_size,
                                 dtype="float32", max_length=length, prompt_length=args.prompt_length))
    if "sizes" in args.only:
        for backend in args.backends:
            for size in args.sizes:
                for dtype in args.dtypes:
                    rows.append(dict(kind="sizes", backend=backend, size=size, dtype=dtype,
                                     max_length=args.size_length, prompt_length=args.prompt_length,
                                     quantize=args.quantize))
    return rows


def needed_bytes(row):
    config = config_of(row["size"])
    return (parameter_count(config) * BYTES[row["dtype"]]
            + cache_bytes(config, 1, row["max_length"], row["dtype"]))


def spawn(row, args):
    env = dict(os.environ, KERAS_BACKEND=row["backend"], TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(row),
               "--repeats", str(args.repeats), "--threads", str(args.threads), "--init", args.init]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()
        reason = tail[-1] if tail else ""
        if done.returncode < 0:
            reason = f"killed by signal {-done.returncode} (out of memory?) {reason}"
        return {"error": reason[-200:], "stderr": (done.stderr or "")[-3000:]}
    result = json.loads(lines[-1][len("RESULT "):])
    result["process_s"] = time.perf_counter() - start
    return result


def markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def memory_cells(r):
    ratio = r["ratio"]
    return [f"{r['weight_bytes'] / MB:.0f}", f"{r['cache_bytes'] / MB:.1f}",
            f"{r['build_peak_bytes'] / MB:.0f}", f"{r['built_bytes'] / MB:.0f}", f"{r['peak_bytes'] / MB:.0f}",
            f"{ratio:.2f} {'ok' if ratio <= TARGET else 'OVER'}",
            f"{r['compiled_peak_bytes'] / MB:.0f}", f"{r['compiled_ratio']:.2f}"]


def failed_cells(r, width):
    cell = "skipped: " + r["skipped"] if "skipped" in r else "FAILED: " + r["error"]
    return [cell] + [""] * (width - 1)


def print_tables(done, args):
    memory = ["weights MB", "KV cache MB", "build peak MB", "after build MB", "generate peak MB", f"peak/(w+c) (<= {TARGET})",
              "compiled-call peak MB", "compiled/(w+c)"]
    lengths = [(row, r) for row, r in done if row["kind"] == "lengths"]
    if lengths:
        size = lengths[0][0]["size"]
        print(f"\n### Context length: {size}, float32, batch 1, prompt {args.prompt_length} tokens, greedy\n")
        header = ["backend", "max_length", "build s", "first call s", "steady call s", "decode tok/s",
                  "call at max_length-1 s", "recompiles?", *memory]
        table = []
        for row, r in lengths:
            cells = [row["backend"], row["max_length"]]
            if "tokens_per_s" not in r:
                table.append(cells + failed_cells(r, len(header) - 2))
                continue
            expected = r["steady_s"] * (r["new_tokens"] - 1) / r["new_tokens"]
            extra = r["new_length_s"] - expected
            recompiles = "yes" if extra > max(0.1, 0.25 * expected) else "no"
            cells += [f"{r['build_s']:.1f}", f"{r['first_s']:.2f}", f"{r['steady_s']:.2f}",
                      f"{r['tokens_per_s']:.1f}", f"{r['new_length_s']:.2f}", f"{recompiles} ({extra:+.2f} s)",
                      *memory_cells(r)]
            table.append(cells)
        print(markdown(header, table))
    sizes = [(row, r) for row, r in done if row["kind"] == "sizes"]
    if sizes:
        print(f"\n### Model size: batch 1, prompt {args.prompt_length} tokens, max_length {args.size_length}, greedy\n")
        header = ["backend", "size", "dtype", "build s", "first call s", "decode tok/s", *memory]
        table = []
        for row, r in sizes:
            dtype = row["dtype"] + (f" + {row['quantize']}" if row.get("quantize") else "")
            cells = [row["backend"], row["size"], dtype]
            if "tokens_per_s" not in r:
                table.append(cells + failed_cells(r, len(header) - 3))
                continue
            cells += [f"{r['build_s']:.1f}", f"{r['first_s']:.2f}", f"{r['tokens_per_s']:.1f}", *memory_cells(r)]
            table.append(cells)
        print(markdown(header, table))
    print(f"\nMemory is resident set above the process's before building ({args.repeats} timed call(s) "
          "after the first). build s: weights allocation (not measured). Skipped rows exceeded "
          f"--skip-over-gb {args.skip_over_gb:g}.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=["lengths", "sizes"], default=["lengths", "sizes"],
                        help="which tables")
    parser.add_argument("--backends", nargs="+", default=["jax", "torch", "tensorflow"])
    parser.add_argument("--sizes", nargs="+", choices=[*PRESETS, "tiny"], default=list(PRESETS))
    parser.add_argument("--quantize", choices=["int8", "int4"], default=None,
                        help="model-size rows: quantize() after building; peaks and ratios are "
                        "against the quantized weights")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(BYTES), default=["float32", "bfloat16"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[128, 512, 1024],
                        help="max_length of the context-length rows")
    parser.add_argument("--length-size", choices=[*PRESETS, "tiny"], default="base",
                        help="model of the context-length rows")
    parser.add_argument("--size-length", type=int, default=128, help="max_length of the model-size rows")
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="timed calls after the first")
    parser.add_argument("--skip-over-gb", type=float, default=18.0,
                        help="skip rows whose weights + KV cache exceed this many GB (1e9 bytes)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per row")
    parser.add_argument("--threads", type=int, default=0, help="cap every framework's threads")
    parser.add_argument("--init", choices=["fast", "keras"], default="fast",
                        help="weights from a cheap pseudo-random array, or Keras' initializers")
    parser.add_argument("--quick", action="store_true", help="tiny model, lengths 32 64, prompt 8")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker), args)), flush=True)
        return
    if args.quick:
        args.sizes, args.length_size, args.lengths = ["tiny"], "tiny", [32, 64]
        args.prompt_length, args.size_length = 8, 64
    started = time.perf_counter()
    done = []
    for row in plan(args):
        label = f"{row['kind']} {row['backend']} {row['size']} {row['dtype']} {row['max_length']}"
        need = needed_bytes(row)
        if need > args.skip_over_gb * 1e9:
            result = {"skipped": f"weights + cache {need / 1e9:.1f} GB"}
        else:
            result = spawn(row, args)
        done.append((row, result))
        status = "ok" if "tokens_per_s" in result else result.get("skipped") or "FAILED " + result["error"]
        print(f"[{time.perf_counter() - started:.0f} s] {label}: {status} "
              f"({result.get('process_s', 0):.0f} s)", file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": [dict(row, **r) for row, r in done]}, f, indent=1)
    print_tables(done, args)


if __name__ == "__main__":
    main()
