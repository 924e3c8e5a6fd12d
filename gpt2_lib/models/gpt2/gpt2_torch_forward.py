"""GPT-2's forward pass in plain torch, for eager calls on the torch backend.

Keras on torch runs eagerly, layer by layer: a GPT-2 base forward pays for
~150 layer calls, and `EinsumDense` runs its matmuls as `einsum` with a
separate bias add. This computes the same forward with `torch.addmm` on the
backbone's own variables (so autograd reaches them, and LoRA is included
through each layer's `kernel`), reusing the backbone's position ids, mask and
attention kernel. `GPT2Backbone.call` uses it when `supports_torch_forward`
says so; the functional Keras graph stays the reference it is tested against.
"""

import keras
from keras import ops

from gpt2_lib.layers.attention_kernel import dot_product_attention
from gpt2_lib.layers.attention_mask import causal_attention_mask
from gpt2_lib.layers.position_embedding import position_ids_from_padding_mask


def has_quantized_layers(backbone):
    """True if any layer of `backbone` is quantized (torch paths skip those)."""
    return any(
        getattr(layer, "quantization_mode", None) is not None
        for layer in backbone._flatten_layers()
    )


def supports_torch_forward(backbone, inputs, training=None):
    """Whether `torch_forward` computes exactly what the Keras graph would.

    True on the torch backend for float32 models without quantized layers,
    called on concrete values, when dropout is inactive (inference, or
    `dropout=0`). Mixed precision, dropout and symbolic calls take the Keras
    path.
    """
    if keras.config.backend() != "torch":
        return False
    import torch

    token_ids = inputs["token_ids"]
    if isinstance(token_ids, keras.KerasTensor):
        return False
    if isinstance(token_ids, torch.Tensor) and token_ids.device.type == "meta":
        return False
    if training and backbone.dropout > 0:
        return False
    if backbone.dtype_policy.name != "float32":
        return False
    return not has_quantized_layers(backbone)


def _dense(x, layer):
    """`layer` (an `EinsumDense` over the last axis) as one `addmm`."""
    import torch

    kernel = ops.convert_to_tensor(layer.kernel)
    in_dim = x.shape[-1]
    kernel = kernel.reshape(in_dim, -1)
    out = torch.addmm(ops.convert_to_tensor(layer.bias).reshape(-1), x.reshape(-1, in_dim), kernel)
    return out.reshape(*x.shape[:-1], kernel.shape[1])


def _layer_norm(x, layer):
    import torch

    gamma = ops.convert_to_tensor(layer.gamma)
    beta = ops.convert_to_tensor(layer.beta)
    return torch.nn.functional.layer_norm(x, gamma.shape, gamma, beta, layer.epsilon)


def torch_forward(backbone, token_ids, padding_mask, position_ids=None):
    """The backbone's last hidden states, `(batch, seq, hidden)`, in torch ops.

    Args:
        backbone: a `GPT2Backbone` for which `supports_torch_forward` holds.
        token_ids: `(batch, seq)` integer tensor.
        padding_mask: `(batch, seq)` mask of real tokens.
        position_ids: optional `(batch, seq)` positions; by default counted
            over the padding mask, as the Keras graph does.

    Returns:
        A torch tensor, equal to the Keras graph's output up to float rounding.
    """
    import torch

    functional = torch.nn.functional
    token_ids = ops.convert_to_tensor(token_ids)
    padding_mask = ops.convert_to_tensor(padding_mask)
    if position_ids is None:
        position_ids = position_ids_from_padding_mask(padding_mask)
    token_table = ops.convert_to_tensor(backbone.token_embedding.embeddings)
    position_table = ops.convert_to_tensor(backbone.position_embedding.embeddings)
    x = functional.embedding(token_ids.long(), token_table) + functional.embedding(
        ops.convert_to_tensor(position_ids).long(), position_table
    )  # (batch, seq, hidden)
    attention_mask = causal_attention_mask(padding_mask)  # (batch, 1, seq, seq)
    batch, length = x.shape[:2]
    num_heads = backbone.num_heads
    for block in backbone.transformer_layers:
        attention = block._self_attention_layer
        normed = _layer_norm(x, block._self_attention_layer_norm)
        query, key, value = (
            _dense(normed, dense).reshape(batch, length, num_heads, -1)
            for dense in (attention.query_dense, attention.key_dense, attention.value_dense)
        )  # (batch, seq, heads, head_dim)
        attended = dot_product_attention(
            query, key, value, mask=attention_mask, scale=1.0 / attention.key_dim**0.5, is_causal=True
        )
        x = x + _dense(attended.reshape(batch, length, -1), attention.output_dense)
        hidden = _dense(_layer_norm(x, block._feedforward_layer_norm), block._feedforward_intermediate_dense)
        x = x + _dense(functional.gelu(hidden, approximate="tanh"), block._feedforward_output_dense)
    return _layer_norm(x, backbone.layer_norm)
