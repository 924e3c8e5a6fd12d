"""Generation and fine-tuning speed beside Transformers, KerasHub and CTranslate2.

Every implementation loads the same random GPT-2 (gpt2_base_en size unless
`--size`), exported once as a Transformers checkpoint with OpenAI's real
vocabulary: Transformers (`GPT2LMHeadModel`), CTranslate2 (converted with its
`TransformersConverter`; `compute_type` float32 and int8, `intra_threads` =
cores), KerasHub 0.32 (`GPT2CausalLM.from_preset` of the same folder, or the
same architecture with random weights if its converter refuses it) and
gpt2_lib on each Keras backend, float32 and int8 (`quantize("int8")`).

Generation: greedy, a 32-token prompt + 64 new tokens, batch 1 and batch 8:
new tokens per second (best of `--repeats` calls after a warm-up), the first
call's time (compilation included) and the peak memory of the process above
what it held before the model was built. Training: tokens/s of 5 steps of
4 x 256 tokens with AdamW (gpt2_lib's `fit()` training loop, KerasHub's
`fit()`, a plain Transformers loop).

Each row runs in `--processes` separate processes, started in turns
(implementation A, B, C, ..., then A, B, C again) so that the machine's load
spreads over all of them; the table shows the median over processes, its
ratio to Transformers, and the spread (min-max). Batch-1 decoding reads every
weight once per token, so it is bounded by memory bandwidth: the table shows
that bound (float32 weight bytes / measured read bandwidth).

KerasHub and CTranslate2 are never dependencies of gpt2_lib: give the Python
of a scratch virtual environment that has them installed.

Usage:
    python benchmarks/generate.py --processes 3 \\
        --keras-hub-python /path/kh-venv/bin/python \\
        --ctranslate2-python /path/ct2-venv/bin/python
    python benchmarks/generate.py --quick                # smoke test
    python benchmarks/generate.py --only gpt2_lib --modes float32 int8 --no-train
    python benchmarks/generate.py --only transformers gpt2_lib --no-train --processes 3 \
        --compilation-cache "$(mktemp -d)"      # first call of a process with a warm cache
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SIZES = {
    "base": dict(vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
                 intermediate_dim=3072, max_sequence_length=1024),
    "tiny": dict(vocabulary_size=50257, num_layers=2, num_heads=4, hidden_dim=64,
                 intermediate_dim=256, max_sequence_length=128),
}
TRAIN_BATCH = 4


def prompts(batch_size, length, vocabulary_size):
    rng = np.random.default_rng(0)
    return rng.integers(0, vocabulary_size - 1, (batch_size, length)).astype("int32")


def train_tokens(steps, vocabulary_size, length):
    rng = np.random.default_rng(1)
    return rng.integers(0, vocabulary_size - 1, (TRAIN_BATCH * steps, length + 1)).astype("int32")


def rss_mb():
    """Peak resident memory of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def held_mb():
    """Resident memory this process holds now, MB (its peak where /proc is missing).

    The baseline of the memory columns: imports can peak above what they
    keep (CTranslate2's did), and a peak-so-far baseline then hides a
    smaller model's whole generation peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss_mb()


def timed(fn, repeats):
    """(first call seconds, best of `repeats` further calls)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return first, best


def limit_threads(threads):
    if not threads:
        return
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
        + f" intra_op_parallelism_threads={threads}"
    )
    os.environ["OMP_NUM_THREADS"] = str(threads)


# Workers (each runs in its own process) ----------------------------------------


def _generation(args, run_batch):
    """Time `run_batch(ids)` for each batch size; returns the result dict part."""
    config = SIZES[args.size]
    results = {}
    for batch_size in args.batch_sizes:
        ids = prompts(batch_size, args.prompt_length, config["vocabulary_size"])
        first, best = timed(lambda: run_batch(ids), args.repeats)
        results[str(batch_size)] = {
            "first_s": first,
            "tokens_per_s": batch_size * args.new_tokens / best,
        }
    return results


