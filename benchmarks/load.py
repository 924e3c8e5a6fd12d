"""Benchmark: `from_preset` of a gpt2_base_en-sized preset, per backend.

Makes one random GPT-2 base (124M params) once: a Transformers checkpoint
(`make_checkpoint` of benchmarks/generate.py: safetensors, OpenAI's real
vocabulary) and the same weights saved by gpt2_lib as a KerasHub-format
preset. `--quick` (or `--size tiny`) uses the tiny model instead.

Default mode: in a fresh process per measurement (page cache warmed by
reading the files first, backend initialized first), times
`Backbone.from_preset(dir)` (the KerasHub-format preset, and the Transformers
checkpoint directory, "HF dir") and `transformers.GPT2Model.from_pretrained(dir)`
inside the process, and reports wall time and peak RSS against RSS before
loading. Targets: at most 1.0 s on every backend; peak RSS at most
RSS-before + 1.2x the weight bytes.

`--fresh-process`: what a user waits for. Per row, the wall time of a whole
new `python -c "import ...; X.from_preset(path)"` timed from outside (start-up,
imports, backend initialization, loading and exit; nothing subtracted), and
the child's peak RSS (`ru_maxrss` from `os.wait4`) against the weight bytes.
(Linux counts the launching process's peak RSS into a child's `ru_maxrss`, so
the table header prints this driver's own, which stays far below any row.)
Rows: `import keras` alone per backend (the start-up floor), gpt2_lib's
`GPT2Backbone.from_preset` per backend (KerasHub-format preset and HF dir),
`transformers.GPT2LMHeadModel.from_pretrained`, and, given their scratch
environments (never dependencies of gpt2_lib), KerasHub's
`keras_hub.models.GPT2Backbone.from_preset` of the same preset (jax) and
`ctranslate2.Generator` of the checkpoint converted once, before timing, with
`ctranslate2.converters.TransformersConverter`. Each row gets one untimed
process first (bytecode caches, page cache), then `--processes` timed ones,
started in turns (A, B, C, ..., A, B, C) like benchmarks/generate.py; the
table shows median (min-max). Issue target: at most 0.5 s per backend for
gpt2_lib, peak RSS at most 1.2x the weight bytes.

    python benchmarks/load.py [--backends jax torch tensorflow] [--workdir /tmp/gpt2_load_bench]
    python benchmarks/load.py --fresh-process --processes 5 \
        --keras-hub-python /path/kh-venv/bin/python --ctranslate2-python /path/ct2-venv/bin/python
    python benchmarks/load.py --fresh-process --quick    # smoke test, tiny model
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

from generate import make_checkpoint
from generate import summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r'''
import json, os, resource, sys, time
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
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
before = rss()
start = time.perf_counter()
model = load()
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "rss_before": before, "peak_rss": peak}))
'''

_TO_KERAS_HUB = r'''
import sys
from gpt2_lib.models import GPT2Backbone
GPT2Backbone.from_preset(sys.argv[1]).save_to_preset(sys.argv[2])
'''

_TO_CTRANSLATE2 = r'''
import sys, ctranslate2
ctranslate2.converters.TransformersConverter(sys.argv[1]).convert(sys.argv[2], force=True)
'''


def run(code, args, backend="jax", python=sys.executable):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([python, "-c", code, *args], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return out.stdout


def make_files(workdir, size):
    """(Transformers checkpoint dir, KerasHub-format preset dir), same weights."""
    os.makedirs(workdir, exist_ok=True)
    checkpoint = make_checkpoint(workdir, size)
    preset = checkpoint + "_keras_hub_preset"
    if not os.path.isfile(os.path.join(preset, "config.json")):
        run(_TO_KERAS_HUB, [checkpoint, preset])
    return checkpoint, preset


def weight_bytes(checkpoint):
    """Bytes of the tensors in the checkpoint's model.safetensors (its header says)."""
    path = os.path.join(checkpoint, "model.safetensors")
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(t["data_offsets"][1] - t["data_offsets"][0] for k, t in header.items() if k != "__metadata__")


