"""GPT-2's decoder blocks in plain torch ops, on the backbone's own variables.

Keras on torch runs eagerly, layer by layer: a GPT-2 base forward pays for
~150 `Layer.__call__`s, `EinsumDense` runs its matmuls as `einsum` plus a
separate bias add, and a cached decoding step copies the whole key/value
cache (`slice_update` clones, `stack`). At batch 1 that overhead costs more
than the step's matmuls. `TorchBlocks` computes the same blocks with
`torch.addmm` on the variables found through `backbone.weight_table()`:

* without a cache (`GPT2Backbone.call`): autograd reaches the variables, so
  training and LoRA (through each layer's `kernel`) go through it too;
* with a cache (`GPT2CausalLM` generation: prompt chunks and one-token
  steps): weights are read once per `generate()` call (query, key and value
  kernels concatenated into one matmul) and the new keys/values are written
  into the cache in place.

The model computes the embeddings, positions and attention mask itself and
hands them over, so this module holds only the block math. It is the fast
path; `TransformerDecoder.call` is the reference it is tested against
(outputs and gradients, `tests/backends/test_torch_gpt2.py`).
"""

from typing import NamedTuple

import keras
from keras import ops

from gpt2_lib.backends.attention import dot_product_attention


def is_quantized(model):
    """True if any layer of `model` is quantized."""
    return any(
        getattr(layer, "quantization_mode", None) is not None
        for layer in model._flatten_layers()
    )


def supports(backbone, token_ids=None, training=False):
    """Whether `TorchBlocks(backbone)` computes exactly what the Keras blocks do.

    True on the torch backend, for concrete inputs, when dropout is
    inactive (inference, or `dropout=0`), the weights are stored in the
    compute dtype (float32, bfloat16 or float16: not a mixed policy) and no
    layer is quantized. Everything else takes the Keras path.

    Args:
        backbone: a `GPT2Backbone`.
        token_ids: the input ids, or None when there are no inputs to check.
        training: whether the call trains (dropout).
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
    policy = backbone.dtype_policy
    if policy.variable_dtype != policy.compute_dtype:
        return False
    return not is_quantized(backbone)


class _Norm(NamedTuple):
    gamma: object
    beta: object
    epsilon: float


class _Block(NamedTuple):
    """One block's weights as torch tensors, `(in, out)` matrices."""

    attention_norm: _Norm
    qkv_kernel: object  # (hidden, 3 * hidden)
    qkv_bias: object  # (3 * hidden,)
    output_kernel: object  # (hidden, hidden)
    output_bias: object
    mlp_norm: _Norm
    intermediate_kernel: object  # (hidden, intermediate)
    intermediate_bias: object
    output_mlp_kernel: object  # (intermediate, hidden)
    output_mlp_bias: object


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
        cache: optional `(batch, num_layers, 2, max_length, heads, head_dim)`;
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
        table = backbone.weight_table()
        self._layers = [
            {entry.role: entry.layer for entry in table if entry.block == index}
            for index in range(backbone.num_layers)
        ]
        self._final_norm = next(e.layer for e in table if e.role == "layer_norm")
        self._weights = self._read() if for_generation else None

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
        """A dense layer's kernel as an `(in, out)` matrix (LoRA included), and bias."""
        bias = self._value(dense.bias).reshape(-1)  # over the output axes
        return self._value(dense.kernel).reshape(-1, bias.shape[0]), bias

    def _read(self):
        blocks = []
        for layers in self._layers:
            query, query_bias = self._matrix(layers["self_attention/query"])
            key, key_bias = self._matrix(layers["self_attention/key"])
            value, value_bias = self._matrix(layers["self_attention/value"])
            blocks.append(
                _Block(
                    self._norm(layers["self_attention_layer_norm"]),
                    self.torch.cat([query, key, value], dim=1),
                    self.torch.cat([query_bias, key_bias, value_bias]),
                    *self._matrix(layers["self_attention/attention_output"]),
                    self._norm(layers["feedforward_layer_norm"]),
                    *self._matrix(layers["feedforward_intermediate_dense"]),
                    *self._matrix(layers["feedforward_output_dense"]),
                )
            )
        return blocks, self._norm(self._final_norm)

    # === Computation ===

    def _layer_norm(self, x, norm):
        # LayerNorm in float32 whatever the compute dtype, as Keras does.
        out = self.torch.nn.functional.layer_norm(
            x.float(), norm.gamma.shape, norm.gamma.float(), norm.beta.float(), norm.epsilon
        )
        return out.to(x.dtype)

    def _linear(self, rows, kernel, bias):
        return self.torch.addmm(bias, rows, kernel)

    def _attend(self, query, key, value, attention_mask, cache, index, layer):
        """`(batch, seq, heads, head_dim)` attention output, writing the cache."""
        if cache is None:
            return dot_product_attention(
                query, key, value, mask=attention_mask,
                scale=1.0 / self.head_dim**0.5, is_causal=True,
            )
        seq = query.shape[1]
        cache[:, layer, 0, index : index + seq] = key
        cache[:, layer, 1, index : index + seq] = value
        # Few queries: plain matmuls beat the fused kernel's threading.
        keys = cache[:, layer, 0].permute(0, 2, 3, 1)  # (batch, heads, head_dim, max_length)
        scores = self.torch.matmul(query.transpose(1, 2), keys).float() / self.head_dim**0.5
        scores = scores.masked_fill(~attention_mask, -1e9)  # (batch, heads, seq, max_length)
        probs = self.torch.softmax(scores, dim=-1).to(value.dtype)
        attended = self.torch.matmul(probs, cache[:, layer, 1].transpose(1, 2))
        return attended.transpose(1, 2)  # (batch, seq, heads, head_dim)

    def _block(self, x, weights, attention_mask, cache, index, layer):
        """One GPT-2 block on `(batch, seq, hidden)`, as `TransformerDecoder.call`."""
        batch, seq, hidden = x.shape
        rows = self._layer_norm(x, weights.attention_norm).reshape(batch * seq, hidden)
        qkv = self._linear(rows, weights.qkv_kernel, weights.qkv_bias)
        query, key, value = (
            part.reshape(batch, seq, self.num_heads, self.head_dim)
            for part in qkv.split(hidden, dim=1)
        )
        attended = self._attend(query, key, value, attention_mask, cache, index, layer)
        attended = attended.reshape(batch * seq, hidden)
        x = x + self._linear(attended, weights.output_kernel, weights.output_bias).reshape(x.shape)
        rows = self._layer_norm(x, weights.mlp_norm).reshape(batch * seq, hidden)
        mlp = self._linear(rows, weights.intermediate_kernel, weights.intermediate_bias)
        mlp = self.torch.nn.functional.gelu(mlp, approximate="tanh")
        mlp = self._linear(mlp, weights.output_mlp_kernel, weights.output_mlp_bias)
        return x + mlp.reshape(x.shape)

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
