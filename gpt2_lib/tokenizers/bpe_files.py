"""Reading and writing BPE vocabulary and merges files.

Vocabularies are JSON objects mapping token strings to integer ids: OpenAI's
`encoder.json`, Transformers' `vocab.json` and KerasHub's `vocabulary.json`
all have this form. Merges files list one rule `first second` per line, in
rank order, with an optional `#version` header: OpenAI's `vocab.bpe`,
Transformers' and KerasHub's `merges.txt`.

Errors about a file name the file, the line and what was expected, and never
quote the file's content: a preset's `tokenizer.json` may point the loader
at a file that is not a vocabulary at all.
"""

import json
import os

import numpy as np

from gpt2_lib.utils.atomic import atomic_file
from gpt2_lib.utils.text_inputs import describe

VOCAB_FILENAME = "vocabulary.json"
MERGES_FILENAME = "merges.txt"
MERGES_HEADER = "#version: 0.2"

_VOCABULARY_FORMAT = (
    "It must be a UTF-8 JSON object mapping tokens to integer ids, like "
    "OpenAI's `encoder.json` or Transformers' `vocab.json`."
)
_MERGES_FORMAT = (
    "It must be a UTF-8 text file with one merge rule `first second` per "
    "line, like OpenAI's `vocab.bpe` or Transformers' `merges.txt`."
)


# How errors name a JSON value that is not an id, without quoting it.
_JSON_KINDS = {
    str: "a string",
    float: "a number with a fraction",
    bool: "a boolean",
    list: "a list",
    dict: "an object",
}


def _read_text(path, what, expected):
    """The UTF-8 text of the file at `path`, with errors that quote nothing."""
    if not os.path.isfile(path):
        problem = "not a regular file" if os.path.exists(path) else "no such file"
        raise ValueError(
            f"Could not read the {what} file {path!r}: {problem}. Pass an "
            f"existing file path or the {what} itself as a Python object."
        )
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(
            f"Could not read the {what} file {path!r}: {e.strerror or e}."
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"Could not read the {what} file {path!r}: line {line} is not "
            f"valid UTF-8 ({e.reason}). {expected}"
        ) from None


def _json_entries(text):
    """Yield `(token, id, line)` for each entry of a JSON object, in order.

    Only called on text that `json.loads` has parsed into a dict, to find the
    line of an entry for an error message.
    """
    decoder = json.JSONDecoder()
    space = " \t\n\r"
    line, counted = 1, 0

    def skip(i):
        while text[i] in space:
            i += 1
        return i

    i = skip(0) + 1  # The opening brace.
    while True:
        i = skip(i)
        if text[i] == "}":
            return
        line += text.count("\n", counted, i)
        counted = i
        token, i = decoder.raw_decode(text, i)
        i = skip(i) + 1  # The colon.
        id, i = decoder.raw_decode(text, skip(i))
        yield token, id, line
        i = skip(i)
        if text[i] == ",":
            i += 1


def _check_file_vocabulary(data, text, source):
    """Raise the error for the first invalid entry of a vocabulary file."""
    lines = {}
    for token, id, line in _json_entries(text):
        lines[token] = line  # Like `json.loads`, the last duplicate wins.
    first_line = {}
    for token, id in data.items():
        line = lines[token]
        if type(id) is not int:
            raise ValueError(
                f"Line {line} of the {source} gives a token the id "
                f"{_JSON_KINDS.get(type(id), 'null')}; expected a non-negative "
                f"integer. {_VOCABULARY_FORMAT}"
            )
        if id < 0:
            raise ValueError(
                f"Line {line} of the {source} gives a token a negative id; "
                "ids must be non-negative integers."
            )
        if id in first_line:
            a, b = sorted((first_line[id], line))
            raise ValueError(
                f"Lines {a} and {b} of the {source} give two tokens the same "
                "id; each id must name one token."
            )
        first_line[id] = line


def _check_vocabulary_object(data, source):
    """Raise the error for the first invalid entry of a vocabulary dict."""
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
        if id < 0:
            raise ValueError(
                f"Vocabulary ids must be non-negative. Received {int(id)} for "
                f"token {describe(token)} in the {source}."
            )
        if int(id) in seen:
            raise ValueError(
                f"Vocabulary id {int(id)} is used by two tokens, "
                f"{describe(seen[int(id)])} and {describe(token)}, in the "
                f"{source}. Each id must name one token."
            )
        seen[int(id)] = token


