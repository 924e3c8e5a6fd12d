"""LoRA vs full fine-tuning: trainable parameters and training-step time.

For each Keras backend, a worker process (a process holds one backend)
builds a `GPT2Backbone` of gpt2_base_en size with random weights (float32,
dropout off), puts a causal-LM head on it (logits through the tied token
embedding), and times `train_on_batch` with AdamW and sparse cross-entropy
on a random `(batch, seq)` batch:

* full: every backbone weight trains.
* lora: `backbone.enable_lora(rank)` (query and value of every block).

`train_on_batch` runs Keras's compiled train step: `jax.jit` on JAX,
`tf.function` (XLA where Keras picks it) on TensorFlow, eager on PyTorch.
The first `--warmup` steps (compilation, optimizer slots) are not timed; the
table shows the median of the next `--steps` steps.

Usage:
    python benchmarks/lora.py                       # jax, torch, tensorflow
    python benchmarks/lora.py --backends jax --steps 5
    python benchmarks/lora.py --quick               # tiny model, smoke test
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from gpt2_lib.utils.builtin_presets import preset_config

# GPT-2 base sizes (the built-in preset's config), without dropout.
GPT2_BASE = {**preset_config("gpt2_base_en"), "dropout": 0.0}
TINY = dict(vocabulary_size=97, num_layers=2, num_heads=4, hidden_dim=32, intermediate_dim=64,
            max_sequence_length=64, dropout=0.0)


def worker(args):
    """Time both modes on the backend in KERAS_BACKEND; print one JSON line each."""
    import keras
    import numpy as np

    from gpt2_lib.models import GPT2Backbone

    class CausalLM(keras.Model):
        def __init__(self, backbone, **kwargs):
            super().__init__(**kwargs)
            self.backbone = backbone

        def call(self, inputs):
            hidden = self.backbone(inputs)
            return self.backbone.token_embedding(hidden, reverse=True)

    config = TINY if args.quick else GPT2_BASE
    rng = np.random.default_rng(0)
    data = {
        "token_ids": rng.integers(0, config["vocabulary_size"], (args.batch, args.seq)).astype("int32"),
        "padding_mask": np.ones((args.batch, args.seq), "int32"),
    }
    labels = np.roll(data["token_ids"], -1, axis=1)
    for mode in args.modes.split(","):
        keras.utils.set_random_seed(0)
        backbone = GPT2Backbone(**config)
        if mode == "lora":
            backbone.enable_lora(args.rank)
        model = CausalLM(backbone)
        model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=1e-4),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        total = sum(int(np.prod(w.shape)) for w in model.weights)
        times = []
        for step in range(args.warmup + args.steps):
            start = time.perf_counter()
            loss = model.train_on_batch(data, labels)
            float(np.asarray(loss))  # wait for the result
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
        print(
            json.dumps(
                {
                    "backend": keras.backend.backend(),
                    "mode": mode if mode == "full" else f"lora r={args.rank}",
                    "trainable": trainable,
                    "total": total,
                    "step_s": statistics.median(times),
                    "min_s": min(times),
                }
            ),
            flush=True,
        )
        del model, backbone


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="jax,torch,tensorflow")
    parser.add_argument("--modes", default="full,lora")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny model, short sequences")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.seq = min(args.seq, 32)
    if args.worker:
        worker(args)
        return

    rows = []
    for backend in args.backends.split(","):
        command = [sys.executable, __file__, "--worker", "--modes", args.modes]
        for name in ("rank", "batch", "seq", "warmup", "steps"):
            command += [f"--{name}", str(getattr(args, name))]
        command += ["--quick"] if args.quick else []
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if result.returncode or not lines:
            print(f"{backend} failed:\n{result.stderr[-3000:]}", file=sys.stderr)
        rows += [json.loads(line) for line in lines]

    size = "tiny" if args.quick else "gpt2_base_en size"
    print(f"\nTraining step, {size}, batch {args.batch} x {args.seq}, AdamW, float32")
    print(f"{'backend':<11} {'mode':<10} {'trainable params':>17} {'% of total':>10} "
          f"{'step (s)':>9} {'min (s)':>8} {'speedup':>8}")
    full_times = {row["backend"]: row["step_s"] for row in rows if row["mode"] == "full"}
    for row in rows:
        full = full_times.get(row["backend"])
        speedup = f"{full / row['step_s']:.2f}x" if full else "-"
        print(
            f"{row['backend']:<11} {row['mode']:<10} {row['trainable']:>17,} "
            f"{100 * row['trainable'] / row['total']:>9.2f}% "
            f"{row['step_s']:>9.3f} {row['min_s']:>8.3f} {speedup:>8}"
        )


if __name__ == "__main__":
    main()
