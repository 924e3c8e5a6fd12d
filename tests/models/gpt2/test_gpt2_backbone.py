"""GPT2Backbone: shapes, config, numerics against Transformers, bad input."""

import keras
import numpy as np
import pytest

import gpt2_lib
from gpt2_lib.models import Backbone
from gpt2_lib.models import GPT2Backbone
from gpt2_lib.preset_io.transformers_format import backbone_config_from_transformers
from gpt2_lib.preset_io.transformers_format import load_transformers_weights
from gpt2_lib.utils.builtin_presets import preset_config
from tests.hf_reference import random_transformers_gpt2
from tests.hf_reference import transformers_hidden_states
from tests.hf_reference import transformers_tensors
from tests.models.configs import TINY



def tiny_backbone(**overrides):
    return GPT2Backbone(**{**TINY, "dropout": 0.0, **overrides})


def inputs(batch=2, seq=8, seed=0, vocab=97):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(0, vocab, (batch, seq)).astype("int32"),
        "padding_mask": np.ones((batch, seq), "int32"),
    }


def ported_pair(**hf_kwargs):
    """A random Transformers model and a GPT2Backbone with its weights."""
    hf_model = random_transformers_gpt2(**hf_kwargs)
    config = backbone_config_from_transformers(hf_model.config.to_dict())
    backbone = GPT2Backbone(**{**config, "dropout": 0.0})
    load_transformers_weights(backbone, transformers_tensors(hf_model))
    return hf_model, backbone


def test_issue_example_shapes_and_token_embedding():
    model = tiny_backbone()
    data = {
        "token_ids": np.ones((1, 12), "int32"),
        "padding_mask": np.array([[1] * 10 + [0, 0]]),
    }
    assert tuple(model(data).shape) == (1, 12, 32)
    assert isinstance(model.token_embedding, keras.layers.ReversibleEmbedding)
    assert tuple(model.token_embedding.embeddings.shape) == (97, 32)


def test_gpt2_base_parameter_count():
    model = GPT2Backbone(**preset_config("gpt2_base_en"))
    assert model.count_params() == 124_439_808


def test_matches_transformers_float32():
    hf_model, backbone = ported_pair()
    data = inputs(batch=3, seq=16)
    expected = transformers_hidden_states(hf_model, data["token_ids"])
    actual = keras.ops.convert_to_numpy(backbone(data))
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


def test_matches_transformers_with_right_padding():
    hf_model, backbone = ported_pair()
    data = inputs(batch=3, seq=12, seed=1)
    data["padding_mask"][0, 7:] = 0
    data["padding_mask"][2, 3:] = 0
    expected = transformers_hidden_states(
        hf_model, data["token_ids"], attention_mask=data["padding_mask"]
    )
    actual = keras.ops.convert_to_numpy(backbone(data))
    real = data["padding_mask"].astype(bool)
    np.testing.assert_allclose(actual[real], expected[real], atol=1e-5, rtol=0)
    assert np.isfinite(actual).all()


def test_left_padding_gives_unpadded_outputs():
    """Positions follow the padding mask, so left padding changes nothing."""
    _, backbone = ported_pair()
    data = inputs(batch=1, seq=6, seed=2)
    alone = keras.ops.convert_to_numpy(backbone(data))
    padded = {
        "token_ids": np.concatenate([np.zeros((1, 3), "int32"), data["token_ids"]], 1),
        "padding_mask": np.array([[0, 0, 0] + [1] * 6]),
    }
    out = keras.ops.convert_to_numpy(backbone(padded))
    np.testing.assert_allclose(out[:, 3:], alone, atol=1e-5, rtol=0)
    assert np.isfinite(out).all()


def test_padded_positions_never_change_real_outputs():
    _, backbone = ported_pair()
    data = inputs(batch=2, seq=10, seed=3)
    data["padding_mask"][:, 6:] = 0
    first = keras.ops.convert_to_numpy(backbone(data))
    data["token_ids"][:, 6:] = np.random.default_rng(9).integers(0, 97, (2, 4))
    second = keras.ops.convert_to_numpy(backbone(data))
    np.testing.assert_array_equal(first[:, :6], second[:, :6])


def test_explicit_position_ids_match_transformers():
    hf_model, backbone = ported_pair()
    data = inputs(batch=2, seq=5, seed=4)
    position_ids = np.array([[3, 4, 5, 6, 7], [10, 11, 12, 13, 14]], "int32")
    expected = transformers_hidden_states(
        hf_model, data["token_ids"], position_ids=position_ids
    )
    actual = keras.ops.convert_to_numpy(backbone({**data, "position_ids": position_ids}))
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


