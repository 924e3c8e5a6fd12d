"""The implementations of the `gpt2-lib` subcommands (see `gpt2_lib.cli`).

Imported only after the backend is chosen.
"""

import math
import os
import shutil
import sys
import tempfile
import time

from gpt2_lib.cli import CLIError


def _load_causal_lm(preset):
    from gpt2_lib.models import GPT2CausalLM

    return GPT2CausalLM.from_preset(preset)


def _read_text(path):
    if not os.path.exists(path):
        raise CLIError(f"data file {path!r} does not exist.")
    if os.path.isdir(path):
        raise CLIError(f"data file {path!r} is a directory; pass a UTF-8 text file.")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as error:
        raise CLIError(f"data file {path!r} is not UTF-8 text ({error}).") from None
    if not text.strip():
        raise CLIError(f"data file {path!r} is empty; it needs some text to work on.")
    return text


# generate -------------------------------------------------------------------


def generate(args):
    lm = _load_causal_lm(args.preset)
    if lm.preprocessor is None:
        raise CLIError(f"preset {args.preset!r} has no tokenizer; cannot generate from text.")
    lm.compile(sampler=_sampler(args))
    if len(args.prompts) == 1 and args.sampler != "beam" and not args.no_stream:
        print(args.prompts[0], end="", flush=True)
        for piece in lm.stream_generate(args.prompts[0], max_length=args.max_length):
            print(piece, end="", flush=True)
        print()
        return
    # One batched call: the prompts share one compiled generation step.
    outputs = lm.generate(args.prompts, max_length=args.max_length)
    for i, text in enumerate(outputs):
        if i:
            print()
        print(text, flush=True)


def _sampler(args):
    from gpt2_lib import samplers

    if args.sampler == "greedy":
        return samplers.GreedySampler()
    if args.sampler == "beam":
        return samplers.BeamSampler(num_beams=4)
    kwargs = {"seed": args.seed, "temperature": args.temperature}
    if args.sampler == "top_k":
        return samplers.TopKSampler(k=50, **kwargs)
    if args.sampler == "top_p":
        return samplers.TopPSampler(p=0.9, **kwargs)
    return samplers.RandomSampler(**kwargs)


# finetune -------------------------------------------------------------------


def _training_texts(text, tokenizer, sequence_length):
    """Cut the text into passages of about `sequence_length` tokens at line breaks."""
    passages, current, current_tokens = [], [], 0
    for line in text.splitlines(keepends=True):
        n = len(tokenizer.tokenize(line))
        if current and current_tokens + n > sequence_length - 1:
            passages.append("".join(current))
            current, current_tokens = [], 0
        current.append(line)
        current_tokens += n
    if "".join(current).strip():
        passages.append("".join(current))
    return passages


def finetune(args):
    import keras
    import numpy as np

    from gpt2_lib.cli_training import TrainingCheckpoint
    from gpt2_lib.cli_training import TokensPerSecond

    if args.lora_rank is not None and args.lora_rank <= 0:
        raise CLIError(f"--lora-rank must be a positive integer; got {args.lora_rank}.")
    for name in ("epochs", "batch_size", "sequence_length"):
        if getattr(args, name) <= 0:
            raise CLIError(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}.")
    adapters_only = args.output.endswith(".lora.h5")
    if adapters_only and args.lora_rank is None:
        raise CLIError(f"--output {args.output!r} names a LoRA file; add --lora-rank.")
    output_parent = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(output_parent):
        raise CLIError(f"the folder of --output, {output_parent!r}, does not exist.")
    _check_writable(output_parent)
    text = _read_text(args.data)

    keras.utils.set_random_seed(args.seed)
    lm = _load_causal_lm(args.preset)
    if lm.preprocessor is None:
        raise CLIError(f"preset {args.preset!r} has no tokenizer/preprocessor; cannot fine-tune on text.")
    max_positions = lm.backbone.max_sequence_length
    if args.sequence_length > max_positions:
        raise CLIError(
            f"--sequence-length {args.sequence_length} is longer than the model's "
            f"max_sequence_length={max_positions}."
        )
    lm.preprocessor.sequence_length = args.sequence_length
    passages = _training_texts(text, lm.preprocessor.tokenizer, args.sequence_length)
    if args.lora_rank is not None:
        lm.backbone.enable_lora(args.lora_rank)
    learning_rate = args.learning_rate or (1e-3 if args.lora_rank else 5e-5)
    lm.compile(
        optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    steps = math.ceil(len(passages) / args.batch_size)
    if args.max_steps:
        steps = min(steps, args.max_steps)
    checkpoint = TrainingCheckpoint(args.output + ".checkpoint", lm)
    initial_epoch = 0
    if args.resume:
        initial_epoch = checkpoint.restore()
        print(f"resuming after epoch {initial_epoch} from {checkpoint.directory}", file=sys.stderr)
    elif checkpoint.exists():
        raise CLIError(
            f"{checkpoint.directory} holds the checkpoint of an interrupted run; pass "
            "--resume to continue it, or delete it to start over."
        )
    print(
        f"fine-tuning {args.preset} on {len(passages)} passages of <= {args.sequence_length} "
        f"tokens ({'LoRA rank %d' % args.lora_rank if args.lora_rank else 'all weights'}, "
        f"{sum(int(np.prod(w.shape)) for w in lm.trainable_weights):,} trainable parameters)",
        file=sys.stderr,
    )
    if initial_epoch < args.epochs:
        lm.fit(
            passages,
            batch_size=args.batch_size,
            epochs=args.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            callbacks=[
                TokensPerSecond(args.batch_size * args.sequence_length),
                checkpoint,
            ],
            verbose=1,
        )
    if adapters_only:
        _atomic_file(args.output, lm.backbone.save_lora_weights)
    else:
        if args.lora_rank is not None:
            adapters = os.path.join(checkpoint.directory, "adapters.lora.h5")
            lm.backbone.save_lora_weights(adapters)
            lm.backbone.merge_lora_weights()
            lm.save_to_preset(args.output)
            shutil.copyfile(adapters, os.path.join(args.output, "adapters.lora.h5"))
        else:
            lm.save_to_preset(args.output)
    checkpoint.remove()
    print(f"saved {args.output}", file=sys.stderr)


def _check_writable(directory):
    """Fail before training, not after, when the output cannot be written."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".gpt2-lib-probe-", dir=directory)
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        raise CLIError(
            f"cannot write to {directory!r} ({error.strerror or error}); choose another --output."
        ) from None


def _atomic_file(path, write):
    """Call `write(tmp_path)` and move the result to `path` only if it succeeds."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp.lora.h5")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# perplexity -----------------------------------------------------------------


