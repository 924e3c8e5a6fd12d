"""Reading BPE vocabulary and merges files.

Vocabularies are JSON objects mapping token strings to integer ids: OpenAI's
`encoder.json`, Transformers' `vocab.json` and KerasHub's `vocabulary.json`
all have this form. Merges files list one rule `first second` per line, in
rank order, with an optional `#version` header: OpenAI's `vocab.bpe`,
Transformers' and KerasHub's `merges.txt`.
"""

import json
import os

import numpy as np

from gpt2_lib.utils.text_inputs import describe

VOCAB_FILENAME = "vocabulary.json"
MERGES_FILENAME = "merges.txt"
MERGES_HEADER = "#version: 0.2"


def _check_path_readable(path, what):
    if not os.path.isfile(path):
        raise ValueError(
            f"Could not read the {what} file {path!r}: no such file. Pass an "
            f"existing file path or the {what} itself as a Python object."
        )


def read_vocabulary(vocabulary):
    """Read a vocabulary from a dict or a JSON file path.

    Both OpenAI's `encoder.json` and Transformers' `vocab.json` are a JSON
    object mapping token strings to integer ids.

    Returns:
        A new dict mapping `str` tokens to `int` ids.
    """
    if isinstance(vocabulary, (str, os.PathLike)):
        path = os.fspath(vocabulary)
        _check_path_readable(path, "vocabulary")
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(
                f"Could not read the vocabulary file {path!r}: {e}. It must be "
                "a UTF-8 JSON object mapping tokens to integer ids, like "
                "OpenAI's `encoder.json` or Transformers' `vocab.json`."
            ) from e
        source = f"vocabulary file {path!r}"
    elif isinstance(vocabulary, dict):
        data = vocabulary
        source = "vocabulary"
    else:
        raise TypeError(
            "`vocabulary` must be a dict mapping string tokens to integer ids, "
            "or the path of a JSON file holding one. Received: "
            f"type(vocabulary)={type(vocabulary).__name__}."
        )
    if not isinstance(data, dict):
        raise ValueError(
            f"The {source} must hold a JSON object mapping tokens to ids. "
            f"Received a {type(data).__name__}."
        )
    values = list(data.values())
    if (
        all(type(t) is str for t in data)
        and all(type(v) is int for v in values)
        and min(values, default=0) >= 0
        and len(set(values)) == len(values)
    ):
        return dict(data)  # The common, valid case, checked in C loops.
    result = {}
    seen = {}
    for token, id in data.items():
        if not isinstance(token, str):
            raise TypeError(
                f"Vocabulary tokens must be strings. Received the key "
                f"{describe(token)} in the {source}."
            )
        if isinstance(id, (bool, np.bool_)) or not isinstance(id, (int, np.integer)):
            raise TypeError(
                f"Vocabulary ids must be integers. Received {describe(id)} "
                f"for token {describe(token)} in the {source}."
            )
        id = int(id)
        if id < 0:
            raise ValueError(
                f"Vocabulary ids must be non-negative. Received {id} for "
                f"token {describe(token)} in the {source}."
            )
        if id in seen:
            raise ValueError(
                f"Vocabulary id {id} is used by two tokens, "
                f"{describe(seen[id])} and {describe(token)}, in the "
                f"{source}. Each id must name one token."
            )
        seen[id] = token
        result[token] = id
    return result


def read_merges(merges):
    """Read merge rules from a list or a merges file path.

    Accepts OpenAI's `vocab.bpe` and Transformers' `merges.txt` (one rule
    `"first second"` per line, an optional `#version` header), or a list of
    `"first second"` strings or `(first, second)` pairs.

    Returns:
        A list of `(first, second)` string pairs in rank order.
    """
    if isinstance(merges, (str, os.PathLike)):
        path = os.fspath(merges)
        _check_path_readable(path, "merges")
        try:
            with open(path, "r", encoding="utf-8", newline="") as f:
                lines = f.read().split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(
                f"Could not read the merges file {path!r}: {e}. It must be a "
                "UTF-8 text file with one merge rule `first second` per line, "
                "like OpenAI's `vocab.bpe` or Transformers' `merges.txt`."
            ) from e
        source = f"merges file {path!r}"
    elif isinstance(merges, (list, tuple)):
        lines = merges
        source = "merges"
    else:
        raise TypeError(
            "`merges` must be a list of merge rules (`'first second'` "
            "strings or `(first, second)` pairs) or the path of a merges "
            f"file. Received: type(merges)={type(merges).__name__}."
        )
    if all(type(line) is str for line in lines):
        # Fast path for well-formed files and lists (checked in C loops).
        split = [parts for parts in (line.split() for line in lines) if parts]
        if split and split[0][0].startswith("#version"):
            split = split[1:]
        if all(len(parts) == 2 for parts in split) and not any(
            parts[0].startswith("#version") for parts in split
        ):
            return [(parts[0], parts[1]) for parts in split]
    pairs = []
    for index, line in enumerate(lines):
        if isinstance(line, (tuple, list)):
            parts = list(line)
        elif isinstance(line, str):
            stripped = line.strip("\r\n")
            if not stripped.strip() or stripped.lstrip().startswith("#version"):
                continue
            parts = stripped.split()
        else:
            raise TypeError(
                f"Merge rule {index} in the {source} must be a string "
                f"`'first second'` or a pair. Received {describe(line)}."
            )
        if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
            raise ValueError(
                f"Merge rule {index} in the {source} is malformed: "
                f"{describe(line)}. Each rule is two tokens separated by one "
                "space, e.g. 'Ġ t'."
            )
        pairs.append((parts[0], parts[1]))
    return pairs
