"""Generation and fine-tuning speed of `GPT2CausalLM` on each backend, beside Transformers.

Greedy generation of 64 new tokens from a 32-token prompt at the
`gpt2_base_en` size (random weights), batch 1 and batch 8: new tokens/s after
a warm-up call, and the first call's time (compilation included). Training:
tokens/s of `fit()` on batches of 4 x 256 tokens with AdamW (its training
loop, from train begin to train end, as for the plain Transformers loop beside
it; the whole `fit()` call, data pipeline set-up and teardown included, in a
separate column). Batch-1 decoding reads every weight once per
token, so its speed is bounded by memory bandwidth: the table shows that
bound (weight bytes / measured copy bandwidth).

Every backend and Transformers run in their own subprocess (one framework
per process, same machine, same run).

Usage:
    python benchmarks/generate.py            # full run
    python benchmarks/generate.py --quick    # fewer repetitions, fewer steps
    python benchmarks/generate.py --backends jax torch --batch-sizes 1
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

PROMPT_LENGTH = 32
NEW_TOKENS = 64
TRAIN_BATCH, TRAIN_LENGTH = 4, 256
BASE = dict(
    vocabulary_size=50257,
    num_layers=12,
    num_heads=12,
    hidden_dim=768,
    intermediate_dim=3072,
    max_sequence_length=1024,
)


def prompts(batch_size):
    rng = np.random.default_rng(0)
    return rng.integers(0, BASE["vocabulary_size"], (batch_size, PROMPT_LENGTH)).astype("int32")


def train_tokens(steps):
    rng = np.random.default_rng(1)
    shape = (TRAIN_BATCH * steps, TRAIN_LENGTH + 1)
    return rng.integers(0, BASE["vocabulary_size"], shape).astype("int32")


def timed(fn, repeats):
    """(first call seconds, best of `repeats` further calls)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, min(times)


# Workers ---------------------------------------------------------------------


def limit_threads(threads):
    """Cap intra-op threads of every framework (before it is imported)."""
    if not threads:
        return
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
        + f" intra_op_parallelism_threads={threads}"
    )
    import torch

    torch.set_num_threads(threads)
    if os.environ.get("KERAS_BACKEND") == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def _TrainClock():
    import keras

    class TrainClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.begin = time.perf_counter()

        def on_train_end(self, logs=None):
            self.end = time.perf_counter()

    return TrainClock()


