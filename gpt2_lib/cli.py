"""The `gpt2-lib` command line: generate, finetune, perplexity, presets, convert.

Keras reads its backend when it is first imported, so this module imports
nothing from Keras or gpt2_lib's models until the arguments are parsed and
`KERAS_BACKEND` is set.

    gpt2-lib generate "ROMEO:"
    gpt2-lib finetune --preset gpt2_tiny_shakespeare_en --data my.txt --lora-rank 8 --output ./mine
    gpt2-lib perplexity --preset ./mine held_out.txt
    gpt2-lib presets
    gpt2-lib convert hf://openai-community/gpt2 ./gpt2_keras
"""

import argparse
import importlib.util
import os
import sys

DEFAULT_PRESET = "gpt2_tiny_shakespeare_en"
BACKENDS = ("jax", "torch", "tensorflow")
SAMPLERS = ("greedy", "top_k", "top_p", "random", "beam")


class CLIError(Exception):
    """A user-facing error: printed as `gpt2-lib: error: ...`, exit status 2."""


def installed_backends():
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


def choose_backend(requested):
    """--backend, else $KERAS_BACKEND, else the first installed (JAX first)."""
    installed = installed_backends()
    backend = requested or os.environ.get("KERAS_BACKEND") or (installed[0] if installed else None)
    if backend is None:
        raise CLIError(
            "no Keras backend is installed; install one, e.g. `pip install gpt2-lib[jax]`."
        )
    if backend not in BACKENDS:
        raise CLIError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend not in installed:
        raise CLIError(
            f"backend {backend!r} is not installed (installed: {', '.join(installed) or 'none'}); "
            f"install it with `pip install gpt2-lib[{backend}]` or pick another with --backend."
        )
    return backend


def build_parser():
    parser = argparse.ArgumentParser(
        prog="gpt2-lib",
        description="GPT-2 for Keras 3: generate, fine-tune, evaluate and convert presets.",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras backend (default: $KERAS_BACKEND, else the first installed of "
        "jax, torch, tensorflow).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    generate = commands.add_parser(
        "generate", help="Generate text from one or more prompts.",
        description="Generate text from one or more prompts with a GPT2CausalLM preset.",
    )
    generate.add_argument("prompts", nargs="+", metavar="PROMPT", help="prompt text")
    generate.add_argument("--preset", default=DEFAULT_PRESET,
                          help=f"preset name, handle or directory (default: {DEFAULT_PRESET})")
    generate.add_argument("--max-length", type=int, default=128,
                          help="total length in tokens, prompt included (default: 128)")
    generate.add_argument("--sampler", choices=SAMPLERS, default="top_k",
                          help="sampling strategy (default: top_k)")
    generate.add_argument("--temperature", type=float, default=1.0,
                          help="sampling temperature (default: 1.0)")
    generate.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    generate.add_argument("--no-stream", action="store_true",
                          help="print the text when it is complete instead of as it is produced "
                          "(several prompts and beam search never stream)")

    finetune = commands.add_parser(
        "finetune", help="Fine-tune a preset on a text file.",
        description="Fine-tune a GPT2CausalLM preset on a UTF-8 text file (fully, or "
        "with LoRA adapters) and save the result atomically.",
    )
    finetune.add_argument("--preset", default=DEFAULT_PRESET,
                          help=f"preset to start from (default: {DEFAULT_PRESET})")
    finetune.add_argument("--data", required=True, help="UTF-8 text file to train on")
    finetune.add_argument("--output", required=True,
                          help="directory for the fine-tuned preset; a path ending in "
                          "'.lora.h5' (with --lora-rank) saves only the adapters")
    finetune.add_argument("--lora-rank", type=int, default=None,
                          help="train rank-R LoRA adapters instead of all weights")
    finetune.add_argument("--epochs", type=int, default=1, help="passes over the data (default: 1)")
    finetune.add_argument("--batch-size", type=int, default=4, help="(default: 4)")
    finetune.add_argument("--sequence-length", type=int, default=128,
                          help="tokens per training example (default: 128)")
    finetune.add_argument("--learning-rate", type=float, default=None,
                          help="AdamW learning rate (default: 5e-5 full, 1e-3 LoRA)")
    finetune.add_argument("--max-steps", type=int, default=None,
                          help="stop after this many batches per epoch")
    finetune.add_argument("--resume", action="store_true",
                          help="continue from the checkpoint an interrupted run left in "
                          "OUTPUT.checkpoint")
    finetune.add_argument("--seed", type=int, default=1337, help="(default: 1337)")

    perplexity = commands.add_parser(
        "perplexity", help="Perplexity of a preset on a text file.",
        description="Per-token perplexity of a GPT2CausalLM preset on a UTF-8 text file.",
    )
    perplexity.add_argument("data", help="UTF-8 text file")
    perplexity.add_argument("--preset", default=DEFAULT_PRESET,
                            help=f"preset name, handle or directory (default: {DEFAULT_PRESET})")
    perplexity.add_argument("--sequence-length", type=int, default=None,
                            help="window length in tokens (default: the preprocessor's)")
    perplexity.add_argument("--batch-size", type=int, default=8, help="(default: 8)")

    commands.add_parser(
        "presets", help="List the built-in presets.",
        description="List the built-in presets: name, parameters, description, source.",
    )

    convert = commands.add_parser(
        "convert", help="Convert a preset between KerasHub and Transformers formats.",
        description="Load a preset (any name, handle or directory) and write it in "
        "KerasHub's format (default) or Hugging Face Transformers' format.",
    )
    convert.add_argument("source", help="preset name, handle or directory to read")
    convert.add_argument("output", help="directory to write")
    convert.add_argument("--to", choices=("keras", "transformers"), default="keras",
                         help="output format (default: keras)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command != "presets":
            os.environ["KERAS_BACKEND"] = choose_backend(args.backend)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from gpt2_lib import commands

        return getattr(commands, args.command)(args) or 0
    except KeyboardInterrupt:
        print("gpt2-lib: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, FileNotFoundError, PermissionError,
            IsADirectoryError, NotADirectoryError, ConnectionError, OSError) as error:
        print(f"gpt2-lib: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
