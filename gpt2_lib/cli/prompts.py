"""Reading `generate`'s prompts: arguments, a file or stdin, plain lines or JSON Lines."""

import json
import sys

from gpt2_lib.cli.errors import CLIError


def read_prompts(prompts, input_path=None, input_field=None):
    """The prompts to generate from, in order.

    Args:
        prompts: prompts given on the command line.
        input_path: None, a file, or `"-"` for stdin: one prompt per line
            (empty lines are skipped).
        input_field: if set, each line of the input is a JSON object and the
            prompt is its `input_field` string.

    Returns:
        A list of `(source, prompt)`: `source` names where each came from
        (`"argument 1"`, `"prompts.txt line 3"`) for error messages.
    """
    result = [(f"argument {i}", p) for i, p in enumerate(prompts, 1)]
    if input_path is not None:
        name = "stdin" if input_path == "-" else input_path
        if input_path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            try:
                with open(input_path, encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except UnicodeDecodeError as error:
                raise CLIError(f"--input {name!r} is not UTF-8 text ({error}).") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            source = f"{name} line {number}"
            if input_field is None:
                result.append((source, line))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CLIError(f"{source} is not JSON ({error.msg}); drop --input-field for "
                               "plain text prompts.") from None
            if not isinstance(record, dict) or not isinstance(record.get(input_field), str):
                raise CLIError(f"{source} has no string field {input_field!r}.")
            result.append((source, record[input_field]))
        if not result:
            raise CLIError(f"--input {name!r} has no prompts (it is empty).")
    for source, prompt in result:
        if not prompt:
            raise CLIError(f"the prompt of {source} is empty; give every prompt some text.")
    return result
