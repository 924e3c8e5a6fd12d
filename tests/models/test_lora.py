"""LoRA: enable, train only the adapters, save/load `.lora.h5`, merge, errors."""

import os

import h5py
import keras
import numpy as np
import pytest

from gpt2_lib.models import GPT2Backbone
from gpt2_lib.models import lora
from gpt2_lib.preset_io.transformers_format import backbone_config_from_transformers
from gpt2_lib.preset_io.transformers_format import load_transformers_weights
from tests.hf_reference import random_transformers_gpt2
from tests.hf_reference import transformers_hidden_states
from tests.hf_reference import transformers_tensors
from tests.models.configs import TINY as CONFIG_TINY

TINY = dict(CONFIG_TINY, dropout=0.0)
HEAD_DIM = TINY["hidden_dim"] // TINY["num_heads"]
QUERY_VALUE_PATHS = [
    f"transformer_layer_{i}/self_attention/{name}"
    for i in range(TINY["num_layers"])
    for name in ("query", "value")
]


def tiny_backbone(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return GPT2Backbone(**{**TINY, **overrides})


def inputs(batch=2, seq=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(0, TINY["vocabulary_size"], (batch, seq)).astype("int32"),
        "padding_mask": np.ones((batch, seq), "int32"),
    }


def output(backbone, data=None):
    return keras.ops.convert_to_numpy(backbone(data or inputs()))


def adapter_layers(backbone):
    return lora.adaptable_layers(backbone)


def randomize_adapters(backbone, seed=1):
    """Give every adapter random values (B starts at zero, hiding mistakes)."""
    rng = np.random.default_rng(seed)
    for path in lora.lora_config(backbone)["target_layer_paths"]:
        layer = adapter_layers(backbone)[path]
        for variable in (layer.lora_kernel_a, layer.lora_kernel_b):
            variable.assign(rng.normal(0, 0.2, variable.shape).astype("float32"))


def weights_by_path(backbone):
    return {w.path: keras.ops.convert_to_numpy(w).copy() for w in backbone.weights}


def twin_backbones():
    """Two backbones with identical base weights."""
    first = tiny_backbone(seed=0)
    second = tiny_backbone(seed=1)
    second.set_weights(first.get_weights())
    return first, second


class TinyCausalLM(keras.Model):
    """A causal LM on `backbone`: logits through the tied token embedding."""

    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, inputs):
        return self.backbone.token_embedding(self.backbone(inputs), reverse=True)


# === enable_lora ===


def test_trainable_weights_are_exactly_the_adapters():
    backbone = tiny_backbone()
    before = output(backbone)
    num_weights = len(backbone.weights)
    backbone.enable_lora(rank=4)

    trainable = backbone.trainable_weights
    expected_paths = sorted(
        f"{path}/{name}" for path in QUERY_VALUE_PATHS for name in ("lora_kernel_a", "lora_kernel_b")
    )
    assert sorted(w.path for w in trainable) == expected_paths
    # Keras's EinsumDense LoRA: A is (hidden, heads, rank), B is (rank, head_dim).
    hidden, heads = TINY["hidden_dim"], TINY["num_heads"]
    per_layer = hidden * heads * 4 + 4 * HEAD_DIM
    assert sum(int(np.prod(w.shape)) for w in trainable) == len(QUERY_VALUE_PATHS) * per_layer
    assert len(backbone.weights) == num_weights + len(expected_paths)
    assert all(not w.trainable for w in backbone.weights if "lora_kernel" not in w.path)
    # B starts at zero: the model is unchanged until it trains.
    np.testing.assert_array_equal(output(backbone), before)
    assert lora.lora_enabled(backbone)
    assert lora.lora_config(backbone) == {
        "rank": 4,
        "alpha": 4.0,
        "target_layer_names": ["query", "value"],
        "target_layer_paths": QUERY_VALUE_PATHS,
    }
    if keras.backend.backend() == "torch":
        for w in backbone.weights:
            assert w.value.requires_grad == ("lora_kernel" in w.path), w.path
        grad_params = {n for n, p in backbone.named_parameters() if p.requires_grad}
        assert sorted(n.split(".", 1)[1] for n in grad_params) == expected_paths


def test_target_names_kerashub_aliases_paths_and_dense():
    backbone = tiny_backbone()
    backbone.enable_lora(2, target_layer_names=["query_dense", "value_dense"])
    assert lora.lora_config(backbone)["target_layer_paths"] == QUERY_VALUE_PATHS

    backbone = tiny_backbone()
    backbone.enable_lora(
        2,
        target_layer_names=[
            "transformer_layer_1/self_attention/key",
            "feedforward_intermediate_dense",
        ],
    )
    assert lora.lora_config(backbone)["target_layer_paths"] == [
        "transformer_layer_0/feedforward_intermediate_dense",
        "transformer_layer_1/feedforward_intermediate_dense",
        "transformer_layer_1/self_attention/key",
    ]
    dense = backbone.transformer_layers[0]._feedforward_intermediate_dense
    assert tuple(dense.lora_kernel_a.shape) == (TINY["hidden_dim"], 2)
    assert len(backbone.trainable_weights) == 6


