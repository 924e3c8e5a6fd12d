"""Float32 products on the faster of torch's two GEMMs, with their gradients.

torch multiplies float32 matrices on a CPU (`addmm`, `mm`, `linear`) with
MKL's SGEMM. On an AMD EPYC with AVX-512 (the 2-core machine of
`benchmarks/NOTES.md`) MKL takes a slower code path: 200-220 GFLOP/s for
GPT-2 base's training products, where oneDNN's float32 GEMM, the one
TensorFlow uses and torch's own inductor calls for CPU linears
(`torch.ops.mkldnn._linear_pointwise`), runs at 430-480. Few-row products
gain too (MKL runs them on one core): at batch 8 a block's products take
0.47 instead of 1.07 ms per step, the LM head 4.3 instead of 8.3 ms.
On an Intel CPU MKL is on its own fast path and oneDNN loses (a 2-core
Xeon with AMX, GPT-2 base in one process, alternating: batch-1 decoding
27.6 tok/s on MKL vs 22.9 on oneDNN, `fit()` 196 vs 146 tokens/s), except
for a few rows over a transposed `(n, k)` kernel, the tied LM head while
decoding a small batch (8 rows x GPT-2's table: 27.9 ms on MKL, 13.8 on
oneDNN; equal from 16 rows, MKL ahead at 2). So `float32_on_onednn` sends
every product to oneDNN only where torch's BLAS is MKL on a CPU that is not
Intel's, and `matmul` sends only those few-row transposed products there
on Intel's. On oneDNN `matmul` computes `rows @ kernel + bias` in float32
(the same products, summed in another order: ~1e-6 apart) and its backward
as two more oneDNN products, so `fit()` gets the speed too.

Keras' int8 layers on a CPU multiply their int8 operands as int32 tensors
(`torch.matmul` has no int8 CPU kernel; Keras calls `torch._int_mm` on CUDA
only). `int8_products` computes the same exact int32 sums faster, by CPU:
`torch._int_mm` where the CPU has VNNI or AMX (oneDNN's int8 GEMM: on an
AVX-512 EPYC a one-row `(1, 768) x (768, 3072)` product took 28 us against
float32's 131), and elsewhere float32 products of the int8 values, which are
exact (`_exact_float_products`): on an AVX2-only EPYC (Zen 3) `_int_mm` took
8-9 ms for that product, float32 0.4-1.6, and Keras' int32 product 20.
"""

import functools

import keras


def _cpu_vendor():
    """The CPU's vendor string: `GenuineIntel`, `AuthenticAMD`, ... ('' if unknown)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()  # Windows: "Intel64 Family 6 ... GenuineIntel"


@functools.cache
def float32_on_onednn():
    """Whether float32 products go to oneDNN: torch's BLAS is MKL on a CPU not made by Intel."""
    import torch

    return not (torch.backends.mkl.is_available() and "intel" in _cpu_vendor().lower())


def _linear():
    """oneDNN's linear op, or None where torch has none (or it is turned off)."""
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


def has_int8_on_cpu(variable):
    """True on torch with `torch._int_mm`, for a variable on the CPU."""
    if keras.config.backend() != "torch":
        return False
    import torch

    return hasattr(torch, "_int_mm") and keras.ops.convert_to_tensor(variable).device.type == "cpu"


@functools.cache
def int8_on_int_mm():
    """Whether `int8_products` uses `torch._int_mm` (a CPU with VNNI or AMX)."""
    import torch

    if not hasattr(torch, "_int_mm"):
        return False
    return bool(torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported())


@functools.cache
def on_amx():
    """Whether oneDNN's int8 and bfloat16 GEMMs run on AMX here.

    There they re-pack their second operand for the AMX tiles at every
    call, so a product of a few rows by a kernel is faster with the
    kernel's `(n, k)` rows first, `(kernel.T @ rows.T).T`, when those rows
    are contiguous (a column-major kernel, a tied table). On a 2-core Xeon:
    int8 (`torch._int_mm`), one row by a column-major `(768, 3072)` kernel,
    104 -> 52 us, 2-64 rows 111-147 -> 56-98 us, the tied LM head 1.99 ->
    1.37 ms (the same GEMM held to VNNI by `ONEDNN_MAX_CPU_ISA` takes 18 us;
    there the usual order is faster from 8 rows, 69 vs 111 us); bfloat16,
    weights read from memory, one row 309 -> 227 us at GPT-2 base's widths
    and 1416 -> 914 at XL's, 8 rows 271 -> 177 and 1435 -> 614, the LM head
    at 8 rows 5.4 -> 3.0 ms (float16 is slower that way: not used). See
    `benchmarks/NOTES.md`.
    """
    import os

    import torch

    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return bool(torch.cpu._is_amx_tile_supported()) and (isa == "ALL" or "AMX" in isa)


