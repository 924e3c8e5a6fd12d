"""GPT2CausalLM: numerics and greedy generation against Transformers, batching,
left padding, samplers, stop tokens, fit, score, bfloat16, presets, errors."""

import functools
import string

import keras
import numpy as np
import pytest

from gpt2_lib import samplers
from gpt2_lib.backends import attention as attention_kernel
from gpt2_lib.models import generation_inputs
from gpt2_lib.models.causal_lm import CausalLM
from gpt2_lib.models.gpt2.gpt2_backbone import GPT2Backbone
from gpt2_lib.models.gpt2.gpt2_causal_lm import GPT2CausalLM
from gpt2_lib.models.gpt2.gpt2_causal_lm_preprocessor import GPT2CausalLMPreprocessor
from gpt2_lib.models.gpt2.gpt2_tokenizer import GPT2Tokenizer
from gpt2_lib.models.task import Task
from gpt2_lib.preset_io.transformers_format import backbone_config_from_transformers
from gpt2_lib.preset_io.transformers_format import load_transformers_weights
from tests.hf_reference import random_transformers_gpt2
from tests.hf_reference import transformers_tensors

LENGTH = 16  # every generation test uses (batch, 16) inputs: one compilation each


def lively_transformers_gpt2():
    """A random Transformers GPT-2 whose greedy outputs depend on the prompt.

    With GPT-2's 0.02 initialization a tiny random model repeats one token;
    larger weights make every step's argmax depend on the context.
    """
    import torch

    model = random_transformers_gpt2()
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.4)
    return model


def port(hf_model, **overrides):
    config = backbone_config_from_transformers(hf_model.config.to_dict())
    backbone = GPT2Backbone(**{**config, "dropout": 0.0, **overrides})
    load_transformers_weights(backbone, transformers_tensors(hf_model))
    return backbone


@functools.lru_cache(maxsize=None)
def lively_pair():
    hf_model = lively_transformers_gpt2()
    return hf_model, port(hf_model)


def greedy_lm(**kwargs):
    hf_model, backbone = lively_pair()
    lm = GPT2CausalLM(backbone, **kwargs)
    lm.compile(sampler="greedy")
    return hf_model, lm


def hf_greedy(hf_model, prompt, new_tokens):
    """Transformers' greedy continuation of one unpadded prompt."""
    import torch

    ids = torch.tensor([prompt])
    out = hf_model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        num_beams=1,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=0,
        eos_token_id=None,
    )
    return out[0].tolist()


P1 = [5, 17, 33, 2, 8]
P2 = [40, 41, 42]
LEFT_PAD = 4


def mixed_batch():
    """Row 0: P1, row 1: P2 (right padded), row 2: P1 left padded by 4."""
    token_ids = np.zeros((3, LENGTH), "int32")
    padding_mask = np.zeros((3, LENGTH), bool)
    token_ids[0, : len(P1)] = P1
    padding_mask[0, : len(P1)] = True
    token_ids[1, : len(P2)] = P2
    padding_mask[1, : len(P2)] = True
    token_ids[2, :LEFT_PAD] = 77  # garbage under the left padding
    token_ids[2, LEFT_PAD : LEFT_PAD + len(P1)] = P1
    padding_mask[2, LEFT_PAD : LEFT_PAD + len(P1)] = True
    return {"token_ids": token_ids, "padding_mask": padding_mask}


# Numerics -------------------------------------------------------------------


def test_logits_match_transformers():
    import torch

    hf_model = random_transformers_gpt2()
    lm = GPT2CausalLM(port(hf_model))
    ids = np.random.default_rng(0).integers(0, 97, (2, 12)).astype("int32")
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    logits = keras.ops.convert_to_numpy(lm({"token_ids": ids, "padding_mask": mask}))
    with torch.no_grad():
        expected = hf_model(
            torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)
        ).logits.numpy()
    assert logits.shape == (2, 12, 97)
    real = mask.astype(bool)
    np.testing.assert_allclose(logits[real], expected[real], atol=1e-5, rtol=0)


