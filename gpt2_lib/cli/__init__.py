"""The `gpt2-lib` command line: generate, finetune, perplexity, presets, convert.

Layout (no module imports one above it; nothing here imports Keras until
the backend is chosen):

- `app`: `main()`: parse, set the backend, run a command, map errors to exit codes.
- `parser`: the argparse tree and every check that needs no model (plain Python).
- `backend`: choose `KERAS_BACKEND` and import Keras (quietly) on it.
- `errors`: `CLIError` (exit 2) and `TrainingInterrupted` (exit 130/143).
- one module per command (`generate`, `finetune`, `perplexity`, `presets`,
  `convert`), imported by `app` once the backend is set;
- `common` (loading a model, reading text), `prompts`, `training_data`,
  `training_callbacks`, `checkpoint`, `metrics_record`: what the commands share.

    gpt2-lib generate "ROMEO:"
    gpt2-lib finetune --data my.txt --lora-rank 8 --output ./mine
    gpt2-lib perplexity --preset ./mine held_out.txt
    gpt2-lib presets
    gpt2-lib convert hf://openai-community/gpt2 ./gpt2_keras
"""

from gpt2_lib.cli.app import main

__all__ = ["main"]
