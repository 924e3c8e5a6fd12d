"""Layout maps from the weight table: every GPT-2 size on every mesh.

Layouts are plain data (mesh axis names per dimension), so these run on
every backend without devices: meshes are built from device names.
"""

import warnings

import keras
import numpy as np
import pytest

from gpt2_lib.models import GPT2Backbone
from gpt2_lib.models.distribution import RULES
from gpt2_lib.models.distribution import WeightTableLayoutMap
from gpt2_lib.models.distribution import resolve_layouts

SIZES = {  # num_heads, hidden_dim, intermediate_dim
    "gpt2_base": (12, 768, 3072),
    "gpt2_medium": (16, 1024, 4096),
    "gpt2_large": (20, 1280, 5120),
    "gpt2_extra_large": (25, 1600, 6400),
}
MESHES = [(1, 1), (1, 2), (1, 8), (2, 4), (4, 2), (8, 1), (1, 3), (2, 8), (1, 16)]


def mesh(shape, names=("batch", "model")):
    count = int(np.prod(shape))
    return keras.distribution.DeviceMesh(shape, list(names), devices=[f"cpu:{i}" for i in range(count)])


def shapes(heads, hidden, intermediate, vocabulary=50257, positions=1024):
    head_dim = hidden // heads
    attention = {"kernel": (hidden, heads, head_dim), "bias": (heads, head_dim)}
    return {
        "token_embedding": {"embeddings": (vocabulary, hidden)},
        "position_embedding": {"embeddings": (positions, hidden)},
        "self_attention/query": attention,
        "self_attention/key": attention,
        "self_attention/value": attention,
        "self_attention/attention_output": {"kernel": (heads, head_dim, hidden), "bias": (hidden,)},
        "feedforward_intermediate_dense": {"kernel": (hidden, intermediate), "bias": (intermediate,)},
        "feedforward_output_dense": {"kernel": (intermediate, hidden), "bias": (hidden,)},
    }


def axis_count(entry, device_mesh):
    names = entry if isinstance(entry, tuple) else (entry,)
    sizes = dict(zip(device_mesh.axis_names, device_mesh.shape))
    return int(np.prod([sizes[n] for n in names if n is not None]))


class FakeDistribution:
    """What `resolve_layouts` reads of a `ModelParallel`: its layout map."""

    def __init__(self, layout_map):
        self._layout_map = layout_map


def tiny(**kwargs):
    config = dict(vocabulary_size=51, num_layers=2, num_heads=12, hidden_dim=48,
                  intermediate_dim=96, max_sequence_length=16)
    return GPT2Backbone(**{**config, **kwargs})


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("mesh_shape", MESHES, ids=str)
def test_every_size_on_every_mesh_divides(size, mesh_shape):
    device_mesh = mesh(mesh_shape)
    layout_map = WeightTableLayoutMap(device_mesh)
    model_size = mesh_shape[1]
    heads = SIZES[size][0]
    for role, variables in shapes(*SIZES[size]).items():
        for name, shape in variables.items():
            axes, fallback = layout_map.axes_for(role, name, shape)
            assert len(axes) == len(shape)
            for entry, dim in zip(axes, shape):
                assert dim % axis_count(entry, device_mesh) == 0, (role, name, shape, axes)
            dims, candidates, _ = RULES[role][name]
            split = [dims[i] for i, a in enumerate(axes) if "model" in (a if isinstance(a, tuple) else (a,))]
            # The first candidate dimension the model axis divides, else replicated.
            expected = [n for n in candidates if shape[dims.index(n)] % model_size == 0][:1]
            assert split == expected, (role, name, shape, axes)
            if "heads" in dims and name == "kernel":
                assert (fallback is None) == (heads % model_size == 0), (role, fallback)
                if fallback is not None:
                    assert fallback == ("heads", heads, expected[0] if expected else None)


def test_data_axis_shards_the_other_dimension():
    layout_map = GPT2Backbone.get_layout_map(mesh((2, 4)))
    assert layout_map.data_parallel_dim_name == "batch"
    assert layout_map["transformer_layer_0/self_attention/query/kernel"].axes == ("batch", "model", None)
    assert layout_map["transformer_layer_5/self_attention/attention_output/kernel"].axes == ("model", None, "batch")
    assert layout_map["transformer_layer_1/feedforward_intermediate_dense/kernel"].axes == ("batch", "model")
    assert layout_map["transformer_layer_1/feedforward_output_dense/kernel"].axes == ("model", "batch")
    assert layout_map["token_embedding/embeddings"].axes == (None, "model")
    assert layout_map["transformer_layer_1/feedforward_layer_norm/gamma"] is None  # replicated
    # Other axis names; a mesh without the batch axis shards over the model axis only.
    named = GPT2Backbone.get_layout_map(mesh((2, 4), ("data", "tensor")), "tensor", "data")
    assert named["transformer_layer_0/self_attention/value/kernel"].axes == ("data", "tensor", None)
    alone = GPT2Backbone.get_layout_map(mesh((8,), ("model",)))
    assert alone["transformer_layer_0/self_attention/value/kernel"].axes == (None, "model", None)