def _keras_generation(lm, args):
    """`_generation` of a Keras `CausalLM` (gpt2_lib's or KerasHub's) on token-id dicts."""

    def run_batch(ids):
        inputs = {
            "token_ids": np.pad(ids, [(0, 0), (0, args.new_tokens)]),
            "padding_mask": np.pad(np.ones_like(ids, bool), [(0, 0), (0, args.new_tokens)]),
        }
        out = lm.generate(inputs, stop_token_ids=None)
        assert out["token_ids"].shape == (len(ids), args.prompt_length + args.new_tokens)

    return _generation(args, run_batch)


def gpt2_lib_worker(args):
    limit_threads(args.threads)
    before = rss_mb()
    import keras

    from gpt2_lib.models import GPT2Backbone
    from gpt2_lib.models import GPT2CausalLM

    framework = held_mb()
    if args.compilation_cache:
        import gpt2_lib

        gpt2_lib.enable_compilation_cache(args.compilation_cache)
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    dtype = args.mode if args.mode in ("bfloat16", "float16") else None
    backbone = GPT2Backbone.from_preset(args.checkpoint, dropout=0.0, dtype=dtype)
    lm = GPT2CausalLM(backbone, preprocessor=None)
    if args.mode not in ("float32", "bfloat16", "float16"):
        lm.quantize(args.mode)
    load_s = time.perf_counter() - start
    lm.compile(sampler="greedy")
    loaded = rss_mb()

    result = {
        "generate": _keras_generation(lm, args),
        "load_s": load_s,
        "memory_mb": {"framework": framework - before, "after_load": loaded - framework,
                      "peak_generation": rss_mb() - framework},
    }
    if args.train_steps and args.mode == "float32":
        result["train"] = _keras_train(lm, args, "gpt2_lib")
    return result


def _keras_train(lm, args, library):
    import keras

    if library == "gpt2_lib":
        lm.compile(optimizer="auto", sampler="greedy")
        lm.optimizer.learning_rate = 5e-5
    else:
        lm.compile(optimizer=keras.optimizers.AdamW(5e-5, weight_decay=0.01))
    data = train_tokens(args.train_steps + 1, SIZES[args.size]["vocabulary_size"], args.train_length)

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.begin = time.perf_counter()

        def on_train_end(self, logs=None):
            self.end = time.perf_counter()

    def as_inputs(ids):
        x = {"token_ids": ids[:, :-1], "padding_mask": np.ones_like(ids[:, :-1], bool)}
        return x, ids[:, 1:]

    x, y = as_inputs(data[:TRAIN_BATCH])
    lm.fit(x, y, batch_size=TRAIN_BATCH, epochs=1, verbose=0, shuffle=False)
    clock = Clock()
    x, y = as_inputs(data[TRAIN_BATCH:])
    lm.fit(x, y, batch_size=TRAIN_BATCH, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
    return {"tokens_per_s": args.train_steps * TRAIN_BATCH * args.train_length / (clock.end - clock.begin)}


def keras_hub_worker(args):
    limit_threads(args.threads)
    before = rss_mb()
    import keras
    import keras_hub

    framework = held_mb()
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    try:
        lm = keras_hub.models.GPT2CausalLM.from_preset(args.checkpoint, preprocessor=None)
        weights = "same checkpoint"
    except Exception as error:  # KerasHub's converter may refuse a local folder.
        config = SIZES[args.size]
        lm = keras_hub.models.GPT2CausalLM(
            keras_hub.models.GPT2Backbone(**config, dropout=0.0), preprocessor=None
        )
        weights = f"random weights ({type(error).__name__})"
    load_s = time.perf_counter() - start
    lm.compile(sampler="greedy")
    loaded = rss_mb()

    result = {
        "weights": weights,
        "generate": _keras_generation(lm, args),
        "load_s": load_s,
        "memory_mb": {"framework": framework - before, "after_load": loaded - framework,
                      "peak_generation": rss_mb() - framework},
    }
    if args.train_steps:
        result["train"] = _keras_train(lm, args, "keras_hub")
    return result


def transformers_worker(args):
    limit_threads(args.threads)
    before = rss_mb()
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    framework = held_mb()
    start = time.perf_counter()
    model = transformers.GPT2LMHeadModel.from_pretrained(args.checkpoint).eval()
    load_s = time.perf_counter() - start
    loaded = rss_mb()

    def run_batch(ids):
        ids = torch.tensor(ids, dtype=torch.long)
        with torch.no_grad():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False,
                max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                use_cache=True, pad_token_id=0,
            )
        assert out.shape == (len(ids), args.prompt_length + args.new_tokens)

    result = {
        "generate": _generation(args, run_batch),
        "load_s": load_s,
        "memory_mb": {"framework": framework - before, "after_load": loaded - framework,
                      "peak_generation": rss_mb() - framework},
    }
    if args.train_steps:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
        data = torch.tensor(train_tokens(args.train_steps + 1, SIZES[args.size]["vocabulary_size"], args.train_length)).long()

        def step(batch):
            loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        step(data[:TRAIN_BATCH])
        start = time.perf_counter()
        for i in range(1, args.train_steps + 1):
            step(data[i * TRAIN_BATCH : (i + 1) * TRAIN_BATCH])
        seconds = time.perf_counter() - start
        result["train"] = {"tokens_per_s": args.train_steps * TRAIN_BATCH * args.train_length / seconds}
    return result


