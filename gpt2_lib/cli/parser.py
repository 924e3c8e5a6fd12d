"""The `gpt2-lib` argument parser and the checks done before Keras is imported.

Everything here is plain Python: a bad argument is reported in a fraction
of a second, on one line (`gpt2-lib: error: argument --batch-size: ...`),
with exit status 2 and nothing on stdout, before any model is loaded.
Each command's implementation is the module named in `COMMAND_MODULES`.
"""

import argparse
import math
import os
import sys

from gpt2_lib import __version__
from gpt2_lib.cli.backend import BACKENDS

PROG = "gpt2-lib"
DEFAULT_PRESET = "gpt2_tiny_shakespeare_en"
SAMPLERS = ("greedy", "top_k", "top_p", "random", "beam")
DTYPES = ("float32", "bfloat16", "float16")
# `quantize()` modes that need no calibration data and save memory on any device.
QUANTIZE_MODES = ("int8", "int4")
QUANTIZE_HELP = ("quantize the weights after loading (and after --lora is merged): int8 "
                 "(0.26x the float32 bytes, faster decoding) or int4 (0.14x, weight-only, "
                 "+3.4%% perplexity, decodes slower than float32 on a CPU)")
COMMAND_MODULES = {
    "generate": "gpt2_lib.cli.generate",
    "finetune": "gpt2_lib.cli.finetune",
    "perplexity": "gpt2_lib.cli.perplexity",
    "presets": "gpt2_lib.cli.presets",
    "convert": "gpt2_lib.cli.convert",
}
# Commands that need no Keras backend (and import no Keras).
NO_BACKEND_COMMANDS = ("presets",)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with one-line errors: `gpt2-lib: error: <message> (see '... --help')`."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


# Argument types: each names the accepted values in its error message.


def positive_int(text):
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text):
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text):
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def probability(text):
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def fraction(text):
    value = _float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1), got {text!r}")
    return value


def max_length(text):
    value = _int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(
            f"must be an integer >= 2 (tokens, prompt included), got {text!r}"
        )
    return value


# The parser ----------------------------------------------------------------


def _add_backend(parser, default):
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=default,
        help="Keras backend (default: $KERAS_BACKEND, else the first installed of "
        "jax, torch, tensorflow); may also come before the command",
    )


def _add_compilation_cache(parser):
    parser.add_argument(
        "--no-compilation-cache", action="store_true",
        help="do not keep compiled XLA programs on disk (JAX; by default they are kept in "
        "$GPT2_LIB_CACHE or ~/.cache/gpt2_lib, so the next run's first call skips compiling)",
    )


def _add_model_arguments(parser, preset_help):
    """Arguments shared by the commands that load a model to run it."""
    parser.add_argument("--preset", default=DEFAULT_PRESET,
                        help=f"{preset_help} (default: {DEFAULT_PRESET})")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="compute and weight dtype (default: the preset's, float32)")
    parser.add_argument("--lora", metavar="FILE.lora.h5", default=None,
                        help="LoRA adapters (from `finetune --output X.lora.h5`) to apply "
                        "to the preset when it is loaded")
    parser.add_argument("--quantize", choices=QUANTIZE_MODES, default=None, help=QUANTIZE_HELP)
    _add_compilation_cache(parser)


