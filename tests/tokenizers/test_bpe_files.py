"""Vocabulary and merges files: errors name the file and the line, and never
quote the file's content (issue #15), and saved files are written atomically.
"""

import json
import os
import shutil
import traceback

import pytest

from gpt2_lib.tokenizers import BytePairTokenizer
from gpt2_lib.tokenizers import GPT2Tokenizer
from gpt2_lib.tokenizers.bpe_files import read_merge_rules
from gpt2_lib.tokenizers.bpe_files import read_vocabulary
from tests.tokenizers.helpers import byte_vocabulary

EOT = "<|endoftext|>"
SECRET = "hunter2-S3CRET"
MERGES = ["Ġ t", "h e", "Ġt he"]


def full_text(error):
    """Everything a traceback of `error` would print, chained errors included."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def write(path, content):
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
        f.write(content)
    return str(path)


@pytest.fixture
def files(tmp_path):
    """A valid vocabulary file and merges file, and a writer for bad ones."""
    vocab = write(tmp_path / "vocab.json", json.dumps(byte_vocabulary(MERGES)))
    merges = write(tmp_path / "merges.txt", "#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return vocab, merges, tmp_path


def check_error(error, path, *fragments):
    message = str(error)
    assert SECRET not in full_text(error)
    assert repr(path) in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    "content, fragments",
    [
        # Three fields on line 4.
        ("#version: 0.2\nĠ t\nh e\n" + SECRET + " is here\n", ["Line 4", "two tokens"]),
        # One field on line 2 (no header).
        ("Ġ t\n" + SECRET + "\n", ["Line 2", "found 1"]),
        # Not UTF-8 on line 3.
        ("Ġ t\nh e\n".encode("utf-8") + SECRET.encode() + b" \xff\xfe\n", ["line 3", "UTF-8"]),
    ],
)
def test_malformed_merges_file_is_not_quoted(files, content, fragments):
    vocab, _, tmp_path = files
    path = write(tmp_path / "bad_merges.txt", content)
    with pytest.raises(ValueError) as info:
        BytePairTokenizer(vocab, path)
    check_error(info.value, path, *fragments)


def test_merge_rule_missing_from_vocabulary_is_not_quoted(files):
    vocab, _, tmp_path = files
    path = write(tmp_path / "merges.txt", "#version: 0.2\nĠ t\n\nSEC RET\n")
    with pytest.raises(ValueError, match="do not match") as info:
        BytePairTokenizer(vocab, path)
    check_error(info.value, path, "line 4", repr(vocab))
    assert "SEC" not in str(info.value)


@pytest.mark.parametrize(
    "content, fragments",
    [
        (f"{SECRET}\n", ["not valid JSON", "line 1, column 1"]),
        ('{\n"a": 0,\n"' + SECRET + '": 1\n', ["not valid JSON", "line 4"]),
        ('{"a": 0,\n  "' + SECRET + '": "1"}', ["Line 2", "a string", "non-negative integer"]),
        ('{"a": 0,\n"b": 1,\n\n  "' + SECRET + '": -5}', ["Line 4", "negative id"]),
        ('{"a": 7,\n"' + SECRET + '": 7}', ["Lines 1 and 2", "same id"]),
        ('{"' + SECRET + '": 1.5}', ["Line 1", "fraction"]),
        ('["' + SECRET + '"]', ["JSON object", "list"]),
        (("{\n" + '"' + SECRET).encode("utf-8") + b'\xc3": 1}', ["line 2", "UTF-8"]),
    ],
)
def test_bad_vocabulary_file_is_not_quoted(files, content, fragments):
    _, merges, tmp_path = files
    path = write(tmp_path / "bad_vocab.json", content)
    with pytest.raises(ValueError) as info:
        BytePairTokenizer(path, merges)
    check_error(info.value, path, *fragments)


def test_engine_error_does_not_quote_merged_tokens(tmp_path):
    # Rule 0 uses a token that only rule 3 makes: tiktoken cannot be exact.
    merges = ["SECR ET", "S E", "C R", "SE CR", "E T"]
    vocab_path = write(tmp_path / "vocab.json", json.dumps(byte_vocabulary(merges)))
    merges_path = write(tmp_path / "merges.txt", "\n".join(merges) + "\n")
    with pytest.raises(ValueError, match="engine='tiktoken'") as info:
        BytePairTokenizer(vocab_path, merges_path, engine="tiktoken")
    assert "merge rule 0" in str(info.value)
    assert "SEC" not in full_text(info.value)
    tokenizer = BytePairTokenizer(vocab_path, merges_path)
    assert tokenizer.engine == "python" and "SEC" not in tokenizer.engine_note


def test_preset_with_a_secret_in_its_merges_file(tmp_path):
    """The real attack path: loading a preset someone else wrote."""
    shipped = os.path.join(
        os.path.dirname(__file__), "..", "..", "presets", "gpt2_tiny_shakespeare_en"
    )
    preset = tmp_path / "preset"
    shutil.copytree(os.path.join(shipped, "assets"), preset / "assets")
    shutil.copy(os.path.join(shipped, "tokenizer.json"), preset / "tokenizer.json")
    merges = preset / "assets" / "tokenizer" / "merges.txt"
    lines = merges.read_text(encoding="utf-8").split("\n")
    lines.insert(5, f"{SECRET} a b")
    merges.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError) as info:
        GPT2Tokenizer.from_preset(str(preset))
    assert SECRET not in full_text(info.value)
    assert "Line 6" in str(info.value)


def test_valid_files_read_like_json_and_lines(files):
    vocab, merges, _ = files
    with open(vocab, encoding="utf-8") as f:
        assert read_vocabulary(vocab) == json.load(f)
    pairs, lines = read_merge_rules(merges)
    assert pairs == [tuple(m.split()) for m in MERGES]
    assert lines == [2, 3, 4]
    assert read_merge_rules(MERGES) == (pairs, None)


def test_duplicate_json_keys_keep_the_last_value_like_json(tmp_path):
    path = write(tmp_path / "v.json", '{"a": 1,\n"b": 2,\n"a": 3}')
    assert read_vocabulary(path) == {"a": 3, "b": 2}
    path = write(tmp_path / "w.json", '{"a": 1,\n"b": 2,\n"a": 2}')
    with pytest.raises(ValueError, match="Lines 2 and 3"):
        read_vocabulary(path)


def test_save_assets_is_atomic(tmp_path, monkeypatch):
    tokenizer = BytePairTokenizer(byte_vocabulary(MERGES), MERGES, unsplittable_tokens=[EOT])
    tokenizer.save_assets(str(tmp_path))
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    other = BytePairTokenizer(byte_vocabulary(MERGES[:1]), MERGES[:1])

    def fail(*args, **kwargs):
        raise OSError("disk full")

    # A write that fails half way leaves the previous files untouched.
    monkeypatch.setattr(json, "dumps", fail)
    with pytest.raises(OSError, match="disk full"):
        other.save_assets(str(tmp_path))
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before