def ctranslate2_worker(args):
    before = rss_mb()
    import ctranslate2
    import transformers

    framework = held_mb()
    converted = os.path.join(os.path.dirname(args.checkpoint), "ctranslate2")
    if not os.path.isdir(converted):
        ctranslate2.converters.TransformersConverter(args.checkpoint).convert(converted, force=True)
    start = time.perf_counter()
    generator = ctranslate2.Generator(
        converted, device="cpu", compute_type=args.mode, intra_threads=args.threads or os.cpu_count()
    )
    load_s = time.perf_counter() - start
    loaded = rss_mb()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.checkpoint)

    def run_batch(ids):
        tokens = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]
        results = generator.generate_batch(
            tokens, max_length=args.new_tokens, min_length=args.new_tokens,
            sampling_topk=1, include_prompt_in_result=False, end_token=[],
        )
        assert all(len(r.sequences_ids[0]) == args.new_tokens for r in results)

    return {
        "generate": _generation(args, run_batch),
        "load_s": load_s,
        "memory_mb": {"framework": framework - before, "after_load": loaded - framework,
                      "peak_generation": rss_mb() - framework},
    }


WORKERS = {
    "gpt2_lib": gpt2_lib_worker,
    "keras_hub": keras_hub_worker,
    "transformers": transformers_worker,
    "ctranslate2": ctranslate2_worker,
}


# Driver ----------------------------------------------------------------------