def _kernel_first(kernel):
    """Whether to multiply with `kernel`'s `(n, k)` rows first (see `on_amx`)."""
    return kernel.t().is_contiguous() and on_amx()


# Products of int8 values are at most 127 * 127 in magnitude, so a float32 sum
# of up to 1040 of them is an integer below 2**24: exact, in any order.
_EXACT_FLOAT32_TERMS = 2**24 // (127 * 127)
# Kernel columns converted to float32 at a time (4 MiB), so that a product
# never holds a float32 copy of a whole int8 kernel or embedding table.
_FLOAT_BLOCK_ELEMENTS = 2**20


def _exact_float_products(rows, kernel):
    """Exact int32 `rows @ kernel` for int8 `(m, k)` rows and an int8 `(k, n)` kernel view.

    The kernel is converted to float32 a block of columns at a time and
    multiplied by `matmul` (on the GEMM it picks for float32); contractions
    longer than `_EXACT_FLOAT32_TERMS` are split and their exact partial sums
    added in float64.
    """
    import torch

    m, k = rows.shape
    n = kernel.shape[1]
    outputs = torch.empty((m, n), dtype=torch.int32)
    x = rows.float()
    chunks = [
        (first, x[:, first : first + _EXACT_FLOAT32_TERMS].contiguous())
        for first in range(0, k, _EXACT_FLOAT32_TERMS)
    ]  # the rows' slices, made once for every block of columns
    width = max(1, _FLOAT_BLOCK_ELEMENTS // k)
    for start in range(0, n, width):
        block = kernel[:, start : start + width]
        total = None
        for first, x_chunk in chunks:
            part = matmul(x_chunk, block[first : first + _EXACT_FLOAT32_TERMS].float())
            total = part if len(chunks) == 1 else part.double() if total is None else total + part.double()
        outputs[:, start : start + width] = total.to(torch.int32)
    return outputs


def int8_products(rows, kernel, transposed=False):
    """Exact int32 `rows @ kernel` of int8 torch tensors on a CPU.

    Args:
        rows: `(m, k)` int8.
        kernel: `(k, n)` int8, or `(n, k)` when `transposed` (read as stored).
        transposed: whether `kernel` is stored `(n, k)`.

    Example:
    >>> import torch
    >>> rows, kernel = torch.ones((2, 3), dtype=torch.int8), torch.ones((3, 4), dtype=torch.int8)
    >>> int8_products(rows, kernel).tolist() if has_int8_on_cpu(kernel) else [[3] * 4] * 2
    [[3, 3, 3, 3], [3, 3, 3, 3]]
    """
    return int8_kernel_products(kernel, transposed)(rows)


def int8_kernel_products(kernel, transposed=False):
    """`int8_products` as a function of the rows, the way to multiply chosen once.

    Args:
        kernel: `(k, n)` int8, or `(n, k)` when `transposed` (read as stored).
        transposed: whether `kernel` is stored `(n, k)`.

    Returns:
        A function of `(m, k)` int8 rows returning their exact int32 products.

    Example:
    >>> import torch
    >>> kernel = torch.ones((3, 4), dtype=torch.int8)
    >>> products = int8_kernel_products(kernel)
    >>> products(torch.ones((1, 3), dtype=torch.int8)).tolist() if has_int8_on_cpu(kernel) else [[3] * 4]
    [[3, 3, 3, 3]]
    """
    import torch

    kernel = kernel.t() if transposed else kernel
    first = kernel.t()
    exact_floats, kernel_first = not int8_on_int_mm(), _kernel_first(kernel)

    def products(rows):
        if rows.shape[0] == 0:
            return torch.zeros((0, kernel.shape[1]), dtype=torch.int32)
        if exact_floats:
            return _exact_float_products(rows, kernel)
        if kernel_first:
            return torch._int_mm(first, rows.t()).t().contiguous()
        return torch._int_mm(rows, kernel)

    return products


# Rows from which MKL's product over a transposed kernel loses to oneDNN's on
# an Intel CPU (1 row: equal; 2 rows: MKL 8.3 vs 11.4 ms; 4-8 rows: 2x slower).
_TRANSPOSED_ROWS_ON_ONEDNN = 3


def _onednn_from_rows(kernel, bias):
    """From how many rows a product on `kernel` without gradients goes to oneDNN (None: never)."""
    if not supports(*((kernel,) if bias is None else (kernel, bias))):
        return None
    if float32_on_onednn():
        return 1  # oneDNN has no empty product
    transposed = kernel.t().is_contiguous() and not kernel.is_contiguous()
    return _TRANSPOSED_ROWS_ON_ONEDNN if transposed else None


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
    rows, no oneDNN) and the products `_onednn_from_rows` leaves to MKL on
    an Intel CPU take `torch.addmm` / `@`; without gradients, a
    column-major bfloat16 kernel goes first on AMX (`on_amx`).

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
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in operands)):
        return kernel_product(kernel, bias)(rows)  # no autograd node to pay for (generation)
    if rows.shape[0] and supports(*operands) and float32_on_onednn():
        return _function().apply(rows, kernel, bias)
    return rows @ kernel if bias is None else torch.addmm(bias, rows, kernel)


