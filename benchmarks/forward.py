"""Backbone forward throughput: gpt2_lib on each Keras backend vs Transformers (and KerasHub).

One run measures everything side by side. A process can hold only one Keras
backend, so this script starts one worker process per Keras backend plus one
for `transformers.GPT2Model` (and, with `--keras-hub-python`, one per
`--keras-hub-backends` entry for `keras_hub.models.GPT2Backbone`); each worker builds its model (gpt2_base_en size,
random weights, float32, dropout off), compiles and warms up every shape, then
waits for "time this shape" requests. The parent interleaves the requests
(repeat -> shape -> worker, rotating the worker order) so that noise from other
load on the machine is spread evenly, and reports the median.

What is timed is one forward pass on the whole batch with the result
materialized (`block_until_ready`, `.numpy()`, or a synchronous CPU call):

* jax:         `jax.jit(backbone.stateless_call)` with the weights as arguments.
* torch:       `backbone(inputs)` under `torch.inference_mode()` (eager).
* tensorflow:  `tf.function(backbone, jit_compile=True)` (XLA) and
  `tf.function(backbone, jit_compile=False)` (graph, oneDNN kernels).
* transformers: `GPT2Model(attn_implementation="sdpa")` under
  `torch.inference_mode()`.

KerasHub's workers run in the Python given by `--keras-hub-python` (a scratch
environment with keras-hub; it is never a dependency of gpt2_lib) and time its
`GPT2Backbone`, same config and random-weight float32, exactly as our rows
are timed (same jit / XLA / graph variants, warm-up and interleaved repeats);
the table then ends with, per shape, the best gpt2_lib row over the best
KerasHub row (issue target: at least 1.1x).

`--all-variants` also times `predict_on_batch` and `--torch-compile` adds `torch.compile(backbone)` (minutes to
compile on 2 cores), to show which path is fastest.

FLOPs per token (multiply-adds count 2):
    2 * num_layers * (4 * hidden^2 + 2 * hidden * intermediate)   dense layers
  + 2 * num_layers * 2 * seq * hidden                              QK^T and PV
The attention term counts the full (non-causal) seq x seq product, which is
what the fused kernels compute; embeddings and LayerNorm/GELU are not counted.
MFU = tokens/s * FLOPs per token / peak, where peak is the best float32
2048x2048x2048 matmul FLOP/s of NumPy and PyTorch measured in the same run.

Usage:
    python benchmarks/forward.py            # full table (a few minutes)
    python benchmarks/forward.py --quick    # smoke test, tiny model, small shapes
    python benchmarks/forward.py --keras-hub-python /path/kh-venv/bin/python \
        --keras-hub-backends jax tensorflow
    python benchmarks/forward.py --threads 2 --all-variants
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from generate import SIZES

from gpt2_lib.utils.builtin_presets import preset_config

# GPT-2 base sizes (the built-in preset's config), without dropout.
GPT2_BASE = {**preset_config("gpt2_base_en"), "dropout": 0.0}
CONFIGS = {"base": GPT2_BASE, "tiny": {**SIZES["tiny"], "dropout": 0.0}}
SHAPES = [(1, 128), (4, 512), (1, 1024)]
QUICK_SHAPES = [(1, 32), (2, 64)]
WORKERS = ["transformers", "jax", "torch", "tensorflow"]
KERAS_HUB = "keras_hub-"  # worker name prefix: "keras_hub-jax", "keras_hub-tensorflow"


def flops_per_token(seq, config=GPT2_BASE):
    layers = config["num_layers"]
    hidden = config["hidden_dim"]
    inter = config["intermediate_dim"]
    dense = 2 * layers * (4 * hidden * hidden + 2 * hidden * inter)
    attention = 2 * layers * 2 * seq * hidden
    return dense + attention


# ============================== Worker side ==============================


def _set_threads(threads):
    if not threads:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    multi_thread = "true" if threads > 1 else "false"
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_cpu_multi_thread_eigen={multi_thread}"
        + f" intra_op_parallelism_threads={threads}"
    )
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)


def _inputs(batch, seq, config, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    token_ids = rng.integers(0, config["vocabulary_size"], (batch, seq)).astype("int32")
    return token_ids, np.ones((batch, seq), "int32")


def _transformers_forwards(config, shapes, threads, all_variants):
    import torch
    import transformers

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(
        vocab_size=config["vocabulary_size"],
        n_positions=config["max_sequence_length"],
        n_embd=config["hidden_dim"],
        n_layer=config["num_layers"],
        n_head=config["num_heads"],
        n_inner=config["intermediate_dim"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = transformers.GPT2Model._from_config(hf_config, attn_implementation="sdpa").eval()
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"Expected sdpa attention, got {model.config._attn_implementation}.")
    forwards = {}
    for batch, seq in shapes:
        token_ids, padding_mask = _inputs(batch, seq, config)
        ids = torch.tensor(token_ids, dtype=torch.long)
        mask = torch.tensor(padding_mask, dtype=torch.long)

        def forward(ids=ids, mask=mask):
            with torch.inference_mode():
                return model(input_ids=ids, attention_mask=mask).last_hidden_state

        forwards[("sdpa", batch, seq)] = forward
    info = {"torch_threads": torch.get_num_threads(), "transformers": transformers.__version__}
    return forwards, info


def _keras_forwards(backend, config, shapes, threads, all_variants, torch_compile=False,
                    keras_hub=False):
    """Timed calls of gpt2_lib's GPT2Backbone, or KerasHub's if `keras_hub`."""
    import keras

    info = {"keras": keras.__version__}
    if keras_hub:
        import keras_hub

        library = keras_hub.models
        info["keras_hub"] = keras_hub.__version__
    else:
        import gpt2_lib.models as library
    if backend == "torch":
        import torch

        if threads:
            torch.set_num_threads(threads)
        info["torch_threads"] = torch.get_num_threads()
    if backend == "tensorflow":
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        info["tf"] = tf.__version__

    keras.utils.set_random_seed(0)
    backbone = library.GPT2Backbone(**config, dtype="float32")
    forwards = {}
    for batch, seq in shapes:
        token_ids, padding_mask = _inputs(batch, seq, config)
        np_inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
        inputs = {k: keras.ops.convert_to_tensor(v) for k, v in np_inputs.items()}
        if backend == "jax":
            import jax

            @jax.jit
            def jitted(trainable, non_trainable, inputs):
                return backbone.stateless_call(
                    trainable, non_trainable, inputs, training=False
                )[0]

            def forward(inputs=inputs):
                # Read the values on every call: `predict_on_batch` may have
                # replaced (donated) the arrays since the last one.
                trainable = [v.value for v in backbone.trainable_variables]
                non_trainable = [v.value for v in backbone.non_trainable_variables]
                return jitted(trainable, non_trainable, inputs).block_until_ready()

            forwards[("jit", batch, seq)] = forward
        elif backend == "torch":
            import torch

            def forward(inputs=inputs):
                with torch.inference_mode():
                    return backbone(inputs, training=False)

            forwards[("eager", batch, seq)] = forward
            if torch_compile:
                compiled = torch.compile(backbone)

                def forward_compiled(inputs=inputs):
                    with torch.inference_mode():
                        return compiled(inputs, training=False)

                forwards[("compile", batch, seq)] = forward_compiled
        else:
            import tensorflow as tf

            xla = tf.function(lambda x: backbone(x, training=False), jit_compile=True)
            forwards[("xla", batch, seq)] = lambda inputs=inputs: xla(inputs).numpy()
            # Without XLA, TF runs its oneDNN kernels op by op; time both.
            graph = tf.function(lambda x: backbone(x, training=False), jit_compile=False)
            forwards[("graph", batch, seq)] = lambda inputs=inputs: graph(inputs).numpy()
        if all_variants:
            forwards[("predict_on_batch", batch, seq)] = (
                lambda np_inputs=np_inputs: backbone.predict_on_batch(np_inputs)
            )
    return forwards, info


def _peak_flops(repeats=5, size=2048):
    """Best float32 matmul FLOP/s of NumPy and PyTorch (median of repeats)."""
    import numpy as np
    import torch

    a = np.random.default_rng(0).standard_normal((size, size), dtype="float32")
    b = np.random.default_rng(1).standard_normal((size, size), dtype="float32")
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    results = {}
    for name, matmul in (("numpy", lambda: a @ b), ("torch", lambda: torch.mm(ta, tb))):
        matmul()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            matmul()
            times.append(time.perf_counter() - start)
        results[name] = 2 * size**3 / statistics.median(times)
    return results


def worker_main(args):
    _set_threads(args.threads)
    shapes = [tuple(s) for s in json.loads(args.shapes)]
    config = CONFIGS[args.size]
    if args.worker == "transformers":
        forwards, info = _transformers_forwards(config, shapes, args.threads, args.all_variants)
    else:
        keras_hub = args.worker.startswith(KERAS_HUB)
        backend = args.worker[len(KERAS_HUB):] if keras_hub else args.worker
        os.environ["KERAS_BACKEND"] = backend
        forwards, info = _keras_forwards(
            backend, config, shapes, args.threads, args.all_variants, args.torch_compile,
            keras_hub=keras_hub,
        )
    compile_s = {}
    for key, forward in forwards.items():
        start = time.perf_counter()
        for _ in range(args.warmup):
            forward()
        compile_s["%s/%dx%d" % key] = round(time.perf_counter() - start, 2)
    info["warmup_s"] = compile_s
    print(json.dumps({"ready": [list(k) for k in forwards], "info": info}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("cmd") == "peak":
            print(json.dumps({"peak": _peak_flops()}), flush=True)
            continue
        if request.get("cmd") == "exit":
            break
        forward = forwards[tuple(request["key"])]
        start = time.perf_counter()
        forward()
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


# ============================== Parent side ==============================


class Worker:
    def __init__(self, name, shapes, args):
        keras_hub = name.startswith(KERAS_HUB)
        command = [
            args.keras_hub_python if keras_hub else sys.executable,
            os.path.abspath(__file__),
            "--worker",
            name,
            "--shapes",
            json.dumps(shapes),
            "--warmup",
            str(args.warmup),
            "--size",
            args.size,
        ]
        if args.threads:
            command += ["--threads", str(args.threads)]
        if args.all_variants:
            command.append("--all-variants")
        if args.torch_compile:
            command.append("--torch-compile")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        if name != "transformers":
            env["KERAS_BACKEND"] = name[len(KERAS_HUB):] if keras_hub else name
        repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = repo_root + os.pathsep + env.get("PYTHONPATH", "")
        self.name = name
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if args.verbose else subprocess.DEVNULL,
            text=True,
            env=env,
        )

    def receive(self):
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(
                    f"Worker {self.name!r} exited early (code "
                    f"{self.process.wait()}); rerun with --verbose to see why."
                )
            if line.startswith("{"):
                return json.loads(line)

    def request(self, **message):
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        return self.receive()

    def close(self):
        try:
            self.process.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
            self.process.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        self.process.wait(timeout=60)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per shape")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per shape")
    parser.add_argument("--threads", type=int, default=0, help="threads for every framework")
    parser.add_argument("--size", choices=sorted(CONFIGS), default=None,
                        help="model size (default: base; tiny with --quick)")
    parser.add_argument("--backends", default=",".join(WORKERS[1:]), help="Keras backends")
    parser.add_argument("--keras-hub-python", default=None,
                        help="Python of an environment with keras-hub: adds KerasHub rows")
    parser.add_argument("--keras-hub-backends", nargs="+", default=["jax", "tensorflow"],
                        help="Keras backends for the KerasHub rows")
    parser.add_argument("--all-variants", action="store_true", help="also time alternatives")
    parser.add_argument(
        "--torch-compile", action="store_true", help="also time torch.compile (slow to build)"
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--verbose", action="store_true", help="show worker stderr")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shapes", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args)

    shapes = QUICK_SHAPES if args.quick else SHAPES
    repeats = args.repeats or (2 if args.quick else 5)
    args.size = args.size or ("tiny" if args.quick else "base")
    names = ["transformers"] + [b for b in args.backends.split(",") if b]
    bad = sorted(set(names) - set(WORKERS))
    hub_backends = [b for entry in args.keras_hub_backends for b in entry.split(",") if b]
    bad += sorted(set(hub_backends) - {"jax", "tensorflow", "torch"})
    if bad:
        raise ValueError(f"Unknown backends {bad}; choose from {WORKERS[1:]}.")
    if args.keras_hub_python:
        names += [KERAS_HUB + b for b in hub_backends]

    # Start workers one at a time so that model building/compiling of one
    # does not slow down another.
    started = time.perf_counter()
    workers, keys, infos = [], {}, {}
    try:
        for name in names:
            worker = Worker(name, shapes, args)
            ready = worker.receive()
            workers.append(worker)
            keys[name] = [tuple(k) for k in ready["ready"]]
            infos[name] = ready["info"]
            print(f"# {name}: ready after {time.perf_counter() - started:.0f}s "
                  f"{json.dumps(ready['info'])}", flush=True)
        peaks = [workers[0].request(cmd="peak")["peak"]]
        times = {(name, k): [] for name in names for k in keys[name]}
        for repeat in range(repeats):
            for batch, seq in shapes:
                order = workers[repeat % len(workers):] + workers[: repeat % len(workers)]
                for worker in order:
                    for key in keys[worker.name]:
                        if tuple(key[1:]) == (batch, seq):
                            result = worker.request(key=list(key))
                            times[(worker.name, key)].append(result["seconds"])
        peaks.append(workers[0].request(cmd="peak")["peak"])
    finally:
        for worker in workers:
            worker.close()

    peak = max(max(p.values()) for p in peaks)
    rows = []
    for batch, seq in shapes:
        reference = statistics.median(
            times[("transformers", ("sdpa", batch, seq))]
        )
        for (name, key), seconds in times.items():
            if tuple(key[1:]) != (batch, seq):
                continue
            median = statistics.median(seconds)
            tokens_per_s = batch * seq / median
            rows.append(
                dict(
                    shape=f"{batch}x{seq}",
                    backend=name,
                    variant=key[0],
                    tokens_per_s=tokens_per_s,
                    ratio=reference / median,
                    mfu=tokens_per_s * flops_per_token(seq, CONFIGS[args.size]) / peak,
                    spread=(max(seconds) - min(seconds)) / median,
                )
            )

    print(f"\nfloat32 matmul peak: {peak / 1e9:.0f} GFLOP/s "
          f"(start {json.dumps({k: round(v / 1e9) for k, v in peaks[0].items()})}, "
          f"end {json.dumps({k: round(v / 1e9) for k, v in peaks[1].items()})}); "
          f"model {args.size}; median of {repeats} interleaved calls; total {time.perf_counter() - started:.0f}s\n")
    header = "| shape | backend | variant | tokens/s | vs Transformers | MFU | spread |"
    print(header)
    print("|---|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['shape']} | {row['backend']} | {row['variant']} | "
            f"{row['tokens_per_s']:.0f} | {row['ratio']:.2f}x | "
            f"{100 * row['mfu']:.0f}% | {100 * row['spread']:.0f}% |"
        )
    if args.keras_hub_python:
        print("\ngpt2_lib vs KerasHub (best row of each per shape; target >= 1.10x):\n")
        for batch, seq in shapes:
            shape = f"{batch}x{seq}"
            ours = max((r for r in rows if r["shape"] == shape and not r["backend"].startswith(KERAS_HUB)
                        and r["backend"] != "transformers"), key=lambda r: r["tokens_per_s"])
            theirs = max((r for r in rows if r["shape"] == shape and r["backend"].startswith(KERAS_HUB)),
                         key=lambda r: r["tokens_per_s"])
            print(f"* {shape}: {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x "
                  f"(gpt2_lib {ours['backend']} {ours['variant']} {ours['tokens_per_s']:.0f} tokens/s, "
                  f"KerasHub {theirs['backend'][len(KERAS_HUB):]} {theirs['variant']} "
                  f"{theirs['tokens_per_s']:.0f} tokens/s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak": peak, "peaks": peaks, "rows": rows, "info": infos}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
