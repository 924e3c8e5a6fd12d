"""Benchmark: `from_preset` and training under `keras.distribution` (JAX, 8 CPU devices).

For GPT-2 base (124M) and medium (355M) sized presets with random weights
(KerasHub format, float32), measures in a fresh process per row, on 8
virtual CPU devices (`--xla_force_host_platform_device_count=8`):

* `from_preset` wall time and host peak RSS above the RSS before it (the
  kernel's high-water mark, reset just before the load), against the weight
  bytes, with no distribution, `DataParallel(8)`, `ModelParallel` on (1, 8)
  and on (2, 4) meshes;
* training tokens/s of `GPT2CausalLM.fit` (SGD, batch 8 x 128 tokens, after
  one warm-up epoch) under each, on a small model (the shipped
  `gpt2_tiny_shakespeare_en` size: 4 layers, hidden 192): the 8 virtual
  devices share the machine's cores, so this shows the overhead of the
  partitioned program, not a speed-up. (Training a base-sized model with
  eight replicas would need ~16 GB here.)

    python benchmarks/distribution.py [--sizes gpt2_base gpt2_medium] [--workdir /tmp/gpt2_dist_bench]

Targets (issue #14): peak RSS above before <= 1.3x the weight bytes for a
ModelParallel load (as without a distribution), <= (8 + 0.3)x for
DataParallel(8) on one host.
"""

import argparse
import json
import os
import subprocess
import sys

DISTRIBUTIONS = ["none", "dp8", "mp1x8", "mp2x4"]

_SETUP = r'''
import json, os, sys, time
import keras, numpy as np
import gpt2_lib
from gpt2_lib.models import GPT2Backbone, GPT2CausalLM
from gpt2_lib.models.distribution import make_distribution

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

name = sys.argv[2]
if name != "none":
    model_parallel = {"dp8": 1, "mp1x8": 8, "mp2x4": 4}[name]
    keras.distribution.set_distribution(make_distribution(model_parallel=model_parallel))
keras.ops.convert_to_numpy(keras.ops.ones((2, 2)) + 1)  # backend start-up is not load time
'''

_LOAD = _SETUP + r'''
import warnings
warnings.simplefilter("ignore")  # layout fallbacks (12 heads on 8 devices) are expected
path = sys.argv[1]
for root, _, files in os.walk(path):  # warm the page cache
    for file in files:
        with open(os.path.join(root, file), "rb") as f:
            while f.read(1 << 24):
                pass
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark
before = status("VmRSS")
start = time.perf_counter()
backbone = GPT2Backbone.from_preset(path)
seconds = time.perf_counter() - start
peak = status("VmHWM")
nbytes = sum(int(np.prod(v.shape)) * 4 for v in backbone.weights)
print(json.dumps({"seconds": seconds, "before": before, "peak": peak, "weight_bytes": nbytes}))
'''

_TRAIN = _SETUP + r'''
import warnings
warnings.simplefilter("ignore")
lm = GPT2CausalLM(GPT2Backbone.from_preset("gpt2_tiny_shakespeare_en", dropout=0.0))
lm.compile(optimizer=keras.optimizers.SGD(1e-3))
tokens = np.random.RandomState(0).randint(0, 2257, (64, 129)).astype("int32")
lm.fit({"token_ids": tokens[:16]}, batch_size=8, epochs=1, verbose=0)  # compile
start = time.perf_counter()
lm.fit({"token_ids": tokens}, batch_size=8, epochs=1, verbose=0)
seconds = time.perf_counter() - start
print(json.dumps({"tokens_per_second": 64 * 128 / seconds}))
'''

_SAVE = r'''
import sys, keras, gpt2_lib
keras.utils.set_random_seed(0)
backbone = gpt2_lib.models.GPT2Backbone.from_preset(sys.argv[1] + "_en", load_weights=False)
backbone.save_to_preset(sys.argv[2])
'''


def run(code, args, devices=8):
    env = dict(
        os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=1800
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["gpt2_base", "gpt2_medium"])
    parser.add_argument("--distributions", nargs="+", default=DISTRIBUTIONS)
    parser.add_argument("--workdir", default="/tmp/gpt2_dist_bench")
    parser.add_argument("--no-train", action="store_true", help="skip the training rows")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    print("| preset | distribution | from_preset s | peak - before MiB | / weight bytes |")
    print("|---|---|---:|---:|---:|")
    for size in args.sizes:
        path = os.path.join(args.workdir, size)
        if not os.path.isdir(path):
            run(_SAVE, [size, path], devices=1)
        for name in args.distributions:
            r = run(_LOAD, [path, name])
            extra = r["peak"] - r["before"]
            print(
                f"| {size} ({r['weight_bytes'] / 2**20:.0f} MiB) | {name} | {r['seconds']:.2f} | "
                f"{extra / 2**20:.0f} | {extra / r['weight_bytes']:.2f}x |",
                flush=True,
            )
    if args.no_train:
        return
    print()
    print("| training (tiny shakespeare size, batch 8 x 128, SGD) | tokens/s |")
    print("|---|---:|")
    for name in args.distributions:
        r = run(_TRAIN, ["-", name])
        print(f"| {name} | {r['tokens_per_second']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