def _one_row_over_column_halves(kernel, bias):
    """A one-row product as one `baddbmm` over the kernel's two column halves, or None.

    oneDNN reads the kernel of a one-row float32 product at 13-15 GB/s;
    batched over two column halves (`as_strided` views, no copy), one per
    core, it reads it faster. On a
    2-core AMD EPYC, the 48 block kernels of GPT-2 base read from memory
    (cycled through 1 GB): 1.9 ms a block on oneDNN (15 GB/s), 1.28 ms as
    halves (22 GB/s, the machine's read bandwidth is ~25); from 2 rows
    oneDNN is faster (1.56 vs 2.0 ms). The LM head, a transposed table,
    already reads at ~23 GB/s on oneDNN and is left to it. Only for a
    contiguous float32 `(in, out)` kernel with an even number of outputs.
    """
    import torch

    features, outputs = kernel.shape
    if kernel.dtype != torch.float32 or not kernel.is_contiguous() or outputs % 2:
        return None
    half = outputs // 2
    halves = kernel.as_strided((2, features, half), (half, outputs, 1), kernel.storage_offset())
    bias_halves = None if bias is None else bias.contiguous().view(2, 1, half)

    def product(row):  # (1, in)
        rows = row.expand(2, 1, features)
        if bias_halves is None:
            return torch.bmm(rows, halves).view(1, outputs)
        return torch.baddbmm(bias_halves, rows, halves).view(1, outputs)  # (2, 1, half)

    return product


def kernel_product(kernel, bias=None):
    """`matmul` without gradients as a function of the rows, its GEMM chosen once.

    `matmul` checks its operands at every call: ~9 us of the ~12 a one-row
    product takes at small widths, and a GPT-2 base decoding step makes 73
    products (`TorchBlocks` makes one of these per layer for a generation).
    The rows must be of the kernel's dtype and device.

    Args:
        kernel: `(in, out)` tensor (a transposed view is read as is).
        bias: optional `(out,)` tensor.

    Returns:
        A function of `(rows, in)` rows returning `matmul(rows, kernel, bias)`.

    Example:
    >>> kernel, bias = keras.ops.ones((3, 4)), keras.ops.zeros((4,))
    >>> if supports(kernel, bias):
    ...     product = kernel_product(kernel, bias)
    ... else:  # another backend
    ...     product = lambda rows: keras.ops.matmul(rows, kernel) + bias
    >>> keras.ops.convert_to_numpy(product(keras.ops.ones((1, 3)))).tolist()
    [[3.0, 3.0, 3.0, 3.0]]
    """
    import torch

    if kernel.dtype == torch.bfloat16 and _kernel_first(kernel):
        # Returned row-major: a transposed (rows, out) result left every
        # later op strided (SDPA fell back to its math path: GPT-2 base
        # bfloat16 decoding at batch 8 1.13x-1.35x slower,
        # benchmarks/NOTES.md). The copy is rows x out values.
        first, column_bias = kernel.t(), None if bias is None else bias[:, None]
        if column_bias is None:
            return lambda rows: (first @ rows.t()).t().contiguous()
        return lambda rows: torch.addmm(column_bias, first, rows.t()).t().contiguous()
    onednn_from = _onednn_from_rows(kernel, bias)
    weight = kernel.t()
    one_row = _one_row_over_column_halves(kernel, bias) if onednn_from == 1 else None

    def product(rows):
        if one_row is not None and rows.shape[0] == 1:
            return one_row(rows)
        if onednn_from is not None and rows.shape[0] >= onednn_from:
            return _product(rows, weight, bias)
        return rows @ kernel if bias is None else torch.addmm(bias, rows, kernel)

    return product