def read_vocabulary(vocabulary):
    """Read a vocabulary from a dict or a JSON file path.

    Args:
        vocabulary: a dict mapping `str` tokens to `int` ids, or the path of
            a JSON file holding one (OpenAI's `encoder.json`, Transformers'
            `vocab.json`, KerasHub's `vocabulary.json`).

    Returns:
        A new dict mapping `str` tokens to `int` ids.

    Example:

    >>> read_vocabulary({"a": 0, "b": 1})
    {'a': 0, 'b': 1}
    """
    text = None
    if isinstance(vocabulary, (str, os.PathLike)):
        path = os.fspath(vocabulary)
        source = f"vocabulary file {path!r}"
        text = _read_text(path, "vocabulary", _VOCABULARY_FORMAT)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"Could not read the {source}: it is not valid JSON (line "
                f"{e.lineno}, column {e.colno}). {_VOCABULARY_FORMAT}"
            ) from None
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
    if text is not None:
        _check_file_vocabulary(data, text, source)
    else:
        _check_vocabulary_object(data, source)
    # Valid, with NumPy integer ids (a Python object).
    return {token: int(id) for token, id in data.items()}


def read_merge_rules(merges):
    """Read merge rules and the line each one comes from.

    Args:
        merges: a list of `"first second"` strings or `(first, second)`
            pairs, or the path of a merges file (see `read_merges()`).

    Returns:
        `(pairs, lines)`: the `(first, second)` pairs in rank order, and the
        1-based line number of each rule in the file (`None` for a list).

    Example:

    >>> read_merge_rules(["Ġ t", ("h", "e")])
    ([('Ġ', 't'), ('h', 'e')], None)
    """
    if isinstance(merges, (str, os.PathLike)):
        path = os.fspath(merges)
        text = _read_text(path, "merges", _MERGES_FORMAT)
        pairs = []
        lines = []
        for number, line in enumerate(text.split("\n"), 1):
            parts = line.split()
            if not parts or parts[0].startswith("#version"):
                continue
            if len(parts) != 2:
                raise ValueError(
                    f"Line {number} of the merges file {path!r} is not a merge "
                    f"rule: expected two tokens separated by a space (like "
                    f"'Ġ t'), found {len(parts)}. {_MERGES_FORMAT}"
                )
            pairs.append((parts[0], parts[1]))
            lines.append(number)
        return pairs, lines
    if not isinstance(merges, (list, tuple)):
        raise TypeError(
            "`merges` must be a list of merge rules (`'first second'` "
            "strings or `(first, second)` pairs) or the path of a merges "
            f"file. Received: type(merges)={type(merges).__name__}."
        )
    pairs = []
    for index, rule in enumerate(merges):
        if isinstance(rule, (tuple, list)):
            parts = list(rule)
        elif isinstance(rule, str):
            parts = rule.split()
            if not parts or parts[0].startswith("#version"):
                continue
        else:
            raise TypeError(
                f"Merge rule {index} in the merges must be a string "
                f"`'first second'` or a pair. Received {describe(rule)}."
            )
        if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
            raise ValueError(
                f"Merge rule {index} in the merges is malformed: "
                f"{describe(rule)}. Each rule is two tokens separated by one "
                "space, e.g. 'Ġ t'."
            )
        pairs.append((parts[0], parts[1]))
    return pairs, None


def read_merges(merges):
    """Read merge rules from a list or a merges file path.

    Accepts OpenAI's `vocab.bpe` and Transformers' `merges.txt` (one rule
    `"first second"` per line, an optional `#version` header), or a list of
    `"first second"` strings or `(first, second)` pairs.

    Returns:
        A list of `(first, second)` string pairs in rank order.

    Example:

    >>> read_merges(["#version: 0.2", "Ġ t", ("h", "e")])
    [('Ġ', 't'), ('h', 'e')]
    """
    return read_merge_rules(merges)[0]


def write_vocabulary(path, vocabulary):
    """Write `vocabulary` (`{token: id}`) as a JSON file, atomically.

    Example:

    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_vocabulary(os.path.join(tmp, "vocabulary.json"), {"Ġt": 0})
    ...     read_vocabulary(os.path.join(tmp, "vocabulary.json"))
    {'Ġt': 0}
    """
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(vocabulary, ensure_ascii=False))


def write_merges(path, merges):
    """Write `(first, second)` pairs as a merges file, atomically.

    The file starts with Transformers' `#version: 0.2` header, which
    KerasHub, Transformers and this package skip when reading.

    Example:

    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_merges(os.path.join(tmp, "merges.txt"), [("Ġ", "t")])
    ...     read_merge_rules(os.path.join(tmp, "merges.txt"))
    ([('Ġ', 't')], [2])
    """
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(MERGES_HEADER + "\n")
            for first, second in merges:
                f.write(f"{first} {second}\n")
