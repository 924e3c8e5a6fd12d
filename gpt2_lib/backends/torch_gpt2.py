"""GPT-2's decoder blocks in plain torch ops, on the backbone's own variables.

Keras on torch runs eagerly, layer by layer: a GPT-2 base forward pays for
~150 `Layer.__call__`s, `EinsumDense` runs its matmuls as `einsum` plus a
separate bias add, and a cached decoding step copies the whole key/value
cache (`slice_update` clones, `stack`). At batch 1 that overhead costs more
than the step's matmuls. `TorchBlocks` computes the same blocks with
plain products on the variables found through `backbone.weight_table()`
(float32 ones through `torch_matmul`, oneDNN or MKL by CPU; others with
`torch.addmm`):

* without a cache (`GPT2Backbone.call`): autograd reaches the variables, so
  training and LoRA (through each layer's `kernel`) go through it too;
* with a cache (`GPT2CausalLM` generation: prompt chunks and one-token
  steps): weights are read once per `generate()` call, each layer's
  product is chosen then (`torch_matmul.kernel_product`), the token and
  position rows are looked up by indexing (`embeddings`) and the new
  keys/values are written into the cache in place: a step's Python and
  dispatch overhead, not its products, was 17% of a GPT-2 base float32
  step and 33% of an int8 one (`benchmarks/NOTES.md`). int8-quantized layers
  (`quantize("int8")`) run as Keras computes them (inputs quantized per row
  to int8, exact int32 products, rescaled) with
  `torch_matmul.int8_kernel_products`: on a CPU with VNNI `torch._int_mm`, ~2x a
  float32 GEMV at batch 1, ~7x at batch 8, reading a quarter of the bytes
  (`benchmarks/NOTES.md`); elsewhere exact float32 products of the int8
  values. int4 layers (weight-only, Keras' default) dequantize their
  kernels as Keras does, a block at a time (`torch_int4`).

The model computes the positions and attention mask itself and hands them
over; this module looks their rows up and holds the block math. It is the fast
path; `TransformerDecoder.call` is the reference it is tested against
(outputs and gradients, `tests/backends/test_torch_gpt2.py`).
"""

from typing import NamedTuple

import keras
from keras import ops

from gpt2_lib.backends import torch_int4, torch_matmul
from gpt2_lib.backends.attention import cached_attention
from gpt2_lib.backends.attention import dot_product_attention
from gpt2_lib.backends.attention import torch_key_end
from gpt2_lib.backends.embedding import embedding_lookup
from gpt2_lib.utils.memory import return_freed_memory


def supports(backbone, token_ids=None, training=False, generation=False):
    """Whether `TorchBlocks(backbone)` computes exactly what the Keras blocks do.

    True on the torch backend, for concrete inputs, when dropout is
    inactive (inference, or `dropout=0`) and the weights are stored in the
    compute dtype (float32, bfloat16 or float16: not a mixed policy). For
    generation, int8 and weight-only int4 layers are supported too (without
    LoRA on them); other quantization modes, and quantized training, take
    the Keras path.

    Args:
        backbone: a `GPT2Backbone`.
        token_ids: the input ids, or None when there are no inputs to check.
        training: whether the call trains (dropout).
        generation: whether the blocks serve cached generation
            (`TorchBlocks(backbone, for_generation=True)`).
    """
    if keras.config.backend() != "torch":
        return False
    import torch

    if isinstance(token_ids, keras.KerasTensor):
        return False
    if isinstance(token_ids, torch.Tensor) and token_ids.device.type == "meta":
        return False
    if training and backbone.dropout > 0:
        return False
    quantized = [
        layer for layer in backbone._flatten_layers()
        if getattr(layer, "quantization_mode", None) is not None
    ]
    if quantized:
        return generation and all(_takes_quantized(layer) for layer in quantized)
    policy = backbone.dtype_policy
    return policy.variable_dtype == policy.compute_dtype


def _takes_quantized(layer):
    """int8, or weight-only int4 (Keras' default), without LoRA on it."""
    if getattr(layer, "lora_enabled", False):
        return False
    if layer.quantization_mode == "int4":
        return getattr(layer, "inputs_quantizer", None) is None
    return layer.quantization_mode == "int8"