def make_checkpoint(directory, size):
    """A random GPT-2 as a Transformers checkpoint with the real vocabulary."""
    path = os.path.join(directory, f"gpt2_{size}_random")
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return path
    code = f"""
import keras, sys
sys.path.insert(0, {REPO!r})
from tests.real_data import gpt2_encoder_files
from gpt2_lib.models import GPT2Backbone, GPT2CausalLM, GPT2Tokenizer, GPT2CausalLMPreprocessor
keras.utils.set_random_seed(0)
vocabulary, merges = gpt2_encoder_files()
tokenizer = GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
backbone = GPT2Backbone(**{SIZES[size]!r}, dropout=0.0)
GPT2CausalLM(backbone, GPT2CausalLMPreprocessor(tokenizer, sequence_length=256)).export_to_transformers({path!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, KERAS_BACKEND="jax"))
    return path


def read_bandwidth(megabytes=512, repeats=5):
    """Bytes read per second: the fastest of a NumPy sum on one thread, the same sum split
    over one thread per core (NumPy releases the GIL), and a matrix-vector product (BLAS,
    every core), each one pass over the same array. The one-thread sum alone is bound by
    arithmetic on some CPUs (6.6 GB/s on a 2-core Xeon whose GEMV read 21); on a 2-core Zen 5
    EPYC one core read 33 GB/s and both 45, where CTranslate2 float32 decoded at 111% of a
    bound taken from the one-thread figures."""
    from concurrent.futures import ThreadPoolExecutor

    data = np.ones(megabytes * 2**20 // 4, "float32")
    matrix, vector = data.reshape(-1, 1024), np.ones(1024, "float32")
    cores = os.cpu_count() or 1
    parts = np.array_split(data, cores)
    best = float("inf")
    with ThreadPoolExecutor(cores) as pool:
        for read in (data.sum, lambda: list(pool.map(np.sum, parts)), lambda: matrix @ vector):
            for _ in range(repeats):
                start = time.perf_counter()
                read()
                best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def cpu_description():
    """The CPU model, cores and the vector/matrix extensions the GEMMs pick paths by.

    The fastest float32 GEMM on torch differs by vendor (`torch_matmul`) and int8
    and bfloat16 speeds by VNNI/AMX, so tables say which CPU made them."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        import platform

        return f"{platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"
    flags = fields.get("flags", "").split()
    extensions = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16") if f in flags]
    return (f"{fields.get('model name', 'unknown CPU')} ({fields.get('vendor_id', '?')}), "
            f"{os.cpu_count()} cores, {' '.join(extensions) or 'no AVX2'}")


def weight_bytes(config):
    """float32 bytes GPT-2 reads per decoded token (tied embedding once)."""
    h, v, i, layers = config["hidden_dim"], config["vocabulary_size"], config["intermediate_dim"], config["num_layers"]
    return 4 * (v * h + layers * (4 * h * h + 2 * h * i))


def rows(args):
    """(label, worker, backend, mode, python) for every implementation asked for."""
    out = []
    if "transformers" in args.only:
        out.append(("Transformers", "transformers", None, "float32", sys.executable))
    if "ctranslate2" in args.only and args.ctranslate2_python:
        for mode in args.modes:
            out.append((f"CTranslate2 {mode}", "ctranslate2", None, mode, args.ctranslate2_python))
    if "keras_hub" in args.only and args.keras_hub_python:
        for backend in args.keras_hub_backends:
            out.append((f"KerasHub {backend}", "keras_hub", backend, "float32", args.keras_hub_python))
    if "gpt2_lib" in args.only:
        for backend in args.backends:
            for mode in args.modes:
                out.append((f"gpt2_lib {backend} {mode}", "gpt2_lib", backend, mode, sys.executable))
    return out