def build_parser():
    parser = ArgumentParser(
        prog=PROG,
        description="GPT-2 for Keras 3: generate, fine-tune, evaluate and convert presets.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_backend(parser, None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=ArgumentParser)
    parser.command_parsers = {
        "generate": _generate_parser(commands),
        "finetune": _finetune_parser(commands),
        "perplexity": _perplexity_parser(commands),
        "convert": _convert_parser(commands),
    }
    _add_compilation_cache(parser.command_parsers["finetune"])
    presets = commands.add_parser(
        "presets", help="List the built-in presets.",
        description="List the built-in presets: name, parameters, description, source.",
    )
    presets.add_argument("--json", action="store_true", help="one JSON object per preset")
    parser.command_parsers["presets"] = presets
    return parser


def _generate_parser(commands):
    generate = commands.add_parser(
        "generate", help="Generate text from prompts.",
        description="Continue prompts with a GPT2CausalLM preset. Prompts come from the "
        "command line, or one per line from --input (a file, or - for stdin); with "
        "--input-field each line is a JSON object and the prompt is that field.",
    )
    _add_backend(generate, argparse.SUPPRESS)
    generate.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompt text")
    generate.add_argument("--input", "-i", metavar="FILE",
                          help="read prompts from FILE (- for stdin), one per line")
    generate.add_argument("--input-field", metavar="NAME",
                          help="--input is JSON Lines; the prompt is each object's NAME field")
    _add_model_arguments(generate, "preset name, handle or directory")
    length = generate.add_mutually_exclusive_group()
    length.add_argument("--max-length", type=max_length, default=None, metavar="TOKENS",
                        help="total length in tokens, prompt (and start token) included, as "
                        "KerasHub's max_length (default: 128)")
    length.add_argument("--max-new-tokens", type=positive_int, default=None, metavar="N",
                        help="at most N new tokens per prompt, as Transformers' max_new_tokens")
    generate.add_argument("--sampler", choices=SAMPLERS, default=None,
                          help="decoding strategy (default: top_k; implied by --top-k, --top-p "
                          "and --num-beams). Each name means what `compile(sampler=NAME)` means: "
                          "top_k is k=5 and top_p is p=0.1, as in KerasHub")
    generate.add_argument("--top-k", type=positive_int, default=None, metavar="K",
                          help="top-k sampling among the K most likely tokens (Transformers' "
                          "default is 50)")
    generate.add_argument("--top-p", type=probability, default=None, metavar="P",
                          help="nucleus sampling: the smallest set of tokens with probability >= P")
    generate.add_argument("--num-beams", type=positive_int, default=None, metavar="N",
                          help="beam search with N beams (never streams)")
    generate.add_argument("--temperature", type=positive_float, default=None, metavar="T",
                          help="divide the logits by T before sampling (default: 1.0; not "
                          "accepted with greedy search, which it cannot change)")
    generate.add_argument("--seed", type=_int, default=None,
                          help="seed for reproducible sampling (no effect on greedy/beam)")
    generate.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                          help="prompts generated together (default: 8)")
    generate.add_argument("--json", action="store_true",
                          help="print one JSON object per prompt: prompt, text, completion, "
                          "token counts, seconds")
    generate.add_argument("--no-stream", action="store_true",
                          help="print the text when it is complete instead of as it is produced "
                          "(several prompts, beam search and --json never stream)")
    return generate


def _finetune_parser(commands):
    finetune = commands.add_parser(
        "finetune", help="Fine-tune a preset on text.",
        description="Fine-tune a GPT2CausalLM preset on a UTF-8 text file (or JSON Lines with "
        "--text-field), fully or with LoRA adapters. The text is tokenized, joined and cut "
        "into windows of --sequence-length tokens. A checkpoint is written every "
        "--save-every steps and on Ctrl-C (resume with --resume); the result, the metrics "
        "(CSV, JSON, loss-curve PNG) are written atomically.",
    )
    _add_backend(finetune, argparse.SUPPRESS)
    finetune.add_argument("--preset", default=DEFAULT_PRESET,
                          help=f"preset to start from (default: {DEFAULT_PRESET})")
    finetune.add_argument("--data", required=True, metavar="FILE",
                          help="UTF-8 text file to train on (.jsonl: one JSON object per line)")
    finetune.add_argument("--text-field", metavar="NAME", default=None,
                          help="the data files are JSON Lines; train on each object's NAME field "
                          "(default for .jsonl files: text)")
    validation = finetune.add_mutually_exclusive_group()
    validation.add_argument("--validation-data", metavar="FILE",
                            help="held-out text: validation loss and perplexity are reported")
    validation.add_argument("--validation-split", type=fraction, metavar="FRACTION",
                            help="hold out this fraction of --data's windows (the last ones)")
    finetune.add_argument("--output", required=True,
                          help="new directory for the fine-tuned preset; a path ending in "
                          "'.lora.h5' (with --lora-rank) saves only the adapters")
    finetune.add_argument("--overwrite", action="store_true",
                          help="replace --output if it exists")
    finetune.add_argument("--lora-rank", type=positive_int, default=None, metavar="R",
                          help="train rank-R LoRA adapters instead of all weights")
    finetune.add_argument("--epochs", type=positive_int, default=1, metavar="N",
                          help="passes over the data (default: 1)")
    finetune.add_argument("--max-steps", type=positive_int, default=None, metavar="STEPS",
                          help="total training steps; overrides --epochs (as in Transformers' "
                          "Trainer)")
    finetune.add_argument("--batch-size", type=positive_int, default=4, metavar="N",
                          help="windows per step (default: 4)")
    finetune.add_argument("--sequence-length", type=max_length, default=128, metavar="TOKENS",
                          help="tokens per training window (default: 128)")
    finetune.add_argument("--learning-rate", type=positive_float, default=None, metavar="LR",
                          help="AdamW learning rate (default: 5e-5 full, 1e-3 LoRA); the rest "
                          "of the optimizer is compile()'s default")
    finetune.add_argument("--save-every", type=positive_int, default=200, metavar="STEPS",
                          help="write a resumable checkpoint every STEPS steps (default: 200), "
                          "and at each epoch's end and on Ctrl-C")
    finetune.add_argument("--eval-every", type=positive_int, default=None, metavar="STEPS",
                          help="validation every STEPS steps (default: at each epoch's end)")
    finetune.add_argument("--log-every", type=positive_int, default=10, metavar="STEPS",
                          help="a metrics row (and a progress line when the output is not a "
                          "terminal) every STEPS steps (default: 10)")
    finetune.add_argument("--tensorboard", metavar="DIR", default=None,
                          help="also write TensorBoard logs to DIR (needs TensorFlow and TensorBoard: the "
                          "[tensorboard] extra)")
    finetune.add_argument("--resume", action="store_true",
                          help="continue from the checkpoint an interrupted run left in "
                          "OUTPUT.checkpoint")
    finetune.add_argument("--seed", type=_int, default=1337, help="(default: 1337)")
    distributed = finetune.add_argument_group(
        "distributed training (JAX backend; keras.distribution)",
        "Train on a (data-parallel, model-parallel) mesh of all the devices JAX sees (of "
        "all processes). Data parallelism splits each --batch-size batch over N model "
        "replicas; model parallelism splits each weight over M devices. The result is the "
        "same as on one device. On a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=K "
        "gives K virtual devices. Several hosts: start the same command on each with "
        "--coordinator, --num-processes and its --process-id (or Keras' "
        "KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES and "
        "KERAS_DISTRIBUTION_PROCESS_ID); process 0 writes every file and prints the "
        "progress, --output must be on storage every process reads for --resume, and "
        "validation is not supported yet.",
    )
    distributed.add_argument("--data-parallel", type=positive_int, default=None, metavar="N",
                             help="model replicas the batch is split over; --batch-size must be "
                             "a multiple of N (default: the devices --model-parallel leaves)")
    distributed.add_argument("--model-parallel", type=positive_int, default=None, metavar="M",
                             help="devices each weight is split over (default: 1)")
    distributed.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                             help="address of process 0, which coordinates the processes")
    distributed.add_argument("--num-processes", type=positive_int, default=None, metavar="P",
                             help="number of processes (hosts) of the run")
    distributed.add_argument("--process-id", type=non_negative_int, default=None, metavar="I",
                             help="this process's index, 0 to P-1 (0 writes the outputs)")
    return finetune


