"""`gpt2-lib finetune`: fine-tune a preset on text, resumably, with a metrics record.

The optimizer is exactly `compile()`'s default ("auto": AdamW, weight decay
0.01 except on biases, LayerNorm and embeddings, gradient norm clipped to
1.0) with the learning rate set from `--learning-rate`; the loss and metric
are compile()'s defaults too.

`--data-parallel`, `--model-parallel` and the multi-process options train
under a `keras.distribution` (JAX): see `gpt2_lib.cli.distributed`.
"""

import hashlib
import importlib.util
import math
import os
import signal

import keras

from gpt2_lib.cli.backend import import_quietly
from gpt2_lib.cli.backend import quiet_native_stderr
from gpt2_lib.cli import distributed
from gpt2_lib.cli.checkpoint import Checkpoint
from gpt2_lib.cli.common import load_causal_lm
from gpt2_lib.cli.common import read_documents
from gpt2_lib.cli.common import score_windows
from gpt2_lib.cli.common import seed_everything
from gpt2_lib.cli.errors import CLIError
from gpt2_lib.cli.errors import TrainingInterrupted
from gpt2_lib.cli.metrics_record import MetricsRecord
from gpt2_lib.cli.metrics_record import perplexity
from gpt2_lib.cli.training_callbacks import FinetuneMonitor
from gpt2_lib.cli.training_callbacks import ProgressDisplay
from gpt2_lib.cli.training_callbacks import StepTensorBoard
from gpt2_lib.cli.training_callbacks import StopSignals
from gpt2_lib.cli.training_data import PackedWindows
from gpt2_lib.cli.training_data import TrainingBatches
from gpt2_lib.utils import distribution as dist
from gpt2_lib.utils.atomic import atomic_file

DEFAULT_LEARNING_RATE = {"full": 5e-5, "lora": 1e-3}


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _metrics_paths(output):
    """Where the metrics go: inside the preset folder, or beside a `.lora.h5` file."""
    if output.endswith(".lora.h5"):
        stem = output[: -len(".lora.h5")]
        return {"csv": stem + ".metrics.csv", "json": stem + ".metrics.json",
                "png": stem + ".loss_curve.png"}
    return {"csv": os.path.join(output, "metrics.csv"),
            "json": os.path.join(output, "metrics.json"),
            "png": os.path.join(output, "loss_curve.png")}


def _read_data(args):
    """The training and validation documents (read before the model is loaded)."""
    documents = read_documents(args.data, args.text_field, "--data")
    held_out = None
    if args.validation_data:
        held_out = read_documents(args.validation_data, args.text_field, "--validation-data")
    return documents, held_out


def _windows(args, tokenizer, documents, held_out_documents):
    windows = PackedWindows(tokenizer, documents, args.sequence_length)
    held_out = None
    if held_out_documents is not None:
        held_out = PackedWindows(tokenizer, held_out_documents, args.sequence_length)
    elif args.validation_split:
        windows, held_out = windows.split(args.validation_split)
        if windows is None:
            raise CLIError(
                f"argument --validation-split: {args.data!r} has too few windows of "
                f"{args.sequence_length} tokens to hold out {args.validation_split}; give "
                "--validation-data, or more text."
            )
    return windows, held_out


def _signature(args):
    if args.validation_data:
        validation = {"file_sha256": _sha256(args.validation_data)}
    elif args.validation_split:
        validation = {"split": args.validation_split}
    else:
        validation = None
    return {
        "preset": args.preset,
        "data_sha256": _sha256(args.data),
        "text_field": args.text_field,
        "validation": validation,
        "sequence_length": args.sequence_length,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "lora_rank": args.lora_rank,
    }


