"""Benchmark: `from_preset` of a gpt2_base_en-sized preset, per backend.

Saves a random GPT-2 base (124M params) preset once with gpt2_lib and a
Transformers checkpoint (safetensors) of the same size, then, in a fresh
process per measurement (page cache warmed by reading the files first),
times `Backbone.from_preset(dir)` (our preset, and the Transformers checkpoint
directory, "HF dir") and `transformers.GPT2Model.from_pretrained(dir)`, and
reports wall time and peak RSS against RSS before loading.

    python benchmarks/load.py [--backends jax torch tensorflow] [--workdir /tmp/gpt2_load_bench]

Targets: at most 1.0 s on every backend; peak RSS at most RSS-before +
1.2x the weight bytes.
"""

import argparse
import json
import os
import subprocess
import sys

WEIGHT_BYTES = 124439808 * 4

_CHILD = r'''
import json, os, resource, sys, time
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
def warm(path):
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(1 << 24):
                    pass
kind, path = sys.argv[1], sys.argv[2]
if kind.startswith("gpt2_lib"):
    import keras, gpt2_lib
    from gpt2_lib.models import Backbone
    # Warm up the backend (first-op initialization is not load time).
    keras.ops.convert_to_numpy(keras.ops.ones((2, 2)) + 1)
    load = lambda: Backbone.from_preset(path)
else:
    import torch, transformers
    load = lambda: transformers.GPT2Model.from_pretrained(path)
warm(path)
before = rss()
start = time.perf_counter()
model = load()
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "rss_before": before, "peak_rss": peak}))
'''

_SAVE = r'''
import sys, keras, gpt2_lib
keras.utils.set_random_seed(0)
backbone = gpt2_lib.models.GPT2Backbone.from_preset("gpt2_base_en", load_weights=False)
backbone.save_to_preset(sys.argv[1])
import transformers
model = transformers.GPT2Model(transformers.GPT2Config())
model.save_pretrained(sys.argv[2], safe_serialization=True)
'''


def run(code, args, backend="jax"):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return out.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "torch", "tensorflow"])
    parser.add_argument("--workdir", default="/tmp/gpt2_load_bench")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ours = os.path.join(args.workdir, "gpt2_lib_preset")
    theirs = os.path.join(args.workdir, "transformers")
    if not os.path.isdir(ours) or not os.path.isdir(theirs):
        os.makedirs(args.workdir, exist_ok=True)
        run(_SAVE, [ours, theirs])
    rows = [("gpt2_lib " + b, "gpt2_lib", b) for b in args.backends]
    rows += [("gpt2_lib " + b + " (HF dir)", "gpt2_lib_hf", b) for b in args.backends]
    rows.append(("transformers (torch)", "transformers", "torch"))
    print(f"weights: {WEIGHT_BYTES / 2**20:.0f} MiB float32")
    print(f"| {'loader':<29} | best s | median s | RSS before MiB | peak MiB | (peak-before)/weights |")
    print(f"|{'-' * 31}|--------|----------|----------------|----------|-----------------------|")
    for label, kind, backend in rows:
        path = ours if kind == "gpt2_lib" else theirs  # gpt2_lib_hf: theirs
        results = [json.loads(run(_CHILD, [kind, path], backend).strip().splitlines()[-1]) for _ in range(args.repeats)]
        times = sorted(r["seconds"] for r in results)
        best = min(results, key=lambda r: r["seconds"])
        ratio = (best["peak_rss"] - best["rss_before"]) / WEIGHT_BYTES
        print(
            f"| {label:<29} | {times[0]:6.2f} | {times[len(times) // 2]:8.2f} | "
            f"{best['rss_before'] / 2**20:14.0f} | {best['peak_rss'] / 2**20:8.0f} | {ratio:21.2f} |"
        )


if __name__ == "__main__":
    main()
