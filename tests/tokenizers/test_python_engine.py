"""The Python engine on long words (issue #15): exact and O(n log n).

References: OpenAI's algorithm transcribed independently
(`tests.tokenizers.helpers.OpenAIReference`) on random merge lists, and
tiktoken's own `gpt2` encoding on OpenAI's files (tests/real_data.py).
"""

import functools
import random
import time

import pytest

from gpt2_lib.tokenizers import BytePairTokenizer
from gpt2_lib.tokenizers import GPT2Tokenizer
from gpt2_lib.tokenizers.bpe_files import read_merges
from gpt2_lib.tokenizers.byte_level import BYTE_ENCODER
from gpt2_lib.tokenizers.python_engine import MAX_CACHED_WORD_LENGTH
from gpt2_lib.tokenizers.python_engine import bpe_merge
from tests.real_data import gpt2_encoder_files
from tests.real_data import tiktoken_gpt2_reference
from tests.tokenizers.helpers import OpenAIReference
from tests.tokenizers.helpers import byte_vocabulary


@functools.lru_cache(maxsize=None)
def python_gpt2():
    encoder_json, vocab_bpe = gpt2_encoder_files()
    tokenizer = GPT2Tokenizer(encoder_json, vocab_bpe, engine="python")
    assert tokenizer.engine == "python"
    return tokenizer


def random_merges(rng, alphabet):
    """Random rules over `alphabet`; often inconsistent (the Python engine is
    then the definition and tiktoken is not used)."""
    tokens = list(alphabet)
    merges = []
    for _ in range(rng.randint(1, 16)):
        first, second = rng.choice(tokens), rng.choice(tokens)
        if (first, second) in merges:
            continue
        merges.append((first, second))
        if first + second not in tokens:
            tokens.append(first + second)
    if rng.random() < 0.5:
        rng.shuffle(merges)
    return merges


def test_bpe_merge_is_openai_bpe_on_random_merge_lists():
    rng = random.Random(0)
    for _ in range(1500):
        alphabet = "abcĠ"[: rng.randint(1, 4)]
        merges = random_merges(rng, alphabet)
        ranks = {pair: i for i, pair in enumerate(merges)}
        reference = OpenAIReference({}, merges)
        for _ in range(8):
            word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
            assert bpe_merge(word, ranks) == reference.bpe(word).split(" "), (
                merges,
                word,
            )


def test_inconsistent_merges_on_long_words_match_openai():
    # "auto" falls back to the Python engine for these rules.
    merges = ["b c", "a b", "ab c", "c c", "a bc", "cc a"]
    vocab = byte_vocabulary(merges, special_tokens=())
    tokenizer = BytePairTokenizer(vocab, merges)
    assert tokenizer.engine == "python", tokenizer.engine_note
    reference = OpenAIReference(vocab, merges)
    rng = random.Random(1)
    for length in (20_000, 100_000):
        word = "".join(rng.choice("abc") for _ in range(length))
        assert tokenizer(word) == reference.encode(word)


def long_words():
    rng = random.Random(2)
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return {
        "repeated char": "a" * 20_000,
        "repeated pair": "ab" * 50_000,
        "repeated word": "supercalifragilistic" * 5_000,
        "random letters 20k": "".join(rng.choice(letters) for _ in range(20_000)),
        "random letters 100k": "".join(rng.choice(letters) for _ in range(100_000)),
        "random CJK 20k": "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(20_000)),
        "random accents 100k": "".join(chr(rng.randint(0xC0, 0x24F)) for _ in range(100_000)),
        "random symbols 100k": "".join(rng.choice("!?.,;:-_()[]{}<>#$%&*+=") for _ in range(100_000)),
        "digits 100k": "".join(rng.choice("0123456789") for _ in range(100_000)),
        "spaces then word": " " * 20_000 + "x" * 20_000,
    }


@pytest.mark.parametrize("name", sorted(long_words()))
def test_long_words_match_tiktoken(name):
    text = long_words()[name]
    reference = tiktoken_gpt2_reference()
    expected = reference.encode(text)
    assert python_gpt2()(text) == expected
    assert python_gpt2().detokenize(expected) == text


@pytest.mark.parametrize("length", [20_000, 100_000])
def test_random_byte_pieces_match_tiktoken(length):
    """BPE of one piece of random bytes (no pre-tokenization in between)."""
    rng = random.Random(length)
    data = bytes(rng.randrange(256) for _ in range(length))
    encoder_json, vocab_bpe = gpt2_encoder_files()
    ranks = {pair: i for i, pair in enumerate(read_merges(vocab_bpe))}
    vocabulary = python_gpt2().vocabulary
    word = "".join(BYTE_ENCODER[b] for b in data)
    ids = [vocabulary[token] for token in bpe_merge(word, ranks)]
    assert ids == tiktoken_gpt2_reference()._encode_single_piece(data)


def test_one_megabyte_word_is_not_a_denial_of_service():
    rng = random.Random(3)
    text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(1_000_000))
    tokenizer = python_gpt2()
    tokenizer("warm up the pre-tokenizer")
    start = time.perf_counter()
    ids = tokenizer(text)
    elapsed = time.perf_counter() - start
    # A bound against quadratic behaviour (OpenAI's loop needs hours here),
    # not a benchmark: about 2 s on a loaded 2-core machine.
    assert elapsed < 10, f"a 1 MB word took {elapsed:.1f} s"
    assert ids == tiktoken_gpt2_reference().encode(text)
    # Long words are not kept in the word cache.
    cache = tokenizer._state.python_engine.cache
    assert max(map(len, cache)) <= MAX_CACHED_WORD_LENGTH
