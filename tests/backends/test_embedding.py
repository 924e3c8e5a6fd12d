"""`backends.embedding`: int4 rows unpacked one by one equal Keras' lookup."""

import keras
import numpy as np
import pytest

from gpt2_lib.backends import embedding as embedding_module
from gpt2_lib.backends.embedding import embedding_lookup
from gpt2_lib.utils import quantization

IDS = np.array([[0, 7, 299], [299, 5, 0]], "int32")


def _int4_table(hidden, block_size, dtype="float32"):
    keras.utils.set_random_seed(0)
    layer = keras.layers.ReversibleEmbedding(300, hidden, dtype=dtype)
    layer.build((None, None))
    layer.quantize("int4", config=keras.quantizers.Int4QuantizationConfig(block_size=block_size))
    return layer


@pytest.mark.parametrize(
    "hidden, block_size",
    [
        (256, 128),  # Keras' default groups, even
        (48, 8),  # six groups
        (200, 128),  # a partial last group: Keras' gather
        (51, -1),  # per row, an odd packed width
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_int4_lookup_equals_the_layer_unpacking_only_the_rows_it_needs(
    hidden, block_size, dtype, monkeypatch
):
    layer = _int4_table(hidden, block_size, dtype)
    unpacked_shapes = []
    unpack = keras.quantizers.unpack_int4

    def spy(packed, *args, **kwargs):
        unpacked_shapes.append(tuple(packed.shape))
        return unpack(packed, *args, **kwargs)

    monkeypatch.setattr(keras.quantizers, "unpack_int4", spy)
    ours = embedding_lookup(layer, IDS)
    assert unpacked_shapes == [(IDS.size, (hidden + 1) // 2)]
    theirs = layer(IDS)
    assert keras.backend.standardize_dtype(ours.dtype) == keras.backend.standardize_dtype(
        theirs.dtype
    )
    assert tuple(ours.shape) == IDS.shape + (hidden,)
    # The same operations on the same values: equal bit for bit.
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(keras.ops.cast(ours, "float32")),
        keras.ops.convert_to_numpy(keras.ops.cast(theirs, "float32")),
    )


def test_float_int8_and_lora_tables_are_the_layers_own_call():
    keras.utils.set_random_seed(0)
    for mode in (None, "int8", "lora"):
        layer = keras.layers.ReversibleEmbedding(300, 32)
        layer.build((None, None))
        if mode == "int8":
            layer.quantize("int8")
        elif mode == "lora":
            layer.quantize("int4")
            layer.enable_lora(2)
            layer.lora_embeddings_b.assign(np.ones(layer.lora_embeddings_b.shape, "float32"))
        assert not embedding_module.supports_int4_lookup(layer)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(embedding_lookup(layer, IDS)),
            keras.ops.convert_to_numpy(layer(IDS)),
        )


@pytest.mark.parametrize("axis", [0, -1])
def test_dequantize_int4_broadcast_equals_keras_gather(axis):
    """The broadcast in even groups and Keras' per-position gather agree exactly."""
    from keras.src.quantizers.quantizers import dequantize_with_sz_map

    rng = np.random.default_rng(0)
    values = rng.integers(-8, 8, size=(24, 40)).astype("float32")
    size = values.shape[axis]
    groups = size // 8
    g_idx = np.arange(size) // 8
    shape = (groups, 40) if axis == 0 else (24, groups)
    scale = rng.uniform(0.01, 1, size=shape).astype("float32")
    zero = rng.integers(-8, 8, size=shape).astype("int8")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(quantization.dequantize_int4(values, scale, zero, 8, g_idx, axis)),
        keras.ops.convert_to_numpy(
            dequantize_with_sz_map(values, scale, keras.ops.cast(zero, "float32"), g_idx, axis)
        ),
    )


def test_the_backbone_embeds_int4_ids_row_by_row(monkeypatch):
    """`GPT2Backbone.embed` (every cached and torch forward pass) takes this
    lookup: equal to the functional graph's embeddings, table never unpacked."""
    from tests.preset_io.helpers import tiny_backbone

    backbone = tiny_backbone()
    backbone.quantize("int4")
    ids = np.array([[1, 2, 49]], "int32")
    mask = np.ones_like(ids)
    unpacked_rows = []
    unpack = keras.quantizers.unpack_int4

    def spy(packed, *args, **kwargs):
        unpacked_rows.append(packed.shape[0])
        return unpack(packed, *args, **kwargs)

    monkeypatch.setattr(keras.quantizers, "unpack_int4", spy)
    hidden, _ = backbone.embed(ids, mask)
    assert unpacked_rows == [ids.size]
    table = backbone.token_embedding
    expected = table(ids) + backbone.position_embedding(mask, np.arange(3)[None])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(hidden), keras.ops.convert_to_numpy(expected))