def test_score_matches_transformers_log_softmax():
    import torch

    hf_model = random_transformers_gpt2()
    lm = GPT2CausalLM(port(hf_model))
    ids = np.random.default_rng(1).integers(0, 97, (2, 10)).astype("int32")
    mask = np.ones_like(ids, bool)
    mask[1, 7:] = False
    with torch.no_grad():
        logits = hf_model(torch.tensor(ids, dtype=torch.long)).logits
        log_probs = torch.log_softmax(logits, -1).numpy()
    expected = np.take_along_axis(log_probs[:, :-1], ids[:, 1:, None], -1)[..., 0]
    expected = np.pad(expected, [(0, 0), (0, 1)]) * (mask & np.roll(mask, -1, 1))
    expected[:, -1] = 0
    ll = keras.ops.convert_to_numpy(lm.score(ids, mask, scoring_mode="log_likelihood"))
    np.testing.assert_allclose(ll, expected, atol=1e-5)
    loss = keras.ops.convert_to_numpy(lm.score(ids, mask, scoring_mode="loss"))
    np.testing.assert_allclose(loss, -expected, atol=1e-5)
    score_logits = keras.ops.convert_to_numpy(lm.score(ids))
    np.testing.assert_allclose(score_logits, logits.numpy(), atol=1e-5)
    seen = []
    lm.score(ids, layer_intercept_fn=lambda x, i: seen.append(i) or x)
    assert seen == [-1, 0, 1]


# Greedy generation ----------------------------------------------------------


def test_greedy_batch_matches_transformers_per_prompt_and_left_padding():
    hf_model, lm = greedy_lm()
    out = lm.generate(mixed_batch(), stop_token_ids=None)
    ids, mask = out["token_ids"], out["padding_mask"]
    # Each row of a mixed-length batch equals Transformers on that prompt alone.
    assert ids[0].tolist() == hf_greedy(hf_model, P1, LENGTH - len(P1))
    assert ids[1].tolist() == hf_greedy(hf_model, P2, LENGTH - len(P2))
    # Left padding changes nothing: same new tokens as the unpadded prompt.
    new = LENGTH - LEFT_PAD - len(P1)
    assert ids[2, LEFT_PAD:].tolist() == ids[0, : len(P1) + new].tolist()
    assert ids[2, :LEFT_PAD].tolist() == [77] * LEFT_PAD  # padding kept as is
    assert mask[:2].all() and not mask[2, :LEFT_PAD].any() and mask[2, LEFT_PAD:].all()
    # The outputs are not degenerate (the test would be weak otherwise).
    assert len(set(ids[0, len(P1) :].tolist())) > 3
    # A prompt alone (batch of one) gives the same tokens as in the batch.
    alone = lm.generate(
        {"token_ids": ids[1:2, : len(P2)], "padding_mask": np.ones((1, len(P2)))},
        max_length=LENGTH,
        stop_token_ids=None,
    )
    assert alone["token_ids"][0].tolist() == ids[1].tolist()
    # The compiled function is built once and reused.
    function = lm.generate_function
    assert function is not None
    lm.generate(mixed_batch(), stop_token_ids=None)
    assert lm.generate_function is function
    lm.compile(sampler="greedy")
    assert lm.generate_function is None


def test_greedy_over_cache_windows_matches_transformers(monkeypatch):
    """Cache windows of 4 over the 16 slots (`windowed_attention`: on XLA one
    branch per window, on torch the exact keys): greedy still equals
    Transformers per prompt, left padding included. On torch both the fast
    path and the Keras layers."""
    monkeypatch.setattr(attention_kernel, "CACHE_WINDOW", 4)
    hf_model, lm = greedy_lm()
    paths = [lm.generation_blocks]
    if keras.config.backend() == "torch":
        paths.append(lambda: None)  # the Keras layers
    for blocks in paths:
        monkeypatch.setattr(lm, "generation_blocks", blocks)
        lm.generate_function = None
        ids = lm.generate(mixed_batch(), stop_token_ids=None)["token_ids"]
        assert ids[0].tolist() == hf_greedy(hf_model, P1, LENGTH - len(P1))
        assert ids[1].tolist() == hf_greedy(hf_model, P2, LENGTH - len(P2))
        new = LENGTH - LEFT_PAD - len(P1)
        assert ids[2, LEFT_PAD:].tolist() == ids[0, : len(P1) + new].tolist()


