"""Microbenchmark: an int8 kernel stored `(in, out)` (Keras' layout) or `(out, in)`.

Decoding multiplies a few rows by every kernel once per step, reading it from
memory. This chains `--layers` distinct int8 kernels of one GPT-2 shape (more
bytes than the L3 cache holds, as in a model) inside one compiled program and
reports microseconds per product and the kernel read rate:

* `in_out`: the kernel stored `(in, out)` and contracted on its first axis,
  as Keras' int8 `Dense` stores it and `gpt2_lib.backends.dense` reads it;
* `out_in`: the same product with the kernel stored `(out, in)` and
  contracted on its last axis, as the tied embedding (the LM head) is read.

TensorFlow and JAX run the chain under XLA (TensorFlow `jit_compile=True`:
Eigen's int8 GEMM; JAX: YNNPACK), with the int8 rows padded to 2 as
`dense._one_row_as_two` does; torch runs `torch._int_mm` on one row, where
`out_in` is the column-major kernel `torch_gpt2` generates with.

    python benchmarks/int8_kernel_layout.py [--backends tensorflow jax torch] [--rows 2]
"""

import argparse
import os
import subprocess
import sys
import time

# GPT-2 medium's projections (query, key, value and attention output each
# (1024, 1024); the MLP's input and output), then base's MLP input and output.
SHAPES = [(1024, 1024), (1024, 4096), (4096, 1024), (768, 3072), (3072, 768)]


def chain(backend, k, n, rows, layers, layout):
    """Seconds per product, best of 7 calls of a chain of `layers` products."""
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (n, k) if layout == "out_in" else (k, n)
    kernels = [rng.integers(-127, 128, shape).astype(np.int8) for _ in range(layers)]
    x = rng.integers(-127, 128, (rows, k)).astype(np.int8)
    if backend == "tensorflow":
        import tensorflow as tf

        kernels = [tf.Variable(w) for w in kernels]

        @tf.function(jit_compile=True)
        def run(x):
            for w in kernels:
                y = tf.matmul(x, w, transpose_b=layout == "out_in", output_type=tf.int32)
                x = x + tf.cast(tf.reduce_sum(y) % 5, tf.int8)  # each product feeds the next
            return x

        call = lambda: run(x).numpy()  # noqa: E731
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        kernels = [jnp.asarray(w) for w in kernels]
        dims = (((1,), (1 if layout == "out_in" else 0,)), ((), ()))

        @jax.jit
        def run(x, kernels):
            for w in kernels:
                y = jax.lax.dot_general(x, w, dims, preferred_element_type=jnp.int32)
                x = x + (jnp.sum(y) % 5).astype(jnp.int8)
            return x

        call = lambda: run(x, kernels).block_until_ready()  # noqa: E731
    else:
        import torch

        kernels = [torch.from_numpy(w) for w in kernels]
        kernels = [w.t() if layout == "out_in" else w for w in kernels]  # (in, out) views
        x = torch.from_numpy(x)

        def call():
            y = x
            for w in kernels:
                y = x + (torch._int_mm(y, w).sum() % 5).to(torch.int8)
            return y

    call()
    times = []
    for _ in range(7):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times) / layers


def worker(args):
    rows = 1 if args.worker == "torch" else args.rows
    for k, n in SHAPES:
        seconds = {layout: chain(args.worker, k, n, rows, args.layers, layout) for layout in ("in_out", "out_in")}
        cells = [f"{s * 1e6:.0f} us ({k * n / s / 1e9:.1f} GB/s)" for s in seconds.values()]
        print(f"| {args.worker} | ({k}, {n}) | {rows} | {cells[0]} | {cells[1]} | {seconds['in_out'] / seconds['out_in']:.2f}x |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--rows", type=int, default=2, help="rows on TensorFlow and JAX (torch: 1)")
    parser.add_argument("--layers", type=int, default=48, help="distinct kernels per chain")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    print("| backend | kernel (in, out) | rows | stored (in, out) | stored (out, in) | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    for backend in args.backends:
        command = [sys.executable, __file__, "--worker", backend, "--rows", str(args.rows), "--layers", str(args.layers)]
        environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        result = subprocess.run(command, env=environment, capture_output=True, text=True)
        print(result.stdout, end="" if result.returncode == 0 else result.stderr[-2000:])


if __name__ == "__main__":
    main()