def test_cached_forward_equals_full_forward():
    _, backbone = ported_pair()
    data = inputs(batch=2, seq=9, seed=5)
    full = keras.ops.convert_to_numpy(backbone(data))
    cache = backbone.build_cache(2, 9)
    # Prefill 5 tokens, then one token at a time.
    hidden, cache = backbone.call_with_cache(
        data["token_ids"][:, :5], data["padding_mask"], cache, 0
    )
    steps = [keras.ops.convert_to_numpy(hidden)]
    for index in range(5, 9):
        hidden, cache = backbone.call_with_cache(
            data["token_ids"][:, index : index + 1], data["padding_mask"], cache, index
        )
        steps.append(keras.ops.convert_to_numpy(hidden))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=0)


def test_get_config_round_trip_gives_subclass():
    model = tiny_backbone(dtype="bfloat16", name="my_gpt2")
    config = model.get_config()
    assert config["hidden_dim"] == 32 and config["name"] == "my_gpt2"
    restored = GPT2Backbone.from_config(config)
    assert isinstance(restored, GPT2Backbone)
    assert restored.dtype_policy.name == "bfloat16"
    assert restored.transformer_layers[0].compute_dtype == "bfloat16"
    assert restored.get_config() == config
    generic = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert type(generic) is GPT2Backbone


def test_keras_save_and_load_model_round_trip(tmp_path):
    model = tiny_backbone()
    data = inputs()
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is GPT2Backbone
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(data)),
        keras.ops.convert_to_numpy(model(data)),
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "dtype, variable_dtype, compute_dtype",
    [
        ("float32", "float32", "float32"),
        ("bfloat16", "bfloat16", "bfloat16"),
        ("float16", "float16", "float16"),
        ("mixed_bfloat16", "float32", "bfloat16"),
        ("mixed_float16", "float32", "float16"),
    ],
)
def test_dtype_policy_applies_to_weights_and_compute(dtype, variable_dtype, compute_dtype):
    model = tiny_backbone(dtype=dtype)
    block = model.transformer_layers[0]
    kernel = block._self_attention_layer.query_dense.kernel
    assert kernel.dtype == variable_dtype
    assert model.token_embedding.embeddings.dtype == variable_dtype
    out = model(inputs())
    assert keras.backend.standardize_dtype(out.dtype) == compute_dtype
    assert np.isfinite(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))).all()


def test_dtype_policy_object_accepted():
    model = tiny_backbone(dtype=keras.DTypePolicy("mixed_bfloat16"))
    assert model.dtype_policy.name == "mixed_bfloat16"


def test_bfloat16_close_to_float32():
    hf_model, backbone = ported_pair()
    data = inputs(batch=2, seq=8)
    expected = transformers_hidden_states(hf_model, data["token_ids"])
    low = GPT2Backbone(**{**backbone.get_config(), "dtype": "mixed_bfloat16"})
    low.set_weights(backbone.get_weights())
    out = keras.ops.convert_to_numpy(keras.ops.cast(low(data), "float32"))
    # bfloat16 has an 8-bit mantissa: compare relative to the output scale.
    rel = np.linalg.norm(out - expected) / np.linalg.norm(expected)
    assert rel < 3e-2


def test_dropout_active_only_in_training():
    model = tiny_backbone(dropout=0.5)
    data = inputs()
    a = keras.ops.convert_to_numpy(model(data, training=False))
    b = keras.ops.convert_to_numpy(model(data, training=False))
    np.testing.assert_array_equal(a, b)
    c = keras.ops.convert_to_numpy(model(data, training=True))
    assert not np.allclose(a, c)


def test_gradients_flow_to_every_weight():
    model = tiny_backbone()
    model.compile(optimizer="sgd", loss="mse")
    data = inputs(batch=2, seq=4)
    before = [w.copy() for w in model.get_weights()]
    model.fit(data, np.zeros((2, 4, 32)), epochs=1, verbose=0)
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
    assert all(changed)


