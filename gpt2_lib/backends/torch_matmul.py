"""Float32 products on torch's oneDNN GEMM, with their gradients.

torch multiplies float32 matrices on a CPU (`addmm`, `mm`, `linear`) with
MKL's SGEMM. On an AMD EPYC with AVX-512 (the 2-core machine of
`benchmarks/NOTES.md`) MKL takes a slower code path: 200-220 GFLOP/s for
GPT-2 base's training products, where oneDNN's float32 GEMM, the one
TensorFlow uses and torch's own inductor calls for CPU linears
(`torch.ops.mkldnn._linear_pointwise`), runs at 430-480. Few-row products
gain too (MKL runs them on one core): at batch 8 a block's products take
0.47 instead of 1.07 ms per step, the LM head 4.3 instead of 8.3 ms.
`matmul` computes `rows @ kernel + bias` there in float32 (the same
products, summed in another order: ~1e-6 apart) and its backward as two
more oneDNN products, so `fit()` gets the speed too.
"""

import functools

import keras


def _linear():
    import torch

    if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return None
    return getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def supports(*tensors):
    """True for float32 CPU tensors on torch with oneDNN's linear available.

    Args:
        *tensors: the operands of a `matmul`.
    """
    if keras.config.backend() != "torch":
        return False
    import torch

    return _linear() is not None and all(
        isinstance(tensor, torch.Tensor)
        and tensor.dtype == torch.float32
        and tensor.device.type == "cpu"
        for tensor in tensors
    )


def _product(rows, weight, bias=None):
    """`rows @ weight.T + bias` for `(m, k)` rows and an `(n, k)` weight (views allowed)."""
    if bias is not None:
        bias = bias.contiguous()  # oneDNN reads a strided bias as if it were contiguous
    return _linear()(rows, weight, bias, "none", [], "")


@functools.cache
def _function():
    """The autograd function, made on first use (torch is imported lazily)."""
    import torch

    class Matmul(torch.autograd.Function):
        @staticmethod
        def forward(ctx, rows, kernel, bias):
            ctx.save_for_backward(rows, kernel)
            ctx.has_bias = bias is not None
            return _product(rows, kernel.t(), bias)

        @staticmethod
        def backward(ctx, grad):  # grad: (m, out)
            rows, kernel = ctx.saved_tensors
            grad_rows = grad_kernel = grad_bias = None
            if ctx.needs_input_grad[0]:
                grad_rows = _product(grad, kernel)  # (m, out) @ (out, in)
            if ctx.needs_input_grad[1]:
                grad_kernel = _product(rows.t(), grad.t())  # (in, m) @ (m, out)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_bias = grad.sum(0)
            return grad_rows, grad_kernel, grad_bias

    return Matmul


def matmul(rows, kernel, bias=None):
    """`rows @ kernel (+ bias)` for torch tensors, on oneDNN where `supports` them.

    Differentiable in all three. Other tensors (bfloat16, off the CPU, no
    rows, no oneDNN) take `torch.addmm` / `@`, as before.

    Args:
        rows: `(rows, in)` tensor.
        kernel: `(in, out)` tensor (a transposed view is read as is).
        bias: optional `(out,)` tensor.

    Returns:
        `(rows, out)`, equal to `torch.addmm(bias, rows, kernel)` within
        float32 rounding.

    Example:
    >>> rows, kernel = keras.ops.ones((2, 3)), keras.ops.ones((3, 4))
    >>> product = matmul(rows, kernel) if supports(rows, kernel) else rows @ kernel
    >>> keras.ops.convert_to_numpy(product).tolist()
    [[3.0, 3.0, 3.0, 3.0], [3.0, 3.0, 3.0, 3.0]]
    """
    import torch

    operands = (rows, kernel) if bias is None else (rows, kernel, bias)
    if rows.shape[0] == 0 or not supports(*operands):  # oneDNN has no empty product
        return rows @ kernel if bias is None else torch.addmm(bias, rows, kernel)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in operands)):
        return _product(rows, kernel.t(), bias)  # no autograd node to pay for (generation)
    return _function().apply(rows, kernel, bias)
