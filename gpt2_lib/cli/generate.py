"""`gpt2-lib generate`: continue prompts, streamed, batched or as JSON Lines."""

import json
import sys
import time

import numpy as np

from gpt2_lib import samplers
from gpt2_lib.cli.common import load_causal_lm
from gpt2_lib.cli.common import seed_everything
from gpt2_lib.cli.errors import CLIError
from gpt2_lib.cli.prompts import read_prompts


def make_sampler(args):
    """The sampler the arguments describe (already checked by the parser).

    Names mean what `compile(sampler=NAME)` means; the `--top-k`, `--top-p`
    and `--num-beams` values override the defaults.
    """
    temperature = {"temperature": args.temperature}
    if args.sampler == "greedy":
        return samplers.GreedySampler()
    if args.sampler == "beam":
        return samplers.BeamSampler(num_beams=args.num_beams or 5, **temperature)
    seeded = {"seed": args.seed, **temperature}
    if args.sampler == "top_k":
        return samplers.TopKSampler(k=args.top_k or 5, **seeded)
    if args.sampler == "top_p":
        return samplers.TopPSampler(p=args.top_p or 0.1, k=args.top_k, **seeded)
    return samplers.RandomSampler(**seeded)


def _check_against_model(args, lm, prompts):
    """Checks that need the model; returns each prompt's token count."""
    limit = lm.backbone.max_sequence_length
    if args.max_length is not None and args.max_length > limit:
        raise CLIError(
            f"argument --max-length: {args.max_length} is longer than the model's "
            f"max_sequence_length={limit}; pass --max-length {limit} or less."
        )
    vocabulary = lm.backbone.vocabulary_size
    if args.top_k is not None and args.top_k > vocabulary:
        raise CLIError(
            f"argument --top-k: {args.top_k} is larger than the vocabulary ({vocabulary} tokens)."
        )
    tokenizer = lm.preprocessor.tokenizer
    start = 1 if lm.preprocessor.add_start_token else 0
    counts = []
    for source, prompt in prompts:
        count = len(tokenizer.tokenize(prompt))
        if args.max_new_tokens is not None and count + start + args.max_new_tokens > limit:
            raise CLIError(
                f"the prompt of {source} has {count} tokens; with --max-new-tokens "
                f"{args.max_new_tokens} it needs {count + start + args.max_new_tokens} positions, "
                f"more than the model's max_sequence_length={limit}."
            )
        if args.max_new_tokens is None and count + start >= args.max_length:
            raise CLIError(
                f"the prompt of {source} has {count} tokens, which leaves no room to generate "
                f"within --max-length {args.max_length}; pass a larger --max-length "
                f"(up to {limit}) or a shorter prompt."
            )
        counts.append(count)
    return counts, start


def _stream(lm, prompt, max_length):
    print(prompt, end="", flush=True)
    for piece in lm.stream_generate(prompt, max_length=max_length):
        print(piece, end="", flush=True)
    print(flush=True)


def _generate_batch(lm, prompts, batch_size, max_length, max_new_tokens=None):
    """Generate for `prompts` as one batch of `batch_size` rows.

    A short last batch is filled with copies of its last prompt, so that
    every batch has the same shape and reuses the compiled function. With
    `max_new_tokens`, each row keeps at most that many new tokens.

    Returns:
        `(texts, completions, new_token_counts, seconds)` for `prompts`.
    """
    rows = list(prompts) + [prompts[-1]] * (batch_size - len(prompts))
    inputs = lm.preprocessor.generate_preprocess(rows, sequence_length=max_length)
    inputs = {key: np.asarray(value) for key, value in inputs.items()}
    start = time.perf_counter()
    outputs = lm.generate(inputs)
    seconds = time.perf_counter() - start
    prompt_mask = inputs["padding_mask"].astype(bool)
    new_mask = np.asarray(outputs["padding_mask"]).astype(bool) & ~prompt_mask
    if max_new_tokens is not None:
        new_mask &= np.cumsum(new_mask, axis=1) <= max_new_tokens
    token_ids = outputs["token_ids"]
    texts = lm.preprocessor.generate_postprocess(
        {"token_ids": token_ids, "padding_mask": prompt_mask | new_mask}
    )
    completions = lm.preprocessor.generate_postprocess(
        {"token_ids": token_ids, "padding_mask": new_mask}
    )
    n = len(prompts)
    return list(texts)[:n], list(completions)[:n], new_mask.sum(axis=1)[:n].tolist(), seconds


def run(args):
    prompts = read_prompts(args.prompts, args.input, args.input_field)
    sampler = make_sampler(args)
    if args.seed is not None:
        seed_everything(args.seed)
    lm = load_causal_lm(args.preset, dtype=args.dtype, lora=args.lora, quantize=args.quantize)
    prompt_tokens, start_tokens = _check_against_model(args, lm, prompts)
    lm.compile(sampler=sampler)
    stream = (
        len(prompts) == 1 and args.sampler != "beam" and not args.no_stream and not args.json
    )
    if stream:
        _stream(lm, prompts[0][1], args.max_length or prompt_tokens[0] + start_tokens + args.max_new_tokens)
        return
    batch_size = min(args.batch_size, len(prompts))
    first = True
    for start in range(0, len(prompts), batch_size):
        batch = [prompt for _, prompt in prompts[start : start + batch_size]]
        max_length = args.max_length
        if max_length is None:  # --max-new-tokens: room for the longest prompt of the batch
            longest = max(prompt_tokens[start : start + batch_size])
            max_length = longest + start_tokens + args.max_new_tokens
        texts, completions, new_tokens, seconds = _generate_batch(
            lm, batch, batch_size, max_length, args.max_new_tokens
        )
        for i, (prompt, text, completion, count) in enumerate(
            zip(batch, texts, completions, new_tokens)
        ):
            if args.json:
                record = {
                    "prompt": prompt,
                    "text": text,
                    "completion": completion,
                    "prompt_tokens": prompt_tokens[start + i],
                    "completion_tokens": int(count),
                    "seconds": round(seconds, 4),
                    "batch_size": len(batch),
                }
                print(json.dumps(record, ensure_ascii=False), flush=True)
            else:
                if not first:
                    print()
                print(text, flush=True)
            first = False
    sys.stdout.flush()