def test_max_lengths_within_a_bucket_share_one_compiled_generation(monkeypatch):
    """JAX/TensorFlow compile generation per input shape: `generate()` pads
    the inputs to a multiple of `LENGTH_BUCKET` and stops at the length
    asked for, so `max_length` 10, 13 and 16 (buckets of 8, cache windows of
    4) trace once. Greedy equals Transformers per prompt; beam search equals
    an unpadded call; torch and eager runs are not padded."""
    monkeypatch.setattr(generation_inputs, "LENGTH_BUCKET", 8)
    monkeypatch.setattr(attention_kernel, "CACHE_WINDOW", 4)
    hf_model, lm = greedy_lm()
    traces = []
    step = lm.generate_step
    monkeypatch.setattr(lm, "generate_step", lambda *args, **kwargs: traces.append(1) or step(*args, **kwargs))
    compiled = keras.config.backend() != "torch"
    lengths = (10, 13, 16)
    for length in lengths:
        batch = {key: value[:, :length] for key, value in mixed_batch().items()}
        out = lm.generate(batch, stop_token_ids=None)
        assert out["token_ids"].shape == out["padding_mask"].shape == (3, length)
        assert out["token_ids"][0].tolist() == hf_greedy(hf_model, P1, length - len(P1))
        assert out["token_ids"][1].tolist() == hf_greedy(hf_model, P2, length - len(P2))
        assert out["padding_mask"][:2].all() and not out["padding_mask"][2, :LEFT_PAD].any()
        padded = lm._padded_to_bucket(batch)
        assert (padded is batch) == (not compiled)
        # The loop stops at `end`: the padded slots are left as they were.
        raw = lm.make_generate_function()(padded, stop_token_ids=None)["token_ids"]
        raw = keras.ops.convert_to_numpy(raw)
        assert raw.shape == (3, 16 if compiled else length)
        assert (raw[:, length:] == 0).all()
    # torch runs `generate_step` per call (two per length here).
    assert len(traces) == (1 if compiled else 2 * len(lengths))

    # Beam search stops at the same place; a stop token still ends early.
    lm.compile(sampler=samplers.BeamSampler(num_beams=2))
    batch = {key: value[:, :10] for key, value in mixed_batch().items()}
    bucketed = lm.generate(batch, stop_token_ids=[int(hf_greedy(hf_model, P1, 3)[-1])])
    monkeypatch.setattr(lm, "_padded_to_bucket", lambda batch: batch)
    lm.generate_function = None
    unpadded = lm.generate(batch, stop_token_ids=[int(hf_greedy(hf_model, P1, 3)[-1])])
    for key in ("token_ids", "padding_mask"):
        np.testing.assert_array_equal(bucketed[key], unpadded[key])


@pytest.mark.parametrize("mode", ["bfloat16", "int8", "int4"])
def test_cache_windows_compose_with_bfloat16_and_quantized_weights(mode, monkeypatch):
    """Greedy tokens with cache windows of 4 equal those with one window, in
    bfloat16 and with int8 / int4 weights."""
    hf_model, _ = lively_pair()
    lm = GPT2CausalLM(port(hf_model, dtype="bfloat16" if mode == "bfloat16" else "float32"))
    if mode != "bfloat16":
        lm.quantize(mode)
    lm.compile(sampler="greedy")
    outputs = []
    for window in (4, 10**6):
        monkeypatch.setattr(attention_kernel, "CACHE_WINDOW", window)
        lm.generate_function = None
        outputs.append(lm.generate(mixed_batch(), stop_token_ids=None)["token_ids"])
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert len(set(outputs[0][0, len(P1) :].tolist())) > 3


