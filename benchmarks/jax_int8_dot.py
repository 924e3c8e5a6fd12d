"""Microbenchmark: int8 (s8 x s8 -> s32) vs float32 products of GPT-2 base decode shapes on JAX CPU.

Each product runs 16 times inside a `fori_loop` (as in decoding; weights behind the same
optimization barrier as `gpt2_lib/backends/dense.py`); microseconds per product, median.
N: kernel stored (k, n); T: stored (n, k) (the tied embedding). pP: the int8 rows padded to P
rows (p0: unpadded). Usage (1 thread, pinned):
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
        ROWS=1,8 taskset -c 1 python benchmarks/jax_int8_dot.py
"""
import os, time, statistics
import numpy as np, jax, jax.numpy as jnp
from jax import lax
def quant(x):
    scale = 127.0 / (jnp.max(jnp.abs(x), axis=-1, keepdims=True) + 1e-7)
    return jnp.clip(jnp.round(x * scale), -127, 127).astype(jnp.int8), scale
def mk(pad, transposed):
    def f(x, w, s):
        q, xs = quant(x)
        w, q = lax.optimization_barrier((w, q))
        m = q.shape[0]
        if m < pad:
            q = jnp.pad(q, ((0, pad - m), (0, 0)))
        if transposed:
            p = lax.dot_general(q, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
        else:
            p = lax.dot_general(q, w, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
        p = p[:m]
        return p.astype(jnp.float32) / (xs * s)
    return f
L = 16
def looped(f):
    def run(x, w, s):
        def body(i, c):
            x, acc = c
            y = f(x, w, s)
            return x + 1e-9 * acc, acc + y[:, :1]
        return lax.fori_loop(0, L, body, (x, jnp.zeros((x.shape[0], 1))))[1]
    return jax.jit(run)
def f32N(x, w, s): return x @ w
def f32T(x, w, s): return lax.dot_general(x, w, (((1,), (1,)), ((), ())))
rng = np.random.default_rng(0)
for m in [int(v) for v in os.environ.get("ROWS","1,8").split(",")]:
  for k, n in [(768, 2304), (768, 768), (768, 3072), (3072, 768), (768, 50257)]:
    fns = {}
    for tr in (False, True):
        wi = jnp.asarray(rng.integers(-127, 128, size=(n, k) if tr else (k, n)).astype(np.int8))
        wf = jnp.asarray(rng.normal(size=(n, k) if tr else (k, n)).astype(np.float32))
        s = jnp.asarray(rng.uniform(1, 2, size=(n,)).astype(np.float32))
        x = jnp.asarray(rng.normal(size=(m, k)).astype(np.float32))
        t = "T" if tr else "N"
        fns["f32" + t] = (looped(f32T if tr else f32N), (x, wf, s))
        for pad in (0, 2, 8) if m == 1 else (0,):
            fns[f"s8{t}p{pad}"] = (looped(mk(pad, tr)), (x, wi, s))
        if m == 1:
            ref = mk(0, tr)(x, wi, s)
            for pad in (2, 8):
                assert (np.asarray(mk(pad, tr)(x, wi, s)) == np.asarray(ref)).all()
    times = {nm: [] for nm in fns}
    inner = {}
    for nm, (fn, a) in fns.items():
        fn(*a).block_until_ready(); t0 = time.perf_counter(); fn(*a).block_until_ready()
        inner[nm] = max(2, int(0.05 / (time.perf_counter() - t0)))
    for r in range(int(os.environ.get("REPS", 5))):
        for nm, (fn, a) in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner[nm]): o = fn(*a)
            o.block_until_ready()
            times[nm].append((time.perf_counter() - t0) / inner[nm] / L * 1e6)
    print(f"m={m} {k}x{n}: " + "  ".join(f"{nm}={statistics.median(v):.0f}" for nm, v in times.items()), flush=True)