def test_layout_map_shards_weights():
    mesh = keras.distribution.DeviceMesh((1, 1), ["batch", "model"], devices=["cpu:0"])
    layout_map = GPT2Backbone.get_layout_map(mesh)
    model = tiny_backbone()
    paths = [v.path for v in model.weights]
    query_kernel = next(p for p in paths if "query/kernel" in p)
    assert layout_map[query_kernel].axes == (None, "model", None)
    ffn = next(p for p in paths if "feedforward_intermediate_dense/kernel" in p)
    assert layout_map[ffn].axes == (None, "model")
    with pytest.raises(ValueError, match="not an axis"):
        GPT2Backbone.get_layout_map(mesh, model_parallel_dim_name="tensor")


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"hidden_dim": 30}, "hidden_dim=30, num_heads=4"),
        ({"num_layers": 0}, "num_layers=0"),
        ({"vocabulary_size": -3}, "vocabulary_size=-3"),
        ({"intermediate_dim": 2.5}, "intermediate_dim=2.5"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"dropout": -0.1}, r"dropout=-0\.1"),
        ({"max_sequence_length": 0}, "max_sequence_length=0"),
        ({"dtype": "int8"}, "dtype='int8'"),
    ],
)
def test_bad_config_is_a_clear_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        GPT2Backbone(**{**TINY, **overrides})


def test_sequence_longer_than_max_is_a_clear_error():
    model = tiny_backbone()
    with pytest.raises(ValueError, match=r"length 65 .*max_sequence_length=64"):
        model(inputs(batch=1, seq=65))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"token_ids": np.ones((1, 4), "int32")}, r"Missing: \['padding_mask'\]"),
        (
            {**inputs(1, 4), "segment_ids": np.ones((1, 4))},
            r"unexpected: \['segment_ids'\]",
        ),
        ({"token_ids": np.ones((4,), "int32"), "padding_mask": np.ones((4,))}, "rank 2"),
        (
            {"token_ids": np.ones((1, 4), "int32"), "padding_mask": np.ones((1, 5))},
            "same",
        ),
        ({"token_ids": np.array([[1, 97]]), "padding_mask": np.ones((1, 2))}, "Token id 97"),
        ({"token_ids": np.array([[1, -1]]), "padding_mask": np.ones((1, 2))}, "Token id -1"),
        ({"token_ids": np.ones((1, 2), "float32"), "padding_mask": np.ones((1, 2))}, "integers"),
        (np.ones((1, 4), "int32"), "expects a dict"),
    ],
)
def test_bad_inputs_are_clear_errors(bad, match):
    model = tiny_backbone()
    with pytest.raises(ValueError, match=match):
        model(bad)


def test_backbone_is_exported_and_generic():
    assert issubclass(gpt2_lib.models.GPT2Backbone, Backbone)
    assert issubclass(Backbone, keras.Model)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_cache_form_gives_the_same_states(dtype, monkeypatch):
    """Blocks writing into the whole cache (JAX's choice), a stacked cache
    split into per-block caches and restacked, and a per-block cache
    (`build_cache(per_block=True)`, TensorFlow's generation) give the same
    hidden states and cache, bit for bit, on every backend."""
    from gpt2_lib.models.gpt2 import gpt2_backbone

    keras.utils.set_random_seed(0)
    backbone = GPT2Backbone(**TINY, dtype=dtype)
    data = inputs(batch=2, seq=9, seed=5)
    as_numpy = lambda t: keras.ops.convert_to_numpy(keras.ops.cast(t, "float32"))  # noqa: E731

    def decode(whole, per_block=False):
        monkeypatch.setattr(gpt2_backbone, "updates_whole_cache", lambda: whole)
        cache = backbone.build_cache(2, 9, per_block=per_block)
        hidden, cache = backbone.call_with_cache(data["token_ids"][:, :5], data["padding_mask"], cache, 0)
        steps = [hidden]
        for index in range(5, 9):
            hidden, cache = backbone.call_with_cache(
                data["token_ids"][:, index : index + 1], data["padding_mask"], cache, index
            )
            steps.append(hidden)
        if per_block:
            assert isinstance(cache, tuple) and len(cache) == TINY["num_layers"]
            cache = keras.ops.stack(cache, axis=1)
        return np.concatenate([as_numpy(s) for s in steps], axis=1), as_numpy(cache)

    whole_hidden, whole_cache = decode(True)
    for form in [dict(whole=False), dict(whole=False, per_block=True), dict(whole=True, per_block=True)]:
        hidden, cache = decode(**form)
        np.testing.assert_array_equal(hidden, whole_hidden)
        np.testing.assert_array_equal(cache, whole_cache)