def test_lora_output_matches_transformers_with_updated_weights():
    """Reference: Transformers GPT-2 whose c_attn has W + (alpha/rank) A @ B added."""
    import torch

    hf_model = random_transformers_gpt2()
    config = backbone_config_from_transformers(hf_model.config.to_dict())
    backbone = GPT2Backbone(**{**config, "dropout": 0.0})
    load_transformers_weights(backbone, transformers_tensors(hf_model))
    backbone.enable_lora(rank=4, alpha=8)
    randomize_adapters(backbone)

    hidden = TINY["hidden_dim"]
    with torch.no_grad():
        for i, block in enumerate(hf_model.transformer.h):
            for j, name in ((0, "query"), (2, "value")):
                layer = adapter_layers(backbone)[f"transformer_layer_{i}/self_attention/{name}"]
                a = keras.ops.convert_to_numpy(layer.lora_kernel_a)
                b = keras.ops.convert_to_numpy(layer.lora_kernel_b)
                delta = (8 / 4) * np.einsum("dnr,rh->dnh", a, b).reshape(hidden, hidden)
                block.attn.c_attn.weight[:, j * hidden : (j + 1) * hidden] += torch.from_numpy(delta)
    data = inputs(batch=2, seq=10)
    expected = transformers_hidden_states(hf_model, data["token_ids"])
    np.testing.assert_allclose(output(backbone, data), expected, atol=1e-5, rtol=0)


def test_enable_lora_bad_arguments():
    backbone = tiny_backbone()
    before = weights_by_path(backbone)
    with pytest.raises(ValueError, match="rank"):
        backbone.enable_lora(0)
    with pytest.raises(ValueError, match="rank"):
        backbone.enable_lora(2.5)
    with pytest.raises(ValueError, match="alpha"):
        backbone.enable_lora(4, alpha=-1)
    with pytest.raises(ValueError, match="No layer named 'qurey'.*query"):
        backbone.enable_lora(4, target_layer_names=["qurey"])
    with pytest.raises(ValueError, match="LayerNormalization; LoRA adapts only Dense"):
        backbone.enable_lora(4, target_layer_names=["layer_norm"])
    with pytest.raises(TypeError, match=r"pass \['query'\]"):
        backbone.enable_lora(4, target_layer_names="query")
    assert not lora.lora_enabled(backbone)
    assert len(backbone.trainable_weights) == len(before)
    backbone.enable_lora(4)
    with pytest.raises(ValueError, match="already enabled.*merge_lora_weights"):
        backbone.enable_lora(4)


# === Training ===


def test_fit_trains_only_the_adapters():
    backbone = tiny_backbone()
    backbone.enable_lora(rank=4)
    model = TinyCausalLM(backbone)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=5e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    data = inputs(batch=4, seq=12, seed=3)
    labels = np.roll(data["token_ids"], -1, axis=1)
    base_before = {p: v for p, v in weights_by_path(backbone).items() if "lora_kernel" not in p}
    adapters_before = {p: v for p, v in weights_by_path(backbone).items() if "lora_kernel" in p}

    history = model.fit(data, labels, batch_size=4, epochs=6, verbose=0)

    losses = history.history["loss"]
    assert losses[-1] < losses[0] - 0.1, losses
    after = weights_by_path(backbone)
    for path, value in base_before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)
    for path, value in adapters_before.items():
        assert not np.array_equal(after[path], value), f"{path} did not train"


def test_gpt2_causal_lm_fit_trains_only_the_adapters():
    from gpt2_lib.models.gpt2.gpt2_causal_lm import GPT2CausalLM

    causal_lm = GPT2CausalLM(tiny_backbone(), preprocessor=None)
    causal_lm.backbone.enable_lora(4)
    assert sorted(w.path for w in causal_lm.trainable_weights) == sorted(
        w.path for w in causal_lm.backbone.weights if "lora_kernel" in w.path
    )
    causal_lm.compile(optimizer=keras.optimizers.AdamW(learning_rate=5e-2))
    data = inputs(batch=4, seq=12, seed=4)
    labels = np.roll(data["token_ids"], -1, axis=1)
    before = weights_by_path(causal_lm.backbone)

    history = causal_lm.fit(data, labels, batch_size=4, epochs=5, verbose=0)

    losses = history.history["loss"]
    assert losses[-1] < losses[0] - 0.1, losses
    after = weights_by_path(causal_lm.backbone)
    for path, value in before.items():
        if "lora_kernel" in path:
            assert not np.array_equal(after[path], value), f"{path} did not train"
        else:
            np.testing.assert_array_equal(after[path], value, err_msg=path)