class _Norm(NamedTuple):
    gamma: object
    beta: object
    epsilon: float


class _Linear(NamedTuple):
    """A dense layer as an `(in, out)` matrix; int8 with its `(out,)` scale."""

    kernel: object  # (in, out), float, or int8 with `scale`, or a `torch_int4.Int4`
    bias: object  # (out,) or None
    scale: object = None  # Keras' kernel_scale: float kernel = kernel / scale
    # Generation: the kernel's product as a function of the rows, chosen once
    # (`torch_matmul.kernel_product`; int8: `int8_kernel_products`).
    product: object = None


class _Block(NamedTuple):
    attention_norm: _Norm
    # (query, key, value), or one `_Linear` over their kernels side by side
    # (generation, where they are stored column-major: `_side_by_side`).
    query_key_value: tuple
    attention_output: _Linear
    mlp_norm: _Norm
    intermediate: _Linear
    output: _Linear


def _int8_scale(dense):
    """An int8 dense layer's `(out,)` kernel scale, in float32."""
    return ops.convert_to_tensor(dense.kernel_scale).detach().float().reshape(-1)


def _column_major(variable, columns):
    """A kernel as an `(in, out)` matrix stored column by column.

    `torch._int_mm` multiplies one row by a column-major int8 matrix ~2.7x
    faster than by a row-major one (same speed from 8 rows on), and on AMX
    int8 and bfloat16 products take a column-major kernel first
    (`torch_matmul.on_amx`; `benchmarks/NOTES.md`). The variable keeps its
    shape and values; only its storage order changes, once, in place (no
    second copy is kept).

    Returns:
        The matrix, and whether its storage was copied now.
    """
    tensor = ops.convert_to_tensor(variable)
    matrix = tensor.detach().reshape(-1, columns)
    if matrix.stride(0) == 1:
        return matrix, False
    matrix = matrix.t().contiguous().t()
    tensor.data = matrix.reshape(tensor.shape)
    return matrix, True


def _side_by_side(variables, columns):
    """`(in, out)` kernels as one column-major `(in, n * out)` matrix, in place.

    The variables' storage becomes consecutive parts of one buffer (their
    shapes and values unchanged, as in `_column_major`), so query, key and
    value are one product: a GPT-2 base int8 block one `torch._int_mm` of
    (2304, 768) instead of three of (768, 768) per step (`benchmarks/NOTES.md`).
    Later calls find the buffer and make no copy.

    Returns:
        The matrix, and whether the kernels were copied now.
    """
    import torch

    tensors = [ops.convert_to_tensor(variable) for variable in variables]
    parts = [tensor.detach().reshape(-1, columns).t() for tensor in tensors]  # (out, in)
    first = parts[0]
    if all(
        part.is_contiguous()
        and part.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        and part.storage_offset() == first.storage_offset() + index * first.numel()
        for index, part in enumerate(parts)
    ):
        size = (len(parts) * columns, first.shape[1])
        return torch.as_strided(first, size, (first.shape[1], 1), first.storage_offset()).t(), False
    buffer = torch.cat(parts)  # (n * out, in)
    for index, tensor in enumerate(tensors):
        tensor.data = buffer[index * columns : (index + 1) * columns].t().reshape(tensor.shape)
    return buffer.t(), True