def _save_output(args, lm, checkpoint_dir):
    """Write the result. Under a distribution every process calls this (the
    library's savers gather the shards and write on process 0)."""
    if args.output.endswith(".lora.h5"):
        if dist.process_count() > 1:  # save_lora_weights: atomic, process 0 writes
            lm.backbone.save_lora_weights(args.output)
        else:
            with atomic_file(args.output, suffix=".lora.h5") as tmp:
                lm.backbone.save_lora_weights(tmp)
        return f"{args.output} (LoRA adapters, rank {args.lora_rank})"
    if args.lora_rank is None:
        lm.save_to_preset(args.output)
        return f"{args.output} (preset)"
    if dist.is_writer():
        os.makedirs(checkpoint_dir, exist_ok=True)
    dist.barrier("gpt2_lib finetune checkpoint folder")
    adapters = os.path.join(checkpoint_dir, "adapters.lora.h5")
    lm.backbone.save_lora_weights(adapters)
    lm.backbone.merge_lora_weights()
    lm.save_to_preset(args.output)

    def copy_adapters():
        with atomic_file(os.path.join(args.output, "adapters.lora.h5"), suffix=".lora.h5") as tmp:
            with open(adapters, "rb") as src, open(tmp, "wb") as dst:
                dst.write(src.read())

    distributed.run_on_writer(copy_adapters, os.path.join(args.output, "adapters.lora.h5"))
    return f"{args.output} (preset with the LoRA weights merged, and adapters.lora.h5)"


def _validator(held_out, batch_size):
    """`(model, should_stop) -> mean validation loss`, None if stopped early."""
    scoring = held_out.scoring_windows()

    def validate(model, should_stop):
        total, count = score_windows(model, scoring, batch_size, should_stop)
        return total / count if count and not should_stop() else None

    return validate


def _clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run(args):
    # Before anything touches a JAX device (several processes), and before
    # anything is loaded (a distribution asked for off JAX).
    distribution = distributed.setup(args)
    with distributed.writer_output():
        _run(args, distribution)