def keras_worker(args):
    limit_threads(args.threads)
    import keras

    from gpt2_lib.models.gpt2.gpt2_backbone import GPT2Backbone
    from gpt2_lib.models.gpt2.gpt2_causal_lm import GPT2CausalLM

    keras.utils.set_random_seed(0)
    lm = GPT2CausalLM(GPT2Backbone(**BASE, dropout=0.0))
    lm.compile(sampler="greedy")
    result = {"name": f"gpt2_lib ({keras.config.backend()})", "generate": {}}
    for batch_size in args.batch_sizes:
        ids = prompts(batch_size)
        inputs = {
            "token_ids": np.pad(ids, [(0, 0), (0, NEW_TOKENS)]),
            "padding_mask": np.pad(np.ones_like(ids, bool), [(0, 0), (0, NEW_TOKENS)]),
        }

        def run():
            out = lm.generate(inputs, stop_token_ids=None)
            assert out["token_ids"].shape == (batch_size, PROMPT_LENGTH + NEW_TOKENS)

        first, best = timed(run, args.repeats)
        result["generate"][batch_size] = {
            "first_s": first,
            "tokens_per_s": batch_size * NEW_TOKENS / best,
        }
    if args.train_steps:
        lm.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=5e-5, weight_decay=0.01),
            sampler="greedy",
        )
        data = train_tokens(args.train_steps + 1)
        warm = {"token_ids": data[:TRAIN_BATCH]}
        timed_data = {"token_ids": data[TRAIN_BATCH:]}
        start = time.perf_counter()
        lm.fit(warm, batch_size=TRAIN_BATCH, epochs=1, verbose=0, shuffle=False)
        first = time.perf_counter() - start
        clock = _TrainClock()
        start = time.perf_counter()
        lm.fit(timed_data, batch_size=TRAIN_BATCH, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
        call_seconds = time.perf_counter() - start
        # The training loop itself (train begin -> end), like the Transformers
        # loop; the whole `fit` call also pays data-pipeline setup/teardown.
        seconds = clock.end - clock.begin
        result["train"] = {
            "first_s": first,
            "tokens_per_s": args.train_steps * TRAIN_BATCH * TRAIN_LENGTH / seconds,
            "fit_call_tokens_per_s": args.train_steps * TRAIN_BATCH * TRAIN_LENGTH / call_seconds,
        }
    return result


def transformers_worker(args):
    limit_threads(args.threads)
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=BASE["vocabulary_size"],
        n_positions=BASE["max_sequence_length"],
        n_embd=BASE["hidden_dim"],
        n_layer=BASE["num_layers"],
        n_head=BASE["num_heads"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    result = {"name": "transformers", "generate": {}}
    for batch_size in args.batch_sizes:
        ids = torch.tensor(prompts(batch_size), dtype=torch.long)

        def run():
            with torch.no_grad():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=NEW_TOKENS,
                    min_new_tokens=NEW_TOKENS,
                    use_cache=True,
                    pad_token_id=0,
                )
            assert out.shape == (batch_size, PROMPT_LENGTH + NEW_TOKENS)

        first, best = timed(run, args.repeats)
        result["generate"][batch_size] = {
            "first_s": first,
            "tokens_per_s": batch_size * NEW_TOKENS / best,
        }
    if args.train_steps:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
        data = torch.tensor(train_tokens(args.train_steps + 1), dtype=torch.long)

        def step(batch):
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        start = time.perf_counter()
        step(data[:TRAIN_BATCH, :TRAIN_LENGTH])
        first = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(1, args.train_steps + 1):
            step(data[i * TRAIN_BATCH : (i + 1) * TRAIN_BATCH, :TRAIN_LENGTH])
        seconds = time.perf_counter() - start
        result["train"] = {
            "first_s": first,
            "tokens_per_s": args.train_steps * TRAIN_BATCH * TRAIN_LENGTH / seconds,
        }
    return result


# Driver ----------------------------------------------------------------------


def copy_bandwidth(megabytes=512, repeats=5):
    """Bytes moved per second (read + write) by a large NumPy copy."""
    src = np.ones(megabytes * 2**20 // 4, "float32")
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def weight_bytes():
    """float32 bytes of GPT-2 base (the tied embedding counted once)."""
    h, v, p, layers = BASE["hidden_dim"], BASE["vocabulary_size"], BASE["max_sequence_length"], BASE["num_layers"]
    per_layer = 4 * h * h + 4 * h + 2 * h * BASE["intermediate_dim"] + BASE["intermediate_dim"] + h + 4 * h
    return 4 * (v * h + p * h + layers * per_layer + 2 * h)


def spawn(worker, backend, args):
    env = dict(os.environ, KERAS_BACKEND=backend or "jax", TF_CPP_MIN_LOG_LEVEL="3")
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        worker,
        "--repeats",
        str(args.repeats),
        "--train-steps",
        str(args.train_steps),
        "--threads",
        str(args.threads),
        "--batch-sizes",
        *map(str, args.batch_sizes),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        return {"name": worker if not backend else f"gpt2_lib ({backend})", "error": done.stderr[-2000:]}
    return json.loads(lines[-1][len("RESULT ") :])


def print_table(results, bandwidth, batch_sizes):
    bound = bandwidth / weight_bytes()
    reference = next((r for r in results if r["name"] == "transformers" and "error" not in r), None)
    print(
        f"\ncopy bandwidth {bandwidth / 1e9:.1f} GB/s, GPT-2 base float32 weights "
        f"{weight_bytes() / 1e6:.0f} MB -> batch-1 decoding bound ~{bound:.1f} tokens/s\n"
    )
    header = ["", *[f"gen b{b} tok/s (x HF)" for b in batch_sizes], "first call s", "train tok/s (x HF)", "whole fit() call"]
    rows = [header]
    for result in results:
        if "error" in result:
            rows.append([result["name"], "FAILED: " + result["error"].strip().splitlines()[-1][:60]])
            continue
        row = [result["name"]]
        for b in batch_sizes:
            value = result["generate"][str(b)]["tokens_per_s"]
            ref = reference and reference["generate"][str(b)]["tokens_per_s"]
            row.append(f"{value:.1f}" + (f" ({value / ref:.2f}x)" if ref else ""))
        row.append(f"{result['generate'][str(batch_sizes[0])]['first_s']:.1f}" if batch_sizes else "-")
        if "train" in result:
            value = result["train"]["tokens_per_s"]
            ref = reference and reference.get("train", {}).get("tokens_per_s")
            row.append(f"{value:.0f}" + (f" ({value / ref:.2f}x)" if ref else ""))
            call = result["train"].get("fit_call_tokens_per_s")
            row.append(f"{call:.0f}" + (f" ({call / ref:.2f}x)" if ref else "") if call else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 timed repeat, 2 train steps, batch 1 only")
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--batch-sizes", nargs="*", type=int, default=[1, 8], help="generation batch sizes (none: training only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="cap intra-op threads of every framework (0: their defaults); "
        "on an oversubscribed machine 1 avoids pathological thread contention",
    )
    parser.add_argument("--worker", choices=["keras", "transformers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = (keras_worker if args.worker == "keras" else transformers_worker)(args)
        print("RESULT " + json.dumps(result))
        return
    if args.quick:
        args.repeats, args.train_steps, args.batch_sizes = 1, 2, [1]
    bandwidth = copy_bandwidth()
    results = []
    if not args.no_transformers:
        results.append(spawn("transformers", None, args))
    for backend in args.backends:
        results.append(spawn("keras", backend, args))
    print(json.dumps({"copy_bandwidth": bandwidth, "results": results}, indent=1))
    print_table(results, bandwidth, args.batch_sizes)


if __name__ == "__main__":
    main()
