"""Shared pieces of the backend tests: a small LM, counted calls."""

import keras


def greedy_lm(vocabulary_size, hidden_dim, intermediate_dim):
    """A 2-block, 4-head `GPT2CausalLM` without preprocessor, greedy."""
    from gpt2_lib.models import GPT2Backbone
    from gpt2_lib.models import GPT2CausalLM

    keras.utils.set_random_seed(0)
    backbone = GPT2Backbone(
        vocabulary_size=vocabulary_size, num_layers=2, num_heads=4, hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim, max_sequence_length=64, dropout=0.0,
    )
    lm = GPT2CausalLM(backbone, preprocessor=None)
    lm.compile(sampler="greedy")
    return lm


def counted_calls(monkeypatch, module, name):
    """Wraps `module.name` so that each call appends its last argument (a
    count) to the returned list, then computes as before."""
    function = getattr(module, name)
    counts = []
    monkeypatch.setattr(module, name, lambda *args: counts.append(args[-1]) or function(*args))
    return counts