def perplexity(args):
    import keras
    import numpy as np

    text = _read_text(args.data)
    lm = _load_causal_lm(args.preset)
    if lm.preprocessor is None:
        raise CLIError(f"preset {args.preset!r} has no tokenizer; cannot read text.")
    tokenizer = lm.preprocessor.tokenizer
    length = args.sequence_length or lm.preprocessor.sequence_length
    length = min(length, lm.backbone.max_sequence_length)
    ids = np.asarray(tokenizer.tokenize(text), dtype="int32")
    if len(ids) < 2:
        raise CLIError(f"{args.data!r} has fewer than 2 tokens; perplexity needs at least 2.")
    # Non-overlapping windows; each predicts all its tokens after the first.
    windows = [ids[i : i + length] for i in range(0, len(ids) - 1, length - 1)]
    windows = [w for w in windows if len(w) >= 2]
    total, count = 0.0, 0
    for start in range(0, len(windows), args.batch_size):
        batch = windows[start : start + args.batch_size]
        width = max(len(w) for w in batch)
        token_ids = np.zeros((len(batch), width), "int32")
        mask = np.zeros((len(batch), width), bool)
        for row, window in enumerate(batch):
            token_ids[row, : len(window)] = window
            mask[row, : len(window)] = True
        # (batch, width): log p(token t+1 | tokens <= t); 0 where t+1 is padding.
        log_likelihood = lm.score(token_ids, mask, scoring_mode="log_likelihood")
        total -= float(np.asarray(keras.ops.convert_to_numpy(log_likelihood), "float64").sum())
        count += sum(len(w) - 1 for w in batch)
    nll = total / count
    print(f"perplexity: {math.exp(nll):.3f}  ({count:,} tokens, mean NLL {nll:.4f} nats)")


# presets --------------------------------------------------------------------


def presets(args):
    from gpt2_lib.preset_io.builtin import all_presets

    rows = [("name", "params", "description", "source")]
    for name, meta in all_presets().items():
        source = meta.get("path") and "embedded (offline)" or meta.get("kaggle_handle") or ""
        if meta.get("hf_handle"):
            source += f", {meta['hf_handle']}"
        rows.append((name, f"{meta['params']:,}", meta["description"], source))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])


# convert --------------------------------------------------------------------


def convert(args):
    from gpt2_lib.models import Backbone
    from gpt2_lib.models import GPT2CausalLM

    try:
        model = GPT2CausalLM.from_preset(args.source)
    except ValueError:
        model = Backbone.from_preset(args.source)
    start = time.time()
    if args.to == "transformers":
        model.export_to_transformers(args.output)
    else:
        model.save_to_preset(args.output)
    print(f"wrote {args.output} ({args.to} format) in {time.time() - start:.1f} s", file=sys.stderr)
