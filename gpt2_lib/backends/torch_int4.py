"""Products with Keras' int4 kernels in torch, a block of weights at a time.

Keras' int4 layers (`quantize("int4")`) store a matrix as two signed 4-bit
values per int8 byte along its last axis, with either one scale per output
unit (per channel: `float = value / scale`) or, by default, a scale and a
zero point per group of 128 inputs (`float = (value - zero) * scale`).
Their forward pass unpacks and dequantizes the whole kernel at every call,
in ~10 separate ops, and the tied LM head materializes the whole float
embedding table: on torch, GPT-2 base decoded 0.5 tokens/s that way.

`int4_matmul` computes the same dequantized weights (the same formula and
dtypes, so the same float values) into one float buffer per block of at
most `_BLOCK_ELEMENTS` weights, so that no product holds a float copy of a
whole kernel or of the embedding table, and multiplies them on oneDNN
(`torch_matmul.matmul`). The unpacking and dequantizing passes over the
weights cost ~4x the product itself, so int4 decodes slower than float32
here (GPT-2 base: 4.9 vs 17.5 tokens/s at batch 1); variants that took
the products on the bare values and dequantized after, or reused the
buffers, measured no faster end to end (`benchmarks/NOTES.md`). torch has
no int4 product for float32 inputs that is faster on a CPU:
`_weight_int4pack_mm_for_cpu` took 3.3 ms for a `(1, 768) x (768, 3072)`
product on an AVX2 EPYC, against 1.1 ms in float32.
"""

from typing import NamedTuple

from keras import ops

from gpt2_lib.backends import torch_matmul
from gpt2_lib.utils.quantization import grouped_int4

# Weights dequantized at a time (4 MiB of float32). At 2**22 (a whole GPT-2 base
# kernel) a batch-1 decode step peaked 33 MB higher and ran no faster.
_BLOCK_ELEMENTS = 2**20


class Int4(NamedTuple):
    """A Keras int4 matrix, as stored, with what dequantizes it.

    `transposed` matrices are stored `(out, in)` with their groups along the
    inputs (the tied embedding table as the LM head); the others `(in, out)`
    (`Dense`/`EinsumDense` kernels flattened to 2D), groups along the rows.
    """

    packed: object  # (rows, ceil(columns / 2)) int8
    columns: int
    scale: object  # per channel: (out,); grouped: (groups, out), or (out, groups) if transposed
    zero: object  # like a grouped `scale`, in its dtype; None per channel
    groups: object  # each input's group (int64), or None when groups are runs of the block size
    transposed: bool


def from_layer(layer, transposed=False):
    """The `Int4` of an int4 Keras layer's variables (read now, detached).

    Args:
        layer: an int4 `Dense` or `EinsumDense` (its kernel), or the tied
            `ReversibleEmbedding` (its table, as the LM head).
        transposed: True for the embedding table, stored `(out, in)`.
    """
    import torch

    def value(variable):
        return ops.convert_to_tensor(variable).detach()

    name = "embeddings" if transposed else "kernel"
    packed, scale = value(getattr(layer, f"_{name}")), value(getattr(layer, f"{name}_scale"))
    columns = getattr(layer, "_int4_unpacked_column_size", None) or layer._orig_output_dim
    if not grouped_int4(layer):  # per channel: a scale per output unit
        return Int4(packed, columns, scale.reshape(-1), None, None, transposed)
    block = layer._int4_block_size
    zero = value(getattr(layer, f"{name}_zero")).to(scale.dtype)
    groups = value(layer.g_idx).long()
    inputs = columns if transposed else packed.shape[0]
    regular = inputs % block == 0 and torch.equal(
        groups, torch.arange(inputs, device=groups.device) // block
    )
    return Int4(packed, columns, scale, zero, None if regular else groups, transposed)


def _weights(int4, start, stop):
    """The float weights of outputs `start:stop`, as stored, in the scale's dtype.

    `(stop - start, in)` for a transposed matrix, else `(in, stop - start)`
    (`start` even: a byte holds two neighbouring outputs); dequantized if
    grouped, the bare values per channel (the scale divides the products).
    """
    import torch

    if int4.transposed:
        packed, columns = int4.packed[start:stop], int4.columns
    else:
        packed, columns = int4.packed[:, start // 2 : (stop + 1) // 2], stop - start
    values = torch.empty((*packed.shape, 2), dtype=int4.scale.dtype)
    values[..., 0] = packed << 4 >> 4  # low nibbles, sign-extended: even columns
    values[..., 1] = packed >> 4  # high nibbles: odd columns
    values = values.flatten(1)[:, :columns]
    if int4.zero is None:
        return values
    axis = 1 if int4.transposed else 0  # the inputs' axis
    block = (slice(start, stop), slice(None)) if int4.transposed else (slice(None), slice(start, stop))
    scale, zero = int4.scale[block], int4.zero[block]
    if int4.groups is None:  # runs of the block size: broadcast, no per-input copy
        grouped = values.unflatten(axis, (scale.shape[axis], -1))
        grouped.sub_(zero.unsqueeze(axis + 1)).mul_(scale.unsqueeze(axis + 1))
    else:
        values.sub_(zero.index_select(axis, int4.groups)).mul_(scale.index_select(axis, int4.groups))
    return values


def int4_matmul(rows, int4, bias=None):
    """`rows @ float_kernel (+ bias)` for an `Int4` kernel, as Keras' int4 layers compute it.

    Args:
        rows: `(m, in)` float tensor (the compute dtype).
        int4: an `Int4`.
        bias: optional `(out,)` tensor.

    Returns:
        `(m, out)` in `rows`' dtype, equal to the Keras layer's output within
        the products' rounding.
    """
    import torch

    out = int4.packed.shape[0] if int4.transposed else int4.columns
    width = max(2, _BLOCK_ELEMENTS // rows.shape[1] // 2 * 2)  # even: whole bytes
    outputs = torch.empty((rows.shape[0], out), dtype=rows.dtype)
    for start in range(0, out, width):
        stop = min(out, start + width)
        weights = _weights(int4, start, stop).to(rows.dtype)
        outputs[:, start:stop] = torch_matmul.matmul(rows, weights.t() if int4.transposed else weights)
    if int4.zero is None:
        outputs /= int4.scale.to(rows.dtype)
    return outputs if bias is None else outputs + bias
