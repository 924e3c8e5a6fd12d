"""`gpt2-lib convert`: a preset in KerasHub's or Transformers' format, to a new directory."""

import sys
import time

from gpt2_lib.cli.backend import quiet_native_stderr
from gpt2_lib.cli.errors import CLIError
from gpt2_lib.models import Backbone
from gpt2_lib.models import GPT2CausalLM


def _has_preprocessor_error(error):
    text = str(error).lower()
    return "tokenizer" in text or "preprocessor" in text or "task.json" in text


def load_model(source, dtype=None):
    """The preset as a `GPT2CausalLM`, or as a bare backbone when it has no tokenizer."""
    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        lm = GPT2CausalLM.from_preset(source, **kwargs)
    except (ValueError, FileNotFoundError) as error:
        if not _has_preprocessor_error(error):
            raise
        return Backbone.from_preset(source, **kwargs)
    return lm.backbone if lm.preprocessor is None else lm


def _write(model, args):
    if args.to == "transformers":
        model.export_to_transformers(args.output)
    else:
        model.save_to_preset(args.output)


def run(args):
    start = time.perf_counter()
    model = load_model(args.source, args.dtype)
    if args.quantize is not None:
        model.quantize(args.quantize)
    loaded = time.perf_counter()
    kind = "backbone only" if isinstance(model, Backbone) else "backbone + tokenizer"
    if args.quantize is not None:
        kind += f", {args.quantize} weights"
    try:
        # Keras' serialization imports TensorFlow when it is installed, whatever the backend.
        with quiet_native_stderr():
            _write(model, args)
    except FileExistsError as error:
        raise CLIError(str(error)) from None
    end = time.perf_counter()
    print(
        f"wrote {args.output} ({args.to} format, {kind}) in {end - start:.1f} s "
        f"(load {loaded - start:.1f} s, write {end - loaded:.1f} s)",
        file=sys.stderr,
    )
