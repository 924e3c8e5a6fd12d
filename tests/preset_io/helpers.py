"""Shared helpers for the preset tests."""

import os

import keras
import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "keras_hub")
KH_BACKBONE = os.path.join(FIXTURES, "kh_backbone")
KH_SHARDED = os.path.join(FIXTURES, "kh_sharded")
KH_CAUSAL_LM = os.path.join(FIXTURES, "kh_causal_lm")
SAVED_BY_US = os.path.join(FIXTURES, "saved_by_gpt2_lib")


def run_backbone(backbone, token_ids, padding_mask):
    out = backbone({"token_ids": np.asarray(token_ids), "padding_mask": np.asarray(padding_mask)})
    return keras.ops.convert_to_numpy(out)


def assert_close_on_mask(actual, expected, padding_mask, atol=1e-5):
    """Compare only real (unpadded) positions: padded ones are undefined."""
    mask = np.asarray(padding_mask).astype(bool)
    np.testing.assert_allclose(actual[mask], expected[mask], atol=atol, rtol=0)


def tiny_backbone(seed=0, **kwargs):
    import gpt2_lib

    keras.utils.set_random_seed(seed)
    config = dict(vocabulary_size=50, num_layers=2, num_heads=4, hidden_dim=32,
                  intermediate_dim=64, max_sequence_length=16)
    config.update(kwargs)
    return gpt2_lib.models.GPT2Backbone(**config)


def weights_of(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]
