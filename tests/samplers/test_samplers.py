"""Samplers on a known bigram "model": exact greedy/beam results, sampling support, seeds."""

import itertools

import keras
import numpy as np
import pytest

from gpt2_lib import samplers

VOCAB = 6
rng = np.random.default_rng(0)
# Logits of the next token given the previous one.
BIGRAM = rng.normal(size=(VOCAB, VOCAB)).astype("float32") * 2.0


def bigram_next(prompt, cache, index):
    previous = keras.ops.take(prompt, index - 1, axis=1)
    logits = keras.ops.take(keras.ops.convert_to_tensor(BIGRAM), previous, axis=0)
    return logits, None, cache


def run(sampler, prompt, index=1, mask=None, stop_token_ids=None):
    prompt = np.asarray(prompt, "int32")
    if mask is None:
        mask = np.zeros_like(prompt, bool)
        mask[:, :index] = True
    out = sampler(
        bigram_next, prompt, index=index, mask=mask, stop_token_ids=stop_token_ids
    )
    return keras.ops.convert_to_numpy(out)


def greedy_reference(first, length):
    row = [first]
    while len(row) < length:
        row.append(int(np.argmax(BIGRAM[row[-1]])))
    return row


def log_softmax(x):
    return x - np.log(np.exp(x - x.max()).sum()) - x.max()


@pytest.mark.parametrize(
    "sampler",
    [
        samplers.GreedySampler(),
        samplers.TopKSampler(k=1, seed=3),
        samplers.TopPSampler(p=1e-6, seed=3),
        samplers.BeamSampler(num_beams=1),
        samplers.RandomSampler(temperature=1e-4, seed=3),
    ],
    ids=["greedy", "top_k_1", "top_p_tiny", "beam_1", "random_cold"],
)
def test_degenerate_settings_equal_greedy(sampler):
    out = run(sampler, np.zeros((VOCAB, 7)) + np.arange(VOCAB)[:, None])
    for first in range(VOCAB):
        assert out[first].tolist() == greedy_reference(first, 7)


def test_prompt_positions_are_never_overwritten():
    prompt = np.array([[1, 2, 3, 0, 0, 0], [4, 0, 0, 0, 0, 0]])
    mask = prompt > 0
    mask[1, 0] = True
    out = run(samplers.GreedySampler(), prompt, index=1, mask=mask)
    assert out[0, :3].tolist() == [1, 2, 3]
    assert out[0].tolist() == [1, 2] + greedy_reference(3, 4)
    assert out[1].tolist() == greedy_reference(4, 6)


def test_beam_search_finds_the_most_likely_sequence():
    # With num_beams >= VOCAB ** (steps - 1) beam search is exhaustive.
    steps = 3
    sampler = samplers.BeamSampler(num_beams=VOCAB ** (steps - 1), return_all_beams=True)
    prompt = np.array([[2] + [0] * steps])
    sequences, log_probs = sampler(bigram_next, prompt.astype("int32"), index=1, mask=prompt > 9)
    sequences = keras.ops.convert_to_numpy(sequences)
    log_probs = keras.ops.convert_to_numpy(log_probs)
    scores = {}
    for tail in itertools.product(range(VOCAB), repeat=steps):
        row = (2,) + tail
        scores[row] = sum(log_softmax(BIGRAM[a])[b] for a, b in zip(row, row[1:]))
    best = max(scores, key=scores.get)
    assert tuple(sequences[0, 0]) == best
    np.testing.assert_allclose(log_probs[0, 0], scores[best], rtol=1e-5)
    assert (np.diff(log_probs[0]) <= 1e-6).all()  # sorted, best first
    top = run(samplers.BeamSampler(num_beams=VOCAB ** (steps - 1)), prompt, index=1)
    assert tuple(top[0]) == best


def test_top_k_and_top_p_sample_only_allowed_tokens():
    prompt = np.zeros((256, 2), "int32")
    probs = np.exp(log_softmax(BIGRAM[0]))
    order = np.argsort(-probs)
    top_k = set(run(samplers.TopKSampler(k=2, seed=1), prompt)[:, 1].tolist())
    assert top_k == set(order[:2].tolist())
    p = float(probs[order[0]] + probs[order[1]] / 2)  # the nucleus is the top 2
    top_p = set(run(samplers.TopPSampler(p=p, seed=1), prompt)[:, 1].tolist())
    assert top_p == set(order[:2].tolist())
    everything = set(run(samplers.RandomSampler(temperature=50.0, seed=1), prompt)[:, 1].tolist())
    assert everything == set(range(VOCAB))


def test_seeds_reproduce():
    prompt = np.zeros((16, 8), "int32")
    first = run(samplers.TopKSampler(k=4, seed=42), prompt)
    np.testing.assert_array_equal(first, run(samplers.TopKSampler(k=4, seed=42), prompt))
    assert not np.array_equal(first, run(samplers.TopKSampler(k=4, seed=7), prompt))
    # The seed generator advances: a second call on the same sampler differs.
    sampler = samplers.RandomSampler(seed=42)
    assert not np.array_equal(run(sampler, prompt), run(sampler, prompt))


def test_stop_tokens_end_the_loop_once_every_row_stopped():
    first = 0
    chain = greedy_reference(first, 8)
    stop = chain[3]
    prompt = np.full((1, 8), -1)
    prompt[0, 0] = first
    out = run(samplers.GreedySampler(), prompt, stop_token_ids=[stop])
    end = chain.index(stop, 1)  # the first new stop token
    assert out[0, : end + 1].tolist() == chain[: end + 1]
    assert (out[0, end + 1 :] == -1).all()  # never written


def test_get_and_serialization():
    for name, cls in samplers.SAMPLERS.items():
        assert type(samplers.get(name)) is cls
    sampler = samplers.TopPSampler(p=0.5, k=10, seed=3, temperature=0.7)
    restored = samplers.deserialize(samplers.serialize(sampler))
    assert type(restored) is samplers.TopPSampler
    assert restored.get_config() == sampler.get_config()
    assert samplers.get(sampler) is sampler
    assert isinstance(samplers.get(samplers.GreedySampler), samplers.GreedySampler)
    beam = samplers.get(samplers.serialize(samplers.BeamSampler(num_beams=2)))
    assert beam.num_beams == 2


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: samplers.get("nucleus"), "Unknown sampler 'nucleus'.*greedy"),
        (lambda: samplers.get(3), "Could not interpret sampler 3"),
        (lambda: samplers.TopKSampler(k=0), "k=0"),
        (lambda: samplers.TopPSampler(p=1.5), "p=1.5"),
        (lambda: samplers.BeamSampler(num_beams=0), "num_beams=0"),
        (lambda: samplers.GreedySampler(temperature=0), "temperature=0"),
        (lambda: samplers.RandomSampler(seed="a"), "seed='a'"),
    ],
)
def test_bad_arguments_are_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "sampler",
    [samplers.GreedySampler(), samplers.BeamSampler(num_beams=2), samplers.TopKSampler(k=1, seed=1)],
    ids=["greedy", "beam", "top_k"],
)
def test_slots_padded_with_the_stop_token_do_not_stop_generation(sampler):
    """GPT-2 pads with <|endoftext|>, its stop token: only generated tokens count."""
    first = 0
    expected = greedy_reference(first, 7)
    stop = next(t for t in range(VOCAB) if t not in expected)
    prompt = np.full((1, 7), stop)
    prompt[0, 0] = first
    out = run(sampler, prompt, stop_token_ids=[stop])
    assert out[0].tolist() == expected
