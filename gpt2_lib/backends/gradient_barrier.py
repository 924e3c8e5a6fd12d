"""`gradient_barrier`: identity whose gradient XLA computes once (JAX).

GPT-2's residual stream carries one gradient through every block, and each
block adds its LayerNorm backward (cheap elementwise terms) to it. XLA's CPU
fusion pass duplicates cheap producers into each consumer, and nothing in the
chain is ever materialized: every consumer of a block's residual gradient
(the transposes feeding its weight-gradient matmuls, its LayerNorm reductions)
recomputes the terms of every later block. On GPT-2 base the backward of
block 0 alone ran a fusion of ~650 instructions; the duplicated work cost
~0.5-1 s of a ~6.5 s training step (batch 4 x 256, 2-core CPU).

A conditional is a boundary XLA does not fuse across, so passing the
cotangent through one makes XLA compute it once per block. Its branches
return the cotangent unchanged: the taken one as is, the other (only taken
when the cotangent's first element is NaN) through a NaN-preserving select,
which is the same value but keeps XLA from folding the two branches into
nothing. Measured in `benchmarks/NOTES.md`. Other backends: identity.
"""

import functools

import keras


def gradient_barrier(x):
    """`x` unchanged; on JAX, its gradient is materialized, not fused onward.

    Args:
        x: a tensor.

    Returns:
        `x`. Its gradient is the incoming gradient, bit for bit.

    Example:
    >>> gradient_barrier(np.ones((2, 3), "float32")).shape
    (2, 3)
    """
    if keras.config.backend() != "jax":
        return x
    return _jax_gradient_barrier()(x)


@functools.cache
def _jax_gradient_barrier():
    import jax
    import jax.numpy as jnp

    def unchanged(cotangent):
        return cotangent

    def unchanged_nan_safe(cotangent):
        return jnp.where(jnp.isnan(cotangent), jnp.nan, cotangent)

    @jax.custom_vjp
    def barrier(x):
        return x

    def forward(x):
        return x, None

    def backward(_, cotangent):
        first_is_nan = jnp.isnan(cotangent.reshape(-1)[0])
        return (jax.lax.cond(first_is_nan, unchanged_nan_safe, unchanged, cotangent),)

    barrier.defvjp(forward, backward)
    return barrier
