"""What the model commands share: loading a CausalLM, reading text, seeding.

Imported only after the backend is set (it imports Keras and the models).
"""

import json
import random

import keras
import numpy as np

from gpt2_lib.cli.errors import CLIError
from gpt2_lib.models import GPT2CausalLM


def load_causal_lm(preset, dtype=None, lora=None, quantize=None, need_tokenizer=True):
    """`GPT2CausalLM.from_preset(preset)` with the command's options applied.

    Args:
        preset: a preset name, handle or directory.
        dtype: None (the preset's) or a dtype name for weights and compute.
        lora: optional `.lora.h5` file of adapters, loaded and merged.
        quantize: optional `quantize()` mode, applied last (after merging).
        need_tokenizer: fail clearly when the preset has no preprocessor.
    """
    kwargs = {} if dtype is None else {"dtype": dtype}
    lm = GPT2CausalLM.from_preset(preset, **kwargs)
    if need_tokenizer and lm.preprocessor is None:
        raise CLIError(
            f"preset {preset!r} has no tokenizer (a backbone-only preset); it cannot read text. "
            "Use a CausalLM preset, or add a tokenizer to it."
        )
    if lora is not None:
        lm.backbone.load_lora_weights(lora)
        # The same function, one matmul per layer fewer.
        lm.backbone.merge_lora_weights()
    if quantize is not None:
        lm.quantize(quantize)
    return lm


def read_text(path, option="data file"):
    """The UTF-8 text of `path`, with clear errors for missing, binary or empty files."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise CLIError(f"{option} {path!r} does not exist.") from None
    except IsADirectoryError:
        raise CLIError(f"{option} {path!r} is a directory; pass a UTF-8 text file.") from None
    except UnicodeDecodeError as error:
        raise CLIError(f"{option} {path!r} is not UTF-8 text ({error}).") from None
    if not text.strip():
        raise CLIError(f"{option} {path!r} is empty; it needs some text to work on.")
    return text


def read_documents(path, text_field=None, option="--data"):
    """The documents of a data file: the whole text, or one per JSON line.

    Args:
        path: a UTF-8 text file, or JSON Lines when `text_field` is given or
            the name ends in `.jsonl` (then `text_field` defaults to `"text"`).
        text_field: the field of each JSON object holding the text.
    """
    if text_field is None and not path.endswith(".jsonl"):
        return [read_text(path, option)]
    field = text_field or "text"
    documents = []
    for number, line in enumerate(read_text(path, option).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CLIError(f"{option} {path!r} line {number} is not JSON ({error.msg}).") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise CLIError(
                f"{option} {path!r} line {number} has no string field {field!r}; "
                "choose the field with --text-field."
            )
        documents.append(record[field])
    if not any(d.strip() for d in documents):
        raise CLIError(f"{option} {path!r} has no text in field {field!r}.")
    return documents


def seed_everything(seed):
    """Seed Python, NumPy, Keras and the backend, without importing TensorFlow.

    `keras.utils.set_random_seed` also seeds TensorFlow whenever it is
    installed, importing it (seconds, and its log lines) even on JAX or
    PyTorch; on those backends the same seeding is done here without it.
    """
    if keras.config.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    random.seed(seed)
    np.random.seed(seed)
    try:  # What set_random_seed does besides seeding TensorFlow.
        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator

        global_state.set_global_attribute("global_random_seed", seed)
        global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    except ImportError:  # A Keras without these internals: the public call.
        keras.utils.set_random_seed(seed)
        return
    if keras.config.backend() == "torch":
        import torch

        torch.manual_seed(seed)


def score_windows(lm, windows, batch_size, should_stop=None):
    """`(total NLL in nats, predicted tokens)` of `lm` over token `windows`.

    Args:
        lm: a `CausalLM`.
        windows: list of 1-D int arrays (at least 2 tokens each).
        batch_size: windows per forward pass.
        should_stop: optional callable; when it returns True the loop stops
            early and returns what it has (used on Ctrl-C during training).
    """
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        if should_stop is not None and should_stop():
            break
        batch = windows[start : start + batch_size]
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
    return total, count