def test_stop_token_ends_generation_and_masks_the_rest():
    hf_model, lm = greedy_lm()
    reference = hf_greedy(hf_model, P1, LENGTH - len(P1))
    stop = reference[len(P1) + 2]
    first_stop = reference.index(stop, len(P1))
    batch = mixed_batch()
    out = lm.generate({k: v[:1] for k, v in batch.items()}, stop_token_ids=[stop])
    ids, mask = out["token_ids"][0], out["padding_mask"][0]
    assert ids[: first_stop + 1].tolist() == reference[: first_stop + 1]
    assert mask[: first_stop + 1].all() and not mask[first_stop + 1 :].any()
    # Generation stopped: the positions after it were never written.
    assert (ids[first_stop + 1 :] == 0).all()
    stripped = lm.generate(
        {k: v[:1] for k, v in batch.items()}, stop_token_ids=[stop], strip_prompt=True
    )
    new = first_stop + 1 - len(P1)
    assert stripped["token_ids"][0, :new].tolist() == reference[len(P1) : first_stop + 1]
    assert stripped["padding_mask"][0].sum() == new


@pytest.mark.parametrize(
    "sampler",
    [samplers.TopKSampler(k=1, seed=0), samplers.BeamSampler(num_beams=1)],
    ids=["top_k_1", "beam_1"],
)
def test_degenerate_samplers_equal_greedy(sampler):
    hf_model, lm = greedy_lm()
    lm.compile(sampler=sampler)
    ids = lm.generate(mixed_batch(), stop_token_ids=None)["token_ids"]
    assert ids[0].tolist() == hf_greedy(hf_model, P1, LENGTH - len(P1))
    assert ids[1].tolist() == hf_greedy(hf_model, P2, LENGTH - len(P2))


def test_beam_search_matches_transformers():
    import torch

    hf_model, lm = greedy_lm()
    lm.compile(sampler=samplers.BeamSampler(num_beams=3))
    ids = lm.generate(mixed_batch(), stop_token_ids=None)["token_ids"]

    def hf_beam(prompt, new_tokens):
        prompt = torch.tensor([prompt])
        return hf_model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            num_beams=3,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            length_penalty=0.0,
            early_stopping=True,
            pad_token_id=0,
            eos_token_id=None,
        )[0].tolist()

    assert ids[0].tolist() == hf_beam(P1, LENGTH - len(P1))
    assert ids[1].tolist() == hf_beam(P2, LENGTH - len(P2))
    assert ids[2, LEFT_PAD:].tolist() == hf_beam(P1, LENGTH - LEFT_PAD - len(P1))
    # One prompt: its beams share one repeated row of the cache.
    one = {key: value[:1] for key, value in mixed_batch().items()}
    single = lm.generate(one, stop_token_ids=None)["token_ids"]
    assert single[0].tolist() == hf_beam(P1, LENGTH - len(P1))


def test_random_samplers_reproduce_with_a_seed():
    _, lm = greedy_lm()
    batch = mixed_batch()
    lm.compile(sampler=samplers.TopPSampler(p=0.9, seed=11, temperature=2.0))
    first = lm.generate(batch, stop_token_ids=None)["token_ids"]
    second = lm.generate(batch, stop_token_ids=None)["token_ids"]
    lm.compile(sampler=samplers.TopPSampler(p=0.9, seed=11, temperature=2.0))
    again = lm.generate(batch, stop_token_ids=None)["token_ids"]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)  # the seed generator advanced
    # Prompts are kept.
    np.testing.assert_array_equal(first[batch["padding_mask"]], batch["token_ids"][batch["padding_mask"]])


# Strings, preprocessor, fit ---------------------------------------------------


CHARS = list(string.ascii_lowercase) + ["Ġ" + c for c in string.ascii_lowercase]
VOCAB = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(CHARS + ["Ġ", "."])}}
TEXTS = ["the cat sat on the mat.", "a dog ran.", "the sun is hot.", "we like tea."]


