"""`gpt2-lib perplexity`: per-token perplexity of a preset on a text file."""

import json
import math

import numpy as np

from gpt2_lib.cli.common import load_causal_lm
from gpt2_lib.cli.common import score_windows
from gpt2_lib.cli.common import read_text
from gpt2_lib.cli.errors import CLIError


def token_windows(ids, length):
    """Windows of `length` tokens overlapping by one token, so each token
    after the first is predicted exactly once."""
    windows = [ids[i : i + length] for i in range(0, len(ids) - 1, length - 1)]
    return [w for w in windows if len(w) >= 2]


def run(args):
    text = read_text(args.data)
    lm = load_causal_lm(args.preset, dtype=args.dtype, lora=args.lora, quantize=args.quantize)
    limit = lm.backbone.max_sequence_length
    if args.sequence_length is not None and args.sequence_length > limit:
        raise CLIError(
            f"argument --sequence-length: {args.sequence_length} is longer than the model's "
            f"max_sequence_length={limit}."
        )
    length = min(args.sequence_length or lm.preprocessor.sequence_length, limit)
    ids = np.asarray(lm.preprocessor.tokenizer.tokenize(text), dtype="int32")
    if len(ids) < 2:
        raise CLIError(f"{args.data!r} has fewer than 2 tokens; perplexity needs at least 2.")
    total, count = score_windows(lm, token_windows(ids, length), args.batch_size)
    nll = total / count
    if args.json:
        print(json.dumps({"perplexity": math.exp(nll), "mean_nll": nll, "tokens": count,
                          "sequence_length": length, "preset": args.preset}))
        return
    print(f"perplexity: {math.exp(nll):.3f}  ({count:,} tokens, mean NLL {nll:.4f} nats)")