def spawn(row, args, checkpoint):
    label, worker, backend, mode, python = row
    env = dict(os.environ, KERAS_BACKEND=backend or "jax", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [
        python, os.path.abspath(__file__), "--worker", worker, "--mode", mode,
        "--checkpoint", checkpoint, "--size", args.size, "--repeats", str(args.repeats),
        "--train-steps", str(args.train_steps), "--train-length", str(args.train_length),
        "--threads", str(args.threads),
        "--prompt-length", str(args.prompt_length), "--new-tokens", str(args.new_tokens),
        "--batch-sizes", *map(str, args.batch_sizes),
        *(["--compilation-cache", args.compilation_cache] if args.compilation_cache else []),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        return {"error": (done.stderr or done.stdout)[-1500:]}
    return json.loads(lines[-1][len("RESULT "):])


def summary(values):
    """'median (min-max)' of a list of numbers."""
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.1f}"
    return f"{median:.1f} ({min(values):.1f}-{max(values):.1f})"


def print_table(results, args, bandwidth):
    config = SIZES[args.size]
    bound = bandwidth / weight_bytes(config)
    print(f"\n{cpu_description()}")
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s; {weight_bytes(config) / 1e6:.0f} MB of float32 "
          f"weights per token -> batch-1 float32 bound ~{bound:.1f} tokens/s\n")

    def metric(label, get):
        values = []
        for result in results[label]:
            try:
                values.append(get(result))
            except (KeyError, TypeError):
                pass
        return values

    reference = "Transformers" if "Transformers" in results else None
    columns = [f"gen b{b} tok/s" for b in args.batch_sizes] + ["first call s", "peak MB", "train tok/s"]
    table = [["", *columns]]
    for label in results:
        errors = [r["error"] for r in results[label] if "error" in r]
        if errors and len(errors) == len(results[label]):
            table.append([label, "FAILED: " + errors[0].strip().splitlines()[-1][:70]])
            continue
        row = [label]
        for b in args.batch_sizes:
            values = metric(label, lambda r: r["generate"][str(b)]["tokens_per_s"])
            cell = summary(values)
            if reference and values and label != reference:
                ref = metric(reference, lambda r: r["generate"][str(b)]["tokens_per_s"])
                if ref:
                    cell += f" {statistics.median(values) / statistics.median(ref):.2f}x"
            if b == 1 and values and "float32" in label:
                cell += f" [{100 * statistics.median(values) / bound:.0f}% of bound]"
            row.append(cell)
        row.append(summary(metric(label, lambda r: r["generate"][str(args.batch_sizes[0])]["first_s"])))
        row.append(summary(metric(label, lambda r: r["memory_mb"]["peak_generation"])))
        train = metric(label, lambda r: r["train"]["tokens_per_s"])
        cell = summary(train)
        if reference and train and label != reference:
            ref = metric(reference, lambda r: r["train"]["tokens_per_s"])
            if ref:
                cell += f" {statistics.median(train) / statistics.median(ref):.2f}x"
        row.append(cell)
        table.append(row)
    widths = [max(len(r[i]) for r in table if i < len(r)) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 process, batch 1")
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--processes", type=int, default=3, help="processes per row")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--train-length", type=int, default=256, help="tokens per training row")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--compilation-cache", metavar="DIR", default=None,
                        help="gpt2_lib rows keep compiled programs in DIR "
                        "(`gpt2_lib.enable_compilation_cache`): the first process of a row "
                        "fills it, so with --processes 3 or more the median first call is a "
                        "later process's, loaded from the cache")
    parser.add_argument("--modes", nargs="+", default=["float32", "int8"])
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--keras-hub-backends", nargs="+", default=["jax", "tensorflow"])
    parser.add_argument("--only", nargs="+", default=list(WORKERS), choices=list(WORKERS))
    parser.add_argument("--keras-hub-python", help="Python of an environment with keras-hub")
    parser.add_argument("--ctranslate2-python", help="Python of an environment with ctranslate2")
    parser.add_argument("--threads", type=int, default=0, help="cap every framework's threads")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "gpt2_lib_bench"))
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(WORKERS[args.worker](args)), flush=True)
        return
    if args.quick:
        args.size, args.processes, args.repeats, args.batch_sizes = "tiny", 1, 1, [1]
        args.train_steps, args.train_length = 1, 64
    if args.no_train:
        args.train_steps = 0
    os.makedirs(args.workdir, exist_ok=True)
    checkpoint = make_checkpoint(args.workdir, args.size)
    bandwidth = read_bandwidth()  # and again after every turn: the best is the machine's
    todo = rows(args)
    results = {row[0]: [] for row in todo}
    for turn in range(args.processes):
        for row in todo:
            result = spawn(row, args, checkpoint)
            results[row[0]].append(result)
            status = "error" if "error" in result else "ok"
            print(f"[{turn + 1}/{args.processes}] {row[0]}: {status}", file=sys.stderr, flush=True)
        bandwidth = max(bandwidth, read_bandwidth())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_description(), "bandwidth": bandwidth, "results": results}, f, indent=1)
    print_table(results, args, bandwidth)


if __name__ == "__main__":
    main()