def string_lm(sequence_length=LENGTH, dtype=None, **backbone_overrides):
    tokenizer = GPT2Tokenizer(vocabulary=dict(VOCAB), merges=[])
    preprocessor = GPT2CausalLMPreprocessor(tokenizer, sequence_length=sequence_length)
    backbone = GPT2Backbone(
        **{
            "vocabulary_size": len(VOCAB),
            "num_layers": 2,
            "num_heads": 2,
            "hidden_dim": 32,
            "intermediate_dim": 64,
            "max_sequence_length": 64,
            "dropout": 0.0,
            "dtype": dtype,
            **backbone_overrides,
        }
    )
    return GPT2CausalLM(backbone, preprocessor=preprocessor)


def test_fit_on_strings_lowers_loss_and_generates_strings():
    lm = string_lm()
    lm.compile(optimizer=keras.optimizers.Adam(3e-3), sampler="greedy")
    before = lm.evaluate(TEXTS, batch_size=2, verbose=0)[0]
    history = lm.fit(TEXTS * 4, batch_size=4, epochs=3, verbose=0)
    import tensorflow as tf  # tf.data input works on every backend

    lm.fit(tf.data.Dataset.from_tensor_slices(TEXTS).batch(4), epochs=1, verbose=0)
    after = lm.evaluate(TEXTS, batch_size=2, verbose=0)[0]
    assert after < before * 0.8
    assert history.history["loss"][-1] < history.history["loss"][0]
    text = lm.generate("the cat", max_length=LENGTH)
    assert isinstance(text, str) and text.startswith("the cat")
    texts = lm.generate(["the cat", "we like"], max_length=LENGTH)
    assert isinstance(texts, list) and len(texts) == 2
    assert texts[0] == text  # a prompt gives the same text alone or in a batch
    assert lm.generate(["the cat"], max_length=LENGTH, strip_prompt=True)[0] == text[len("the cat") :]


def test_fit_on_token_dicts_and_default_compile():
    _, backbone = lively_pair()
    lm = GPT2CausalLM(GPT2Backbone.from_config(backbone.get_config()))
    assert isinstance(lm.optimizer, keras.optimizers.AdamW)
    assert isinstance(lm.sampler, samplers.TopKSampler)
    lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    ids = np.tile(np.arange(10, 26, dtype="int32"), (8, 1))
    mask = np.ones_like(ids)
    mask[::2, 12:] = 0  # padding is masked out of the loss
    history = lm.fit({"token_ids": ids, "padding_mask": mask}, batch_size=4, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] * 0.7


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_fit_trains_with_dropout(dropout):
    """`fit()` calls the model with `training=True`, so dropout is on: a
    training step's loss (learning rate 0) differs from the evaluation of the
    same batch exactly when the backbone has dropout. `call(inputs, *args,
    **kwargs)` hid the argument from Keras, which then trained without it."""
    backbone = GPT2Backbone.from_config({**lively_pair()[1].get_config(), "dropout": dropout})
    lm = GPT2CausalLM(backbone)
    lm.compile(optimizer=keras.optimizers.SGD(0.0))
    ids = np.tile(np.arange(10, 26, dtype="int32"), (4, 1))
    x, y = {"token_ids": ids, "padding_mask": np.ones_like(ids)}, np.roll(ids, -1, axis=1)
    trained = lm.train_on_batch(x, y, return_dict=True)["loss"]
    evaluated = lm.test_on_batch(x, y, return_dict=True)["loss"]
    if dropout:
        assert abs(trained - evaluated) > 1e-3 * abs(evaluated)
    else:
        np.testing.assert_allclose(trained, evaluated, rtol=1e-5)


