"""Quantization quality on real text: the shipped Shakespeare model, held-out plays.

The text is the validation split of `examples/train_tiny_shakespeare.py`
(the last `validation_fraction` of each play's lines, which training never
sees), as recorded in the preset's `training.json`. Every sixth window of
128 tokens is scored (about 18k tokens, all plays), by `predict` (compiled
on JAX and TensorFlow). The bounds are relative to the float32 model on
the same text, so they hold for a retrained preset.

Measured on the shipped preset (jax, 2026-11-30):

    float32  perplexity 23.911
    int8     perplexity 23.926 (+0.06%)  next-token agreement 98.1%
    int4     perplexity 24.712 (+3.35%)  next-token agreement 84.2%

(every third window, 36k tokens: +0.06% and +3.55%, the same on torch).

int8 must stay within 1% of float32. int4 (Keras' default groups of 128)
is bounded at +5%.
"""

import json
import os

import numpy as np

from gpt2_lib.models import GPT2CausalLM
from gpt2_lib.preset_io.handles import resolve_preset
from tests.real_data import shakespeare_texts_dir

PRESET = "gpt2_tiny_shakespeare_en"
WINDOW = 128
BOUNDS = {"int8": 1.01, "int4": 1.05}
MIN_AGREEMENT = {"int8": 0.95, "int4": 0.8}


def held_out_windows(tokenizer):
    """`(n, WINDOW + 1)` token windows of the validation split, every sixth one."""
    with open(os.path.join(resolve_preset(PRESET), "training.json")) as f:
        training = json.load(f)
    fraction = training["config"]["validation_fraction"]
    ids = []
    for name in training["files"]:
        with open(os.path.join(shakespeare_texts_dir(), name), encoding="utf-8", errors="replace") as f:
            lines = f.read().replace("\r\n", "\n").splitlines(keepends=True)
        ids.extend(tokenizer.tokenize("".join(lines[int(len(lines) * (1 - fraction)) :])))
        ids.append(tokenizer.end_token_id)
    ids = np.asarray(ids, "int32")
    count = (len(ids) - 1) // WINDOW
    windows = np.stack([ids[i * WINDOW : (i + 1) * WINDOW + 1] for i in range(count)])
    return windows[::6]


def score(lm, windows, batch_size=32):
    """Perplexity and the greedy (argmax) next token at every position.

    The logits come from `predict` (compiled on JAX and TensorFlow) of the
    backbone with its tied head, without the preprocessor.
    """
    x = {"token_ids": windows[:, :-1], "padding_mask": np.ones_like(windows[:, :-1], bool)}
    logits = GPT2CausalLM(lm.backbone).predict(x, batch_size=batch_size, verbose=0)
    largest = logits.max(-1)
    log_normalizer = np.log(np.exp(logits - largest[..., None]).sum(-1)) + largest
    nll = log_normalizer - np.take_along_axis(logits, windows[:, 1:, None], -1)[..., 0]
    return float(np.exp(nll.astype("float64").mean())), logits.argmax(-1)


def test_int8_stays_within_1_percent_and_int4_within_5_percent():
    reference = GPT2CausalLM.from_preset(PRESET)
    windows = held_out_windows(reference.preprocessor.tokenizer)
    assert windows.size > 15_000
    float_perplexity, float_greedy = score(reference, windows)
    report = [f"float32: perplexity {float_perplexity:.3f}"]
    for mode in ("int8", "int4"):
        lm = GPT2CausalLM.from_preset(PRESET)
        lm.quantize(mode)
        perplexity, greedy = score(lm, windows)
        agreement = float((greedy == float_greedy).mean())
        ratio = perplexity / float_perplexity
        report.append(f"{mode}: perplexity {perplexity:.3f} ({ratio - 1:+.2%}), next-token agreement {agreement:.1%}")
        assert ratio <= BOUNDS[mode], report
        assert agreement >= MIN_AGREEMENT[mode], report
    print("\n" + "\n".join(report))