# === Save / load ===


def test_save_load_roundtrip(tmp_path):
    trained, fresh = twin_backbones()
    trained.enable_lora(rank=4, alpha=16)
    randomize_adapters(trained)
    path = str(tmp_path / "adapters.lora.h5")
    trained.save_lora_weights(path)
    assert os.listdir(tmp_path) == ["adapters.lora.h5"]  # no temporary file left

    with h5py.File(path, "r") as f:
        assert int(f.attrs["rank"]) == 4 and float(f.attrs["alpha"]) == 16.0
        layer = adapter_layers(trained)["transformer_layer_1/self_attention/value"]
        np.testing.assert_array_equal(
            f["adapters/transformer_layer_1/self_attention/value/lora_kernel_b"][()],
            keras.ops.convert_to_numpy(layer.lora_kernel_b),
        )

    assert not np.array_equal(output(fresh), output(trained))
    fresh.load_lora_weights(path)
    assert lora.lora_config(fresh) == lora.lora_config(trained)
    np.testing.assert_array_equal(output(fresh), output(trained))
    assert sorted(w.path for w in fresh.trainable_weights) == sorted(
        w.path for w in trained.trainable_weights
    )

    # Loading into a backbone that already has matching LoRA replaces the adapters.
    _, again = twin_backbones()
    again.enable_lora(rank=4, alpha=16)
    again.load_lora_weights(path)
    np.testing.assert_array_equal(output(again), output(trained))