def _perplexity_parser(commands):
    perplexity = commands.add_parser(
        "perplexity", help="Perplexity of a preset on a text file.",
        description="Per-token perplexity of a GPT2CausalLM preset on a UTF-8 text file.",
    )
    _add_backend(perplexity, argparse.SUPPRESS)
    perplexity.add_argument("data", help="UTF-8 text file")
    _add_model_arguments(perplexity, "preset name, handle or directory")
    perplexity.add_argument("--sequence-length", type=max_length, default=None, metavar="TOKENS",
                            help="window length in tokens (default: the preprocessor's)")
    perplexity.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                            help="windows per forward pass (default: 8)")
    perplexity.add_argument("--json", action="store_true", help="print one JSON object")
    return perplexity


def _convert_parser(commands):
    convert = commands.add_parser(
        "convert", help="Convert a preset between KerasHub and Transformers formats.",
        description="Load a preset (any name, handle or directory; a whole CausalLM or only "
        "a backbone) and write it in KerasHub's format (default) or Hugging Face "
        "Transformers' format, atomically, to a new directory.",
    )
    _add_backend(convert, argparse.SUPPRESS)
    convert.add_argument("source", help="preset name, handle or directory to read")
    convert.add_argument("output", help="directory to write (not the source)")
    convert.add_argument("--to", choices=("keras", "transformers"), default="keras",
                         help="output format (default: keras)")
    convert.add_argument("--dtype", choices=DTYPES, default=None,
                         help="convert the weights to this dtype (default: keep)")
    convert.add_argument("--quantize", choices=QUANTIZE_MODES, default=None,
                         help=QUANTIZE_HELP.replace("after --lora is merged", "before writing")
                         + "; KerasHub format only (a Transformers checkpoint holds float "
                         "weights)")
    convert.add_argument("--overwrite", action="store_true",
                         help="replace OUTPUT if it exists")
    return convert


# Checks across arguments -----------------------------------------------------


def check_args(parser, args):
    """Cross-argument checks; `parser.error()` (exit 2) on the first problem."""
    check = {"generate": _check_generate, "finetune": _check_finetune,
             "convert": _check_convert, "perplexity": _check_perplexity}.get(args.command)
    if check is not None:
        message = check(args)
        if message:
            parser.error(message)