def warm(path):
    """Read every file under `path` once (page cache)."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(1 << 20):  # small reads: this driver's RSS stays low
                    pass


# --fresh-process ---------------------------------------------------------------


def fresh_rows(args, checkpoint, preset):
    """(label, python, backend, code, floor label) for every row asked for."""
    rows = [(f"import keras ({b})", sys.executable, b, "import keras", None) for b in args.backends]
    load = "from gpt2_lib.models import GPT2Backbone; GPT2Backbone.from_preset({!r})"
    for b in args.backends:
        rows.append((f"gpt2_lib {b}", sys.executable, b, load.format(preset), f"import keras ({b})"))
        rows.append((f"gpt2_lib {b} (HF dir)", sys.executable, b, load.format(checkpoint),
                     f"import keras ({b})"))
    rows.append(("Transformers GPT2LMHeadModel", sys.executable, "torch",
                 f"import transformers; transformers.GPT2LMHeadModel.from_pretrained({checkpoint!r})", None))
    if args.keras_hub_python:
        floor = "import keras (jax, KerasHub env)"
        rows.append((floor, args.keras_hub_python, "jax", "import keras", None))
        rows.append(("KerasHub jax", args.keras_hub_python, "jax",
                     f"import keras_hub; keras_hub.models.GPT2Backbone.from_preset({preset!r})", floor))
    if args.ctranslate2_python:
        converted = checkpoint + "_ctranslate2"
        if not os.path.isfile(os.path.join(converted, "model.bin")):
            run(_TO_CTRANSLATE2, [checkpoint, converted], python=args.ctranslate2_python)
        rows.append(("CTranslate2 Generator", args.ctranslate2_python, None,
                     f"import ctranslate2; ctranslate2.Generator({converted!r})", None))
    return rows


def time_process(python, backend, code):
    """(wall seconds, peak RSS bytes) of `python -c code`, measured from outside."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if backend:
        env["KERAS_BACKEND"] = backend
    if python == sys.executable:  # gpt2_lib from this checkout
        env["PYTHONPATH"] = REPO + os.pathsep + os.environ.get("PYTHONPATH", "")
    with open(os.devnull, "wb") as devnull, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen([python, "-c", code], env=env, stdout=devnull, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            stderr.seek(0)
            raise RuntimeError(f"{code!r} failed:\n" + stderr.read().decode()[-3000:])
    return seconds, usage.ru_maxrss * 1024  # KiB on Linux


def fresh_process(args, checkpoint, preset):
    weights = weight_bytes(checkpoint)
    rows = fresh_rows(args, checkpoint, preset)
    warm(checkpoint)
    warm(preset)
    results = {row[0]: [] for row in rows}
    for turn in range(args.warmup + args.processes):
        for label, python, backend, code, _ in rows:
            try:
                seconds, peak = time_process(python, backend, code)
            except RuntimeError as error:
                results[label].append({"error": str(error)})
                print(f"{label}: {error}", file=sys.stderr, flush=True)
                continue
            if turn >= args.warmup:
                results[label].append({"seconds": seconds, "peak_rss": peak})
        print(f"[{turn + 1}/{args.warmup + args.processes}] done", file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"weight_bytes": weights, "results": results}, f, indent=1)

    def values(label, key):
        return [r[key] for r in results.get(label, []) if key in r]

    reference = statistics.median(values("Transformers GPT2LMHeadModel", "seconds") or [float("nan")])
    print(f"\nweights: {weights / 2**20:.0f} MiB; {args.processes} processes per row (median (min-max)); "
          f"wall time of the whole process from outside; this driver's own peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB\n")
    print("| row | wall ms | vs Transformers | above floor ms | peak RSS MiB | peak / weights "
          "| (peak - floor peak) / weights |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, _, _, _, floor in rows:
        seconds, peaks = values(label, "seconds"), values(label, "peak_rss")
        if not seconds:
            error = next((r["error"] for r in results[label] if "error" in r), "no result")
            print(f"| {label} | FAILED: {error.strip().splitlines()[-1][:80]} | | | | | |")
            continue
        cells = [summary([1000 * s for s in seconds]), f"{statistics.median(seconds) / reference:.2f}x",
                 "-", summary([p / 2**20 for p in peaks]), f"{statistics.median(peaks) / weights:.2f}x", "-"]
        if floor and values(floor, "seconds"):
            cells[2] = f"{1000 * (statistics.median(seconds) - statistics.median(values(floor, 'seconds'))):.0f}"
            above = statistics.median(peaks) - statistics.median(values(floor, "peak_rss"))
            cells[5] = f"{above / weights:.2f}x"
        print(f"| {label} | " + " | ".join(cells) + " |")


# Default mode --------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "torch", "tensorflow"])
    parser.add_argument("--workdir", default="/tmp/gpt2_load_bench")
    parser.add_argument("--size", choices=["base", "tiny"], default="base")
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 process per row")
    parser.add_argument("--processes", "--repeats", dest="processes", type=int, default=3,
                        help="fresh processes per row")
    parser.add_argument("--fresh-process", action="store_true",
                        help="time whole new processes (start-up included) from outside")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed processes per row first (--fresh-process)")
    parser.add_argument("--keras-hub-python", help="Python of an environment with keras-hub")
    parser.add_argument("--ctranslate2-python", help="Python of an environment with ctranslate2")
    parser.add_argument("--json", help="also write the raw results here (--fresh-process)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.processes = "tiny", 1
    theirs, ours = make_files(args.workdir, args.size)
    if args.fresh_process:
        return fresh_process(args, theirs, ours)
    weights = weight_bytes(theirs)
    rows = [("gpt2_lib " + b, "gpt2_lib", b) for b in args.backends]
    rows += [("gpt2_lib " + b + " (HF dir)", "gpt2_lib_hf", b) for b in args.backends]
    rows.append(("transformers (torch)", "transformers", "torch"))
    print(f"weights: {weights / 2**20:.0f} MiB float32")
    print(f"| {'loader':<29} | best s | median s | RSS before MiB | peak MiB | (peak-before)/weights |")
    print(f"|{'-' * 31}|--------|----------|----------------|----------|-----------------------|")
    for label, kind, backend in rows:
        path = ours if kind == "gpt2_lib" else theirs  # gpt2_lib_hf: theirs
        results = []
        for _ in range(args.processes):
            warm(path)
            results.append(json.loads(run(_CHILD, [kind, path], backend).strip().splitlines()[-1]))
        times = sorted(r["seconds"] for r in results)
        best = min(results, key=lambda r: r["seconds"])
        ratio = (best["peak_rss"] - best["rss_before"]) / weights
        print(
            f"| {label:<29} | {times[0]:6.2f} | {times[len(times) // 2]:8.2f} | "
            f"{best['rss_before'] / 2**20:14.0f} | {best['peak_rss'] / 2**20:8.0f} | {ratio:21.2f} |"
        )


if __name__ == "__main__":
    main()