def test_per_token_loss_on_rows_equals_keras_loss_on_the_batch():
    _, lm = greedy_lm()  # default loss: sparse categorical cross-entropy
    x = mixed_batch()
    y = np.roll(x["token_ids"], -1, axis=1)
    weights = x["padding_mask"].astype("float32")
    y_pred = lm(x)
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        y, y_pred, sample_weight=weights
    )
    actual = lm.compute_loss(x, y, y_pred, weights)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(actual), keras.ops.convert_to_numpy(expected), rtol=1e-6
    )
    # A loss that is not per-token sees the (batch, seq, vocab) predictions.
    ranks = []

    def sequence_loss(y_true, y_pred):
        ranks.append(len(y_pred.shape))
        return keras.ops.mean(y_pred, axis=-1)

    lm.compile(loss=sequence_loss, sampler="greedy")
    lm.compute_loss(x, y, y_pred, weights)
    assert ranks == [3]


def test_lora_fit_trains_only_adapters():
    lm = string_lm()
    lm.backbone.enable_lora(4)
    lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    trainable = {v.path for v in lm.trainable_variables}
    assert trainable and all("lora" in path for path in trainable)
    frozen = {v.path: keras.ops.convert_to_numpy(v) for v in lm.non_trainable_variables}
    adapters = {v.path: keras.ops.convert_to_numpy(v) for v in lm.trainable_variables}
    lm.fit(TEXTS, batch_size=2, epochs=1, verbose=0)
    for v in lm.non_trainable_variables:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), frozen[v.path])
    assert any(
        not np.array_equal(keras.ops.convert_to_numpy(v), adapters[v.path])
        for v in lm.trainable_variables
    )


def test_bfloat16_generate_and_fit():
    """bfloat16 weights train with an optimizer that updates them; Keras'
    AdamW (the default) would leave them unchanged, so `fit` refuses it and
    names `mixed_bfloat16`, which trains."""

    def trained(lm):
        """The paths of the variables one epoch of `fit` changed."""
        before = [keras.ops.convert_to_numpy(keras.ops.cast(v, "float32")) for v in lm.trainable_variables]
        history = lm.fit(TEXTS, batch_size=2, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        after = [keras.ops.convert_to_numpy(keras.ops.cast(v, "float32")) for v in lm.trainable_variables]
        return {v.path for v, a, b in zip(lm.trainable_variables, after, before) if not np.array_equal(a, b)}

    lm = string_lm(dtype="bfloat16")
    assert lm.dtype_policy.name == "bfloat16"
    lm.compile(sampler="greedy")
    weights = [keras.ops.convert_to_numpy(keras.ops.cast(v, "float32")) for v in lm.weights]
    with pytest.raises(ValueError, match=r"trainable variables are bfloat16.*dtype='mixed_bfloat16'"):
        lm.fit(TEXTS, batch_size=2, epochs=1, verbose=0)
    for value, old in zip(lm.weights, weights):  # refused before any step
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras.ops.cast(value, "float32")), old)
    lm.compile(optimizer=keras.optimizers.SGD(0.5), sampler="greedy")
    assert trained(lm)
    text = lm.generate("the cat", max_length=LENGTH)
    assert text.startswith("the cat")
    mixed = string_lm(dtype="mixed_bfloat16")
    mixed.compile(sampler="greedy")
    assert "token_embedding/embeddings" in trained(mixed)


def test_config_round_trip_and_save_to_preset(tmp_path):
    lm = string_lm()
    config = lm.get_config()
    restored = GPT2CausalLM.from_config(config)
    assert type(restored) is GPT2CausalLM
    assert restored.backbone.get_config() == lm.backbone.get_config()
    assert restored.preprocessor.sequence_length == LENGTH
    lm.save_to_preset(str(tmp_path / "preset"))
    loaded = CausalLM.from_preset(str(tmp_path / "preset"))
    assert type(loaded) is GPT2CausalLM
    ids = lm.preprocessor.generate_preprocess(TEXTS, sequence_length=LENGTH)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(ids)), keras.ops.convert_to_numpy(lm(ids)), atol=1e-6
    )
    assert loaded.preprocessor.tokenizer.tokenize("the cat") == lm.preprocessor.tokenizer.tokenize(
        "the cat"
    )
    with pytest.raises(ValueError, match="directly"):
        Task.from_preset(str(tmp_path / "nothing"))


# Errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda lm: lm.generate(""), ValueError, "Prompt 0 is an empty string"),
        (lambda lm: lm.generate([]), ValueError, "empty list of prompts"),
        (lambda lm: lm.generate("the cat sat on the mat", max_length=8), ValueError, "does not leave room"),
        (lambda lm: lm.generate("the cat", max_length=65), ValueError, "max_sequence_length=64"),
        (lambda lm: lm.generate("the cat", max_length=1.5), ValueError, "max_length=1.5"),
        (lambda lm: lm.generate(3), TypeError, "takes a string"),
        (lambda lm: lm.generate("a", stop_token_ids=[999]), ValueError, r"\[999\] are outside"),
        (lambda lm: lm.compile(sampler="nucleus"), ValueError, "Unknown sampler 'nucleus'"),
        (lambda lm: lm.score(np.ones((2, 3), "int32"), scoring_mode="probs"), ValueError, "scoring_mode='probs'"),
    ],
)
def test_bad_input_with_preprocessor(call, error, match):
    with pytest.raises(error, match=match):
        call(string_lm())


TOKENS = {"token_ids": np.array([[1, 2, 0, 0]]), "padding_mask": np.array([[1, 1, 0, 0]])}


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda lm: lm.generate(TOKENS), 'stop_token_ids="auto".*no preprocessor'),
        (lambda lm: lm.generate("hello", stop_token_ids=None), "no preprocessor"),
        (lambda lm: lm.generate(TOKENS, max_length=3, stop_token_ids=None), "max_length=3 cannot apply"),
        (
            lambda lm: lm.generate({**TOKENS, "padding_mask": np.zeros((1, 4))}, stop_token_ids=None),
            "Prompt 0 is empty",
        ),
        (
            lambda lm: lm.generate({**TOKENS, "padding_mask": np.ones((1, 4))}, stop_token_ids=None),
            "fills the whole length 4",
        ),
        (
            lambda lm: lm.generate({"token_ids": np.ones((1, 70), "int32")}, stop_token_ids=None),
            "longer than this model's max_sequence_length=64",
        ),
        (lambda lm: lm.generate({"ids": TOKENS["token_ids"]}, stop_token_ids=None), "Received keys"),
    ],
)
def test_bad_input_without_preprocessor(call, match):
    lm = GPT2CausalLM(lively_pair()[1])
    with pytest.raises(ValueError, match=match):
        call(lm)


def test_backbone_must_be_gpt2():
    with pytest.raises(TypeError, match="GPT2Backbone"):
        GPT2CausalLM(keras.Sequential())


def test_tensorflow_on_cpu_trains_without_xla_and_generates_with_it():
    _, lm = greedy_lm()
    prompt = {"token_ids": np.array([[5, 6, 7, 0]]), "padding_mask": np.array([[1, 1, 1, 0]])}
    if keras.config.backend() == "tensorflow":
        # TensorFlow's CPU kernels train faster than XLA; XLA decodes float
        # and int8 models faster (benchmarks/NOTES.md).
        assert lm.jit_compile is False
        expected = lm.generate(prompt, stop_token_ids=None)
        assert lm.generate_function._jit_compile is True
        # Traced as written: AutoGraph's conversion cost 3.4 s of a first call.
        assert lm.generate_function._autograph is False
        lm.compile(sampler="greedy", jit_compile=False)
        assert lm.jit_compile is False
        np.testing.assert_array_equal(lm.generate(prompt, stop_token_ids=None)["token_ids"], expected["token_ids"])
        assert lm.generate_function._jit_compile is False
        lm.compile(sampler="greedy", jit_compile=True)
        assert lm.jit_compile is True
        lm.generate(prompt, stop_token_ids=None)
        assert lm.generate_function._jit_compile is True
    else:
        reference = keras.Model()
        reference.compile()
        assert lm.jit_compile == reference.jit_compile