class TorchBlocks:
    """The decoder blocks and final LayerNorm of a `GPT2Backbone`, in torch.

    Args:
        backbone: a `GPT2Backbone` for which `supports(backbone)` holds.
        for_generation: bool. False (the default) reads the variables at
            every call, so gradients flow to them. True reads them once, now,
            detached and cast to the compute dtype, for a `generate()` call.

    Call arguments:
        hidden_states: `(batch, seq, hidden)` embeddings.
        attention_mask: boolean `(batch, 1, seq, key_length)`, see
            `gpt2_lib.layers.causal_attention_mask`.
        cache: optional `(batch, num_layers, 2, heads, max_length, head_dim)`;
            updated in place at `cache_update_index` and returned.
        cache_update_index: int, the cache position of the first query.

    Returns:
        The last hidden states after the final LayerNorm, and the cache when
        one was given.
    """

    def __init__(self, backbone, for_generation=False):
        import torch

        self.torch = torch
        self.num_heads = backbone.num_heads
        self.head_dim = backbone.hidden_dim // backbone.num_heads
        self.dtype = getattr(torch, keras.backend.standardize_dtype(backbone.compute_dtype))
        self.for_generation = for_generation
        self._int8_max = torch.tensor(127.0)
        table = backbone.weight_table()
        self._layers = [
            {entry.role: entry.layer for entry in table if entry.block == index}
            for index in range(backbone.num_layers)
        ]
        self._final_norm = next(e.layer for e in table if e.role == "layer_norm")
        self._token_embedding = next(e.layer for e in table if e.role == "token_embedding")
        self._position_embedding = next(e.layer for e in table if e.role == "position_embedding")
        self._copied = False  # whether a kernel was re-laid (`_relaid`)
        self._weights = self._read() if for_generation else None
        if self._copied:
            # The kernels' old storage was freed inside the C heap, which
            # glibc keeps resident: GPT-2 base int8 generation peaked ~30 MB
            # (22% of weights + cache) higher (benchmarks/NOTES.md).
            return_freed_memory()
        self._head = self._lm_head() if for_generation else None
        self._tables = self._embedding_tables() if for_generation else None

    # === Weights ===

    def _value(self, variable):
        value = ops.convert_to_tensor(variable)
        if self.for_generation:
            value = value.detach().to(self.dtype)
        return value

    def _norm(self, layer):
        gamma, beta = self._value(layer.gamma), self._value(layer.beta)
        if self.for_generation:
            gamma, beta = gamma.float(), beta.float()
        return _Norm(gamma, beta, layer.epsilon)

    def _matrix(self, dense):
        """A dense layer as a `_Linear` (LoRA included for float layers)."""
        bias = None if dense.bias is None else self._value(dense.bias).reshape(-1)
        if dense.quantization_mode == "int4":
            return _Linear(torch_int4.from_layer(dense), bias)
        if dense.quantization_mode == "int8":
            scale = _int8_scale(dense)
            kernel = self._relaid(_column_major(dense._kernel, scale.shape[0]))
            return _Linear(kernel, bias, scale, torch_matmul.int8_kernel_products(kernel))
        # GPT-2's projections all have a bias over their output units.
        if self._column_major_half(dense):
            kernel = self._relaid(_column_major(dense._kernel, bias.shape[0]))
            return self._float_linear(kernel, bias)
        return self._float_linear(self._value(dense.kernel).reshape(-1, bias.shape[0]), bias)

    def _float_linear(self, kernel, bias):
        """A float `_Linear`; for a generation with its product chosen once."""
        if not self.for_generation:
            return _Linear(kernel, bias)
        return _Linear(kernel, bias, product=torch_matmul.kernel_product(kernel, bias))

    def _relaid(self, matrix_and_copied):
        """The matrix of `_column_major` / `_side_by_side`, noting whether it was copied."""
        matrix, copied = matrix_and_copied
        self._copied = self._copied or copied
        return matrix

    def _column_major_half(self, dense):
        """Whether generation re-lays this float kernel column-major (bfloat16 on AMX)."""
        return (
            self.for_generation
            and self.dtype == self.torch.bfloat16
            and not getattr(dense, "lora_enabled", False)
            and keras.backend.standardize_dtype(dense._kernel.dtype) == "bfloat16"
            and torch_matmul.on_amx()
        )

    def _query_key_value(self, layers):
        """The attention's three projections; one, side by side, where generation
        stores their kernels column-major (int8; bfloat16 on AMX)."""
        dense = [layers[f"self_attention/{name}"] for name in ("query", "key", "value")]
        modes = {layer.quantization_mode for layer in dense}
        int8 = self.for_generation and modes == {"int8"}
        if not int8 and not all(self._column_major_half(layer) for layer in dense):
            return tuple(self._matrix(layer) for layer in dense)
        bias = self.torch.cat([self._value(layer.bias).reshape(-1) for layer in dense])
        columns = bias.shape[0] // 3
        kernel = self._relaid(_side_by_side([layer._kernel for layer in dense], columns))
        if not int8:
            return (self._float_linear(kernel, bias),)
        scale = self.torch.cat([_int8_scale(layer) for layer in dense])
        return (_Linear(kernel, bias, scale, torch_matmul.int8_kernel_products(kernel)),)

    def _read(self):
        blocks = []
        for layers in self._layers:
            blocks.append(
                _Block(
                    self._norm(layers["self_attention_layer_norm"]),
                    self._query_key_value(layers),
                    self._matrix(layers["self_attention/attention_output"]),
                    self._norm(layers["feedforward_layer_norm"]),
                    self._matrix(layers["feedforward_intermediate_dense"]),
                    self._matrix(layers["feedforward_output_dense"]),
                )
            )
        return blocks, self._norm(self._final_norm)

    def _lm_head(self):
        """The tied token embedding as the `(hidden, vocabulary)` LM head."""
        embedding = self._token_embedding
        if embedding.quantization_mode == "int4":
            return _Linear(torch_int4.from_layer(embedding, transposed=True), None)
        if embedding.quantization_mode == "int8":
            table = ops.convert_to_tensor(embedding._embeddings).detach()  # (vocab, hidden)
            scale = ops.convert_to_tensor(embedding.embeddings_scale).detach().float()
            products = torch_matmul.int8_kernel_products(table, transposed=True)
            return _Linear(table.t(), None, scale.reshape(-1), products)
        return self._float_linear(self._value(embedding.embeddings).t(), None)

    def _embedding_tables(self):
        """The token table (float or int8, None for int4) and the position table, as stored."""
        embedding = self._token_embedding
        positions = self._value(self._position_embedding.embeddings)
        if embedding.quantization_mode == "int4":
            return None, positions
        if embedding.quantization_mode == "int8":  # `_lm_head`'s table, the scale as stored
            return (self._head.kernel.t(), self._value(embedding.embeddings_scale)), positions
        return self._head.kernel.t(), positions

    # === Computation ===

    def embeddings(self, token_ids, position_ids):
        """`(batch, seq, hidden)` token + position embeddings (generation only).

        What `GPT2Backbone.embed` looks up with the embedding layers, as plain
        torch indexing: the two Keras layer calls took ~320 us of each
        decoding step. int4 tables are looked up by `embedding_lookup`.
        """
        tokens, positions = self._tables
        ids = ops.convert_to_tensor(token_ids)
        if tokens is None:
            rows = embedding_lookup(self._token_embedding, ids)
        elif isinstance(tokens, tuple):  # int8: Keras' `_int8_call`
            table, scale = tokens
            rows = table[ids].to(self.dtype) / scale[ids][..., None]
        else:
            rows = tokens[ids]
        return rows + positions[ops.convert_to_tensor(position_ids)]

    def _layer_norm(self, x, norm):
        # LayerNorm in float32 whatever the compute dtype, as Keras does.
        out = self.torch.nn.functional.layer_norm(
            x.float(), norm.gamma.shape, norm.gamma.float(), norm.beta.float(), norm.epsilon
        )
        return out.to(x.dtype)

    def _quantize(self, rows):
        """Keras' int8 input quantization: per row, absmax, epsilon 1e-7."""
        rows = rows.float()
        # A true division, as Keras' (`127.0 / x` is torch's reciprocal times 127).
        scale = self.torch.div(self._int8_max, rows.abs().amax(dim=-1, keepdim=True).add_(1e-7))
        # |rows * scale| < 127.5, so Keras' clamp to [-127, 127] changes nothing.
        return (rows * scale).round_().to(self.torch.int8), scale

    def _linear(self, rows, linear, quantized=None):
        """`rows @ kernel + bias` for `(rows, in)`, as the Keras layer computes it.

        `quantized` optionally holds `self._quantize(rows)`, shared by the
        projections of the same rows (query, key, value).
        """
        if isinstance(linear.kernel, torch_int4.Int4):
            return torch_int4.int4_matmul(rows, linear.kernel, linear.bias)
        if linear.scale is None:  # float32 on oneDNN or MKL, other dtypes `addmm`
            if linear.product is not None:
                return linear.product(rows)
            return torch_matmul.matmul(rows, linear.kernel, linear.bias)
        # Keras' int8 layers (generation only): int8 inputs, exact int32
        # products, both scales.
        rows_int8, inputs_scale = quantized or self._quantize(rows)
        products = linear.product(rows_int8)  # int32
        denominator = (inputs_scale * linear.scale).to(rows.dtype)
        if linear.bias is None:
            return (products / denominator).to(rows.dtype)
        # bias + products / d, the int32 products read as floats (no float copy made first)
        return self.torch.addcdiv(linear.bias, products, denominator)

    def _attend(self, query, key, value, attention_mask, cache, index, layer):
        """`(batch, seq, heads, head_dim)` attention output, writing the cache."""
        if cache is None:
            return dot_product_attention(
                query, key, value, mask=attention_mask,
                scale=1.0 / self.head_dim**0.5, is_causal=True,
            )
        end = index + query.shape[1]
        cache[:, layer, 0, :, index:end] = key.transpose(1, 2)  # heads before positions
        cache[:, layer, 1, :, index:end] = value.transpose(1, 2)
        # Only the keys up to the last query (lower precisions: its window); the rest are masked.
        end = torch_key_end(end, cache.shape[4], query.dtype)
        keys, values = cache[:, layer, 0, :, :end], cache[:, layer, 1, :, :end]
        # The Keras layers' attention on torch (SDPA over the cache as stored).
        return cached_attention(
            query, keys, values, attention_mask[..., :end], scale=1.0 / self.head_dim**0.5
        )

    def _block(self, x, weights, attention_mask, cache, index, layer):
        """One GPT-2 block on `(batch, seq, hidden)`, as `TransformerDecoder.call`."""
        batch, seq, hidden = x.shape
        rows = self._layer_norm(x, weights.attention_norm).reshape(batch * seq, hidden)
        quantized = self._quantize(rows) if weights.query_key_value[0].scale is not None else None
        projected = [self._linear(rows, linear, quantized) for linear in weights.query_key_value]
        if len(projected) == 1:  # side by side
            heads = projected[0].reshape(batch, seq, 3, self.num_heads, self.head_dim)
            query, key, value = heads.unbind(2)
        else:
            shape = (batch, seq, self.num_heads, self.head_dim)
            query, key, value = (projection.reshape(shape) for projection in projected)
        attended = self._attend(query, key, value, attention_mask, cache, index, layer)
        attended = self._linear(attended.reshape(batch * seq, hidden), weights.attention_output)
        x = x + attended.reshape(x.shape)
        rows = self._layer_norm(x, weights.mlp_norm).reshape(batch * seq, hidden)
        mlp = self.torch.nn.functional.gelu(
            self._linear(rows, weights.intermediate), approximate="tanh"
        )
        return x + self._linear(mlp, weights.output).reshape(x.shape)

    def logits(self, hidden_states):
        """`(batch, seq, vocabulary)` logits of the tied LM head (generation only)."""
        x = ops.convert_to_tensor(hidden_states)
        batch, seq, hidden = x.shape
        return self._linear(x.reshape(batch * seq, hidden), self._head).reshape(batch, seq, -1)

    def __call__(self, hidden_states, attention_mask, cache=None, cache_update_index=None):
        blocks, final_norm = self._weights or self._read()
        x = ops.convert_to_tensor(hidden_states)
        attention_mask = ops.convert_to_tensor(attention_mask, "bool")
        index = None
        if cache is not None:
            cache = ops.convert_to_tensor(cache)
            if not cache.is_contiguous():
                cache = cache.contiguous()  # a broadcast view (beam search) cannot be written
            index = int(cache_update_index)
        if x.shape[0] * x.shape[1] == 0:
            output = self._layer_norm(x, final_norm)
            return output if cache is None else (output, cache)
        for layer, weights in enumerate(blocks):
            x = self._block(x, weights, attention_mask, cache, index, layer)
        output = self._layer_norm(x, final_norm)
        return output if cache is None else (output, cache)