def test_save_lora_weights_errors(tmp_path):
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match="not enabled"):
        backbone.save_lora_weights(str(tmp_path / "a.lora.h5"))
    backbone.enable_lora(4)
    with pytest.raises(ValueError, match=r"must end in '\.lora\.h5'.*/model\.lora\.h5'"):
        backbone.save_lora_weights(str(tmp_path / "model.h5"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        backbone.save_lora_weights(str(tmp_path / "missing_dir" / "a.lora.h5"))
    assert os.listdir(tmp_path) == []


def _mismatch_cases():
    """(description, backbone factory, error pattern) for a rank-4 query/value file."""
    return [
        ("rank", lambda: _enabled(rank=2), "rank=4 but this backbone has rank=2"),
        ("alpha", lambda: _enabled(rank=4, alpha=1), "alpha=4 but this backbone has alpha=1"),
        (
            "targets",
            lambda: _enabled(rank=4, target_layer_names=["query"]),
            "adapts 4 layers but this backbone's targets are 2 layers",
        ),
        ("hidden size", lambda: tiny_backbone(hidden_dim=64), "hidden_dim=32 \\(this backbone: 64\\)"),
        ("more layers", lambda: tiny_backbone(num_layers=3), "num_layers=2 \\(this backbone: 3\\)"),
        ("fewer layers", lambda: tiny_backbone(num_layers=1), "num_layers=2 \\(this backbone: 1\\)"),
    ]


def _enabled(**kwargs):
    backbone = tiny_backbone()
    backbone.enable_lora(**kwargs)
    return backbone


def test_load_mismatches_raise_and_leave_the_model_unchanged(tmp_path):
    source = tiny_backbone()
    source.enable_lora(4)
    randomize_adapters(source)
    path = str(tmp_path / "src.lora.h5")
    source.save_lora_weights(path)

    for description, make, pattern in _mismatch_cases():
        target = make()
        config = lora.lora_config(target)
        before = weights_by_path(target)
        with pytest.raises(ValueError, match=pattern):
            target.load_lora_weights(path)
        assert lora.lora_config(target) == config, description
        after = weights_by_path(target)
        assert sorted(after) == sorted(before), description
        for key, value in before.items():
            np.testing.assert_array_equal(after[key], value, err_msg=description)


def test_load_bad_files(tmp_path):
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match=r"must end in '\.lora\.h5'"):
        backbone.load_lora_weights(str(tmp_path / "x.weights.h5"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        backbone.load_lora_weights(str(tmp_path / "missing.lora.h5"))
    not_lora = tmp_path / "other.lora.h5"
    with h5py.File(not_lora, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="not a gpt2_lib LoRA file"):
        backbone.load_lora_weights(str(not_lora))

    # A file whose last adapter has the wrong shape: nothing is enabled.
    source = tiny_backbone()
    source.enable_lora(4)
    broken = str(tmp_path / "broken.lora.h5")
    source.save_lora_weights(broken)
    with h5py.File(broken, "a") as f:
        key = "adapters/transformer_layer_1/self_attention/value/lora_kernel_b"
        del f[key]
        f[key] = np.zeros((4, HEAD_DIM + 1), "float32")
    with pytest.raises(ValueError, match=r"adapter shapes for 'transformer_layer_1/self_attention/value'"):
        backbone.load_lora_weights(broken)
    assert not lora.lora_enabled(backbone)
    assert backbone.trainable_weights and all(w.trainable for w in backbone.weights)


# === Merge ===


def test_merge_folds_adapters_into_kernels():
    backbone, plain = twin_backbones()
    backbone.enable_lora(rank=4, alpha=6)
    randomize_adapters(backbone)
    with_lora = output(backbone)
    query = adapter_layers(backbone)["transformer_layer_0/self_attention/query"]
    a = keras.ops.convert_to_numpy(query.lora_kernel_a)
    b = keras.ops.convert_to_numpy(query.lora_kernel_b)
    base = keras.ops.convert_to_numpy(query._kernel)

    backbone.merge_lora_weights()

    np.testing.assert_allclose(output(backbone), with_lora, atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(query.kernel),
        base + 1.5 * np.einsum("dnr,rh->dnh", a, b),
        atol=1e-6,
    )
    assert not lora.lora_enabled(backbone) and lora.lora_config(backbone) is None
    assert not any("lora" in w.path for w in backbone.weights)
    assert len(backbone.weights) == len(plain.weights)
    assert all(w.trainable for w in backbone.weights)
    assert "lora_rank" not in query.get_config()
    if keras.backend.backend() == "torch":
        assert not any("lora" in n for n, _ in backbone.named_parameters())
    # An ordinary backbone: its weights load into a plain one, same outputs.
    plain.set_weights(backbone.get_weights())
    np.testing.assert_allclose(output(plain), with_lora, atol=1e-5, rtol=0)
    # And LoRA can be enabled again.
    backbone.enable_lora(2)
    assert len(backbone.trainable_weights) == 8


def test_merge_restores_previous_trainable_flags():
    backbone = tiny_backbone()
    backbone.token_embedding.trainable = False
    backbone.enable_lora(2)
    backbone.merge_lora_weights()
    assert not backbone.token_embedding.embeddings.trainable
    assert backbone.position_embedding.embeddings.trainable
    with pytest.raises(ValueError, match="nothing to merge"):
        backbone.merge_lora_weights()


# === Presets ===


def test_save_to_preset_refusal_message():
    backbone = tiny_backbone()
    lora.check_lora_disabled(backbone)  # no error without LoRA
    backbone.enable_lora(4)
    message = lora.save_to_preset_refusal_message(backbone)
    assert "merge_lora_weights()" in message and "save_lora_weights" in message
    with pytest.raises(ValueError, match=r"LoRA is enabled \(rank=4"):
        lora.check_lora_disabled(backbone)


def test_bfloat16_backbone_keeps_float32_adapters_and_merges_in_place():
    backbone = tiny_backbone(dtype="bfloat16")
    backbone.enable_lora(4)
    randomize_adapters(backbone)
    query = adapter_layers(backbone)["transformer_layer_0/self_attention/query"]
    assert query.lora_kernel_a.dtype == "float32" and query._kernel.dtype == "bfloat16"
    a = keras.ops.convert_to_numpy(query.lora_kernel_a)
    b = keras.ops.convert_to_numpy(query.lora_kernel_b)
    base = keras.ops.convert_to_numpy(keras.ops.cast(query._kernel, "float32"))
    backbone.merge_lora_weights()
    assert query._kernel.dtype == "bfloat16"
    merged = keras.ops.convert_to_numpy(keras.ops.cast(query._kernel, "float32"))
    expected = base + np.einsum("dnr,rh->dnh", a, b)
    # bfloat16 keeps 8 bits of mantissa: relative rounding error <= 2**-8.
    np.testing.assert_allclose(merged, expected, rtol=2**-8, atol=1e-6)


def test_save_to_preset_refuses_lora_and_saves_merged_weights(tmp_path):
    import transformers

    backbone = tiny_backbone()
    backbone.enable_lora(4)
    randomize_adapters(backbone)
    with_lora = output(backbone)
    preset_dir = tmp_path / "preset"
    with pytest.raises(ValueError, match=r"LoRA is enabled.*merge_lora_weights\(\)"):
        backbone.save_to_preset(str(preset_dir))
    assert not preset_dir.exists()

    backbone.merge_lora_weights()
    backbone.save_to_preset(str(preset_dir))
    reloaded = GPT2Backbone.from_preset(str(preset_dir))
    np.testing.assert_allclose(output(reloaded), with_lora, atol=1e-5, rtol=0)

    # Any GPT-2 loader reads the merged model, e.g. Transformers.
    hf_dir = tmp_path / "hf"
    backbone.export_to_transformers(str(hf_dir))
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(str(hf_dir)).eval()
    data = inputs()
    expected = transformers_hidden_states(hf_model, data["token_ids"])
    np.testing.assert_allclose(with_lora, expected, atol=1e-5, rtol=0)