def _run(args, distribution):
    output = args.output.rstrip("/\\") or args.output
    args.output = output
    checkpoint_dir = output + ".checkpoint"
    if args.resume and not os.path.exists(os.path.join(checkpoint_dir, "state.npz")):
        raise CLIError(f"--resume: no checkpoint at {checkpoint_dir}; run without --resume to start.")
    if not args.resume and os.path.exists(checkpoint_dir):
        raise CLIError(
            f"{checkpoint_dir} holds the checkpoint of an interrupted run; pass --resume to "
            "continue it, or delete it to start over."
        )
    if args.tensorboard is not None:
        missing = [m for m in ("tensorflow", "tensorboard") if importlib.util.find_spec(m) is None]
        if missing:
            raise CLIError(
                f"--tensorboard writes its logs with TensorFlow's tf.summary, which needs "
                f"{' and '.join(missing)}: `pip install -e \".[tensorboard]\"` (or "
                "`pip install tensorflow-cpu tensorboard`), or drop --tensorboard."
            )
        import_quietly("tensorflow")
    mode = "lora" if args.lora_rank else "full"
    learning_rate = args.learning_rate or DEFAULT_LEARNING_RATE[mode]
    signature = _signature(args)
    documents, held_out_documents = _read_data(args)

    seed_everything(args.seed)
    if distribution is not None:
        # Set before loading: from_preset loads every weight straight into its shards.
        keras.distribution.set_distribution(distribution)
    lm = load_causal_lm(args.preset)
    limit = lm.backbone.max_sequence_length
    if args.sequence_length > limit:
        raise CLIError(
            f"argument --sequence-length: {args.sequence_length} is longer than the model's "
            f"max_sequence_length={limit}."
        )
    windows, held_out = _windows(args, lm.preprocessor.tokenizer, documents, held_out_documents)
    if args.lora_rank is not None:
        lm.backbone.enable_lora(args.lora_rank)
    lm.compile()  # optimizer "auto", see the module docstring
    lm.optimizer.learning_rate = learning_rate
    steps_per_epoch = math.ceil(len(windows) / args.batch_size)
    total_steps = args.max_steps or args.epochs * steps_per_epoch

    checkpoint = Checkpoint(checkpoint_dir, signature)
    start_step, saved = 0, {}
    if args.resume:
        start_step, saved = checkpoint.restore(lm)
        if start_step >= total_steps:
            raise CLIError(
                f"--resume: the checkpoint is at step {start_step}, and this run ends at step "
                f"{total_steps}; raise --max-steps or --epochs to train further."
            )
    record = MetricsRecord(saved.get("rows"))
    trainable = sum(math.prod(v.shape) for v in lm.trainable_variables)
    what = f"LoRA rank {args.lora_rank}" if args.lora_rank else "all weights"
    print(
        f"fine-tuning {args.preset} ({what}, {trainable:,} trainable parameters, "
        f"{args.backend} backend{distributed.describe(args, distribution)}) on {len(windows):,} windows of {args.sequence_length} tokens "
        f"({int(windows.targets.sum()):,} tokens), batch {args.batch_size}: {total_steps:,} steps, "
        f"{steps_per_epoch:,} per epoch, learning rate {learning_rate:g}",
        flush=True,
    )

    validate = None if held_out is None else _validator(held_out, args.batch_size)
    val_before = saved.get("val_before")
    if held_out is not None and not args.resume:
        val_before = validate(lm, lambda: False)
        record.add(0, epoch=0.0, val_loss=val_before)
        print(f"validation before training: loss {val_before:.4f}, perplexity "
              f"{perplexity(val_before):.2f} ({int(held_out.targets.sum()):,} tokens)", flush=True)
    if args.resume:
        print(f"resuming at step {start_step} of {total_steps} from {checkpoint_dir}", flush=True)

    batches = TrainingBatches(windows, args.batch_size, args.seed, start_step, total_steps,
                              row_multiple=args.data_parallel or 1)
    signals = StopSignals()
    display = ProgressDisplay(total_steps, start_step, args.log_every)
    monitor = FinetuneMonitor(
        batches, record, checkpoint, signals, validate, display,
        save_every=args.save_every, eval_every=args.eval_every, log_every=args.log_every,
        extra_record=lambda: {"val_before": val_before}, resumed=saved,
    )
    callbacks = [monitor]
    if args.tensorboard is not None and dist.is_writer():
        callbacks.append(StepTensorBoard(args.tensorboard, start_step))
    with signals:
        lm.fit(batches, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
    if monitor.stopped_by is not None:
        name = "Ctrl-C" if monitor.stopped_by == signal.SIGINT else "SIGTERM"
        raise TrainingInterrupted(
            f"stopped by {name} after step {monitor.step} of {total_steps}; checkpoint in "
            f"{checkpoint_dir} (run the same command with --resume to continue)",
            exit_status=128 + int(monitor.stopped_by),
        )

    # Keras' serialization imports TensorFlow when it is installed, whatever the backend.
    with quiet_native_stderr():
        saved_as = _save_output(args, lm, checkpoint_dir)
    summary = _summary(args, record, monitor, val_before, total_steps, learning_rate)
    paths = _metrics_paths(output)
    written = [paths["csv"], paths["json"]]

    def write_metrics():
        record.write_csv(paths["csv"])
        record.write_json(paths["json"], summary)
        if record.write_plot(paths["png"], f"gpt2-lib finetune {args.preset}"):
            written.append(paths["png"])

    distributed.run_on_writer(write_metrics, f"the metrics of {output}")
    checkpoint.remove()
    _print_summary(summary, monitor)
    print(f"saved {saved_as}")
    print(f"metrics: {', '.join(written)}"
          + ("" if len(written) == 3 else " (install matplotlib, the [plot] extra, for the PNG)"))


def _summary(args, record, monitor, val_before, total_steps, learning_rate):
    train = record.train()
    validation = record.validation()
    val_after = validation[-1][1] if validation else None
    return {
        "preset": args.preset,
        "steps": total_steps,
        "epochs": round(total_steps / monitor.batches.steps_per_epoch, 4),
        "tokens_this_run": monitor.tokens,
        "seconds_this_run": round(monitor.elapsed(), 2),
        "learning_rate": learning_rate,
        "lora_rank": args.lora_rank,
        "train_loss_first": train[0][1] if train else None,
        "train_loss_last": train[-1][1] if train else None,
        "val_loss_before": val_before,
        "val_loss_after": val_after,
        "val_perplexity_before": perplexity(val_before),
        "val_perplexity_after": perplexity(val_after),
    }


def _print_summary(summary, monitor):
    seconds = summary["seconds_this_run"]
    print(f"done: {summary['steps']:,} steps ({summary['epochs']:g} epochs); this run "
          f"{summary['tokens_this_run']:,} tokens in {_clock(seconds)} "
          f"({summary['tokens_this_run'] / max(seconds, 1e-9):,.0f} tokens/s)")
    if summary["train_loss_first"] is not None:
        print(f"train loss {summary['train_loss_first']:.4f} (first interval) -> "
              f"{summary['train_loss_last']:.4f} (last interval)")
    if summary["val_loss_before"] is not None and summary["val_loss_after"] is not None:
        print(f"validation perplexity {summary['val_perplexity_before']:.2f} -> "
              f"{summary['val_perplexity_after']:.2f} (loss {summary['val_loss_before']:.4f} -> "
              f"{summary['val_loss_after']:.4f})")