def test_indivisible_heads_fall_back_with_one_warning_per_layer_group():
    backbone = tiny()  # 12 heads of 4
    layout_map = GPT2Backbone.get_layout_map(mesh((1, 8)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolved = resolve_layouts(backbone, FakeDistribution(layout_map))
    messages = [str(w.message) for w in caught]
    # head_dim 4 does not split 8 ways either: hidden (48) does.
    assert messages == [
        "GPT2Backbone layout: heads=12 does not split over the 8 devices of mesh axis "
        "'model'; transformer_layer_{0..1}/self_attention/{query,key,value,attention_output} "
        "are sharded along hidden instead."
    ]
    layouts = {v.path: layout.axes for v, layout in resolved}
    assert layouts["transformer_layer_0/self_attention/query/kernel"] == ("model", None, None)
    assert layouts["transformer_layer_0/self_attention/query/bias"] == (None, None)
    assert layouts["transformer_layer_1/self_attention/attention_output/kernel"] == (None, None, "model")
    assert layouts["transformer_layer_1/feedforward_intermediate_dense/kernel"] == (None, "model")
    # What the map returns for this backbone's paths is now the resolved layout.
    assert layout_map["transformer_layer_0/self_attention/query/kernel"].axes == ("model", None, None)
    # 12 heads on 4 devices split by heads, silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolved = resolve_layouts(backbone, FakeDistribution(GPT2Backbone.get_layout_map(mesh((2, 4)))))
    layouts = {v.path: layout.axes for v, layout in resolved}
    assert layouts["transformer_layer_0/self_attention/key/kernel"] == ("batch", "model", None)


def test_lora_and_quantized_variables_follow_their_kernels():
    backbone = tiny(num_heads=4)
    layout_map = GPT2Backbone.get_layout_map(mesh((2, 4)))
    resolve_layouts(backbone, FakeDistribution(layout_map))
    # Adapters created later get their layouts from the map at creation.
    assert layout_map["transformer_layer_0/self_attention/query/lora_kernel_a"].axes == ("batch", "model", None)
    assert layout_map["transformer_layer_0/self_attention/query/lora_kernel_b"].axes == (None, None)
    assert layout_map["transformer_layer_1/feedforward_intermediate_dense/lora_kernel_b"].axes == (None, "model")
    backbone.enable_lora(2, target_layer_names=["query", "feedforward_intermediate_dense"])
    layouts = {v.path: layout.axes for v, layout in resolve_layouts(backbone, FakeDistribution(layout_map))}
    assert layouts["transformer_layer_0/self_attention/query/lora_kernel_a"] == ("batch", "model", None)
    assert layouts["transformer_layer_0/feedforward_intermediate_dense/lora_kernel_a"] == ("batch", None)
    assert layouts["transformer_layer_0/feedforward_intermediate_dense/lora_kernel_b"] == (None, "model")

    quantized = tiny(num_heads=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers without weights cannot be quantized
        quantized.quantize("int8")
    layouts = {v.path: layout.axes for v, layout in resolve_layouts(quantized, FakeDistribution(layout_map))}
    assert layouts["transformer_layer_0/feedforward_intermediate_dense/kernel"] == ("batch", "model")
    assert layouts["transformer_layer_0/feedforward_intermediate_dense/kernel_scale"] == ("model",)
    assert layouts["transformer_layer_0/feedforward_output_dense/kernel_scale"] == ("batch",)
    scale = layouts["transformer_layer_0/self_attention/query/kernel_scale"]
    assert "model" in scale and len(scale) == len(
        next(v for v in quantized.weights if v.path == "transformer_layer_0/self_attention/query/kernel_scale").shape
    )


def test_a_users_layout_map_is_kept_where_it_divides():
    device_mesh = mesh((1, 8))
    layout_map = keras.distribution.LayoutMap(device_mesh)
    layout_map[".*query/kernel"] = (None, "model", None)  # 12 heads: does not divide
    layout_map[".*feedforward_intermediate_dense/kernel"] = (None, "model")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolved = resolve_layouts(tiny(), FakeDistribution(layout_map))
    layouts = {v.path: layout.axes for v, layout in resolved}
    assert layouts["transformer_layer_0/self_attention/query/kernel"] == (None, None, None)
    assert layouts["transformer_layer_0/feedforward_intermediate_dense/kernel"] == (None, "model")
    assert len(caught) == 2 and "transformer_layer_0/self_attention/query/kernel" in str(caught[0].message)


def test_unknown_model_axis_is_an_error():
    with pytest.raises(ValueError, match="'tensor' is not an axis of the device mesh"):
        GPT2Backbone.get_layout_map(mesh((2, 4)), model_parallel_dim_name="tensor")
