"""int4 kernels and tied tables as Keras dequantizes them, without its gather.

Keras' int4 `Dense`/`EinsumDense`/`Embedding` in groups dequantize by
gathering each group's scale and zero point for every row of the kernel
(`g_idx`). On XLA:CPU
the gather was fused into the product: a batch-8 JAX `generate()` with a
one-block GPT-2 base took 78 s, 3.2 s with the scales broadcast per group
(`quantization.dequantize_int4`, the same values). `dense.dense` and
`dense.reverse_embedding` use these on JAX and TensorFlow
(`benchmarks/NOTES.md`).
"""

import keras
from keras import ops

from gpt2_lib.utils.quantization import dequantize_int4
from gpt2_lib.utils.quantization import grouped_int4


def supports_int4(layer):
    """True on JAX/TensorFlow for an int4 `Dense`/`EinsumDense` in even groups, weight-only, without LoRA."""
    return (
        keras.config.backend() in ("jax", "tensorflow")
        and getattr(layer, "quantization_mode", None) == "int4"
        and layer.bias is not None
        and not getattr(layer, "lora_enabled", False)
        and getattr(layer, "inputs_quantizer", None) is None
        and grouped_int4(layer)
        and layer._kernel.shape[0] % layer._int4_block_size == 0
    )


def int4_kernel(layer):
    """An int4 kernel `(in, out)` as Keras dequantizes it, without its gather."""
    scale = layer.kernel_scale  # (groups, out)
    values = keras.quantizers.unpack_int4(layer._kernel, scale.shape[1], axis=-1)
    kernel = dequantize_int4(
        ops.cast(values, scale.dtype), scale, layer.kernel_zero,
        layer._int4_block_size, layer.g_idx, axis=0,
    )
    return ops.cast(kernel, layer.compute_dtype)


def int4_table(layer):
    """A tied int4 table `(vocab, hidden)` as Keras dequantizes it, without its gather."""
    values = keras.quantizers.unpack_int4(layer._embeddings, layer.output_dim, axis=-1)
    return dequantize_int4(
        ops.cast(values, layer.compute_dtype), layer.embeddings_scale, layer.embeddings_zero,
        layer._int4_block_size, layer.g_idx, axis=-1,
    )


def supports_int4_table(layer):
    """True on JAX/TensorFlow for a tied int4 table in even groups, weight-only, without LoRA."""
    return (
        keras.config.backend() in ("jax", "tensorflow")
        and getattr(layer, "quantization_mode", None) == "int4"
        and not getattr(layer, "lora_enabled", False)
        and getattr(layer, "inputs_quantizer", None) is None
        and grouped_int4(layer)
        and layer.output_dim % layer._int4_block_size == 0
    )