def _check_generate(args):
    if args.max_length is None and args.max_new_tokens is None:
        args.max_length = 128
    if args.input is None and not args.prompts:
        return "give at least one PROMPT, or --input FILE (- for stdin)"
    if args.input_field is not None and args.input is None:
        return "argument --input-field: needs --input"
    if args.input is not None and args.input != "-":
        problem = _file_problem(args.input)
        if problem:
            return f"argument --input: {problem}"
    problem = _lora_problem(args.lora)
    if problem:
        return problem
    # --top-p with --top-k is nucleus sampling among the k most likely tokens
    # (TopPSampler(p, k)), as with Transformers' top_p and top_k together.
    implied = []
    if args.num_beams is not None:
        implied.append(("--num-beams", "beam"))
    if args.top_p is not None:
        implied.append(("--top-p", "top_p"))
    elif args.top_k is not None:
        implied.append(("--top-k", "top_k"))
    if len(implied) > 1:
        return f"arguments {implied[0][0]} and {implied[1][0]} choose different samplers; give one"
    if implied:
        option, sampler = implied[0]
        if args.sampler not in (None, sampler):
            return f"argument {option}: not used by --sampler {args.sampler} (it implies {sampler})"
        args.sampler = sampler
    elif args.top_k is not None and args.sampler not in (None, "top_k", "top_p"):
        return f"argument --top-k: not used by --sampler {args.sampler}"
    args.sampler = args.sampler or "top_k"
    if args.temperature is not None and args.sampler == "greedy":
        return ("argument --temperature: greedy search always takes the most likely token, "
                "so a temperature cannot change it; use --sampler random/top_k/top_p")
    if args.temperature is None:
        args.temperature = 1.0
    return None


def _check_perplexity(args):
    problem = _file_problem(args.data)
    if problem:
        return f"argument data: {problem}"
    return _lora_problem(args.lora)


def _check_finetune(args):
    for option, path in (("--data", args.data), ("--validation-data", args.validation_data)):
        if path is not None:
            problem = _file_problem(path)
            if problem:
                return f"argument {option}: {problem}"
    output = args.output
    adapters_only = output.endswith(".lora.h5")
    if adapters_only and args.lora_rank is None:
        return f"argument --output: {output!r} names a LoRA file; add --lora-rank"
    if args.eval_every is not None and not (args.validation_data or args.validation_split):
        return "argument --eval-every: needs --validation-data or --validation-split"
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        return f"argument --output: the folder {parent!r} does not exist"
    if os.path.exists(output) and not args.resume:
        if adapters_only:
            if os.path.isdir(output):
                return f"argument --output: {output!r} is a directory, not a .lora.h5 file"
            if not args.overwrite:
                return f"argument --output: {output!r} exists; pass --overwrite to replace it"
        elif not os.path.isdir(output):
            return (f"argument --output: {output!r} is an existing file; the fine-tuned preset "
                    "is a directory: choose a new path")
        elif os.listdir(output) and not args.overwrite:
            return (f"argument --output: {output!r} is a non-empty folder; choose a new path or "
                    "pass --overwrite to replace it")
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"argument --output: cannot write to the folder {parent!r}"
    if args.tensorboard is not None and os.path.isfile(args.tensorboard):
        return f"argument --tensorboard: {args.tensorboard!r} is a file, not a folder"
    return None


def _check_convert(args):
    if args.quantize is not None and args.to == "transformers":
        return (f"argument --quantize: a Transformers checkpoint holds float weights, so "
                f"{args.quantize} weights would be written dequantized; use --to keras to "
                "keep them quantized (or drop --quantize)")
    source = os.path.realpath(args.source)
    output = os.path.realpath(args.output)
    if os.path.exists(args.source) and (
        source == output or output.startswith(source + os.sep) or source.startswith(output + os.sep)
    ):
        return (f"OUTPUT {args.output!r} is the source {args.source!r} (or inside it): converting "
                "in place would replace the files being read; choose a new directory")
    if os.path.exists(args.output) and not args.overwrite:
        if not os.path.isdir(args.output):
            return f"argument output: {args.output!r} is an existing file; choose a new directory"
        if os.listdir(args.output):
            return (f"argument output: {args.output!r} is a non-empty folder; choose a new "
                    "directory or pass --overwrite")
    parent = os.path.dirname(output)
    if not os.path.isdir(parent):
        return f"argument output: the folder {parent!r} does not exist"
    return None


def _file_problem(path):
    if not os.path.exists(path):
        return f"file {path!r} does not exist"
    if os.path.isdir(path):
        return f"{path!r} is a directory; pass a UTF-8 text file"
    if not os.access(path, os.R_OK):
        return f"file {path!r} is not readable"
    return None


def _lora_problem(path):
    if path is None:
        return None
    if not path.endswith(".lora.h5"):
        return f"argument --lora: {path!r} is not a '.lora.h5' adapter file"
    problem = _file_problem(path)
    return f"argument --lora: {problem}" if problem else None


def parse_args(argv=None):
    """Parse and check `argv` (default: `sys.argv[1:]`); exits 2 on a bad argument."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    check_args(parser.command_parsers[args.command], args)
    return args
