"""BytePairTokenizer: engines, equivalence check, inputs, outputs, errors.

References: Hugging Face `tokenizers` (classic byte-level BPE) built from the
same vocabulary and merges, and tiktoken's own `gpt2` encoding built from
OpenAI's files (tests/real_data.py).
"""

import json
import os
import random
import threading

import numpy as np
import pytest

from gpt2_lib.tokenizers import BytePairTokenizer
from gpt2_lib.tokenizers.bpe_files import read_merges
from gpt2_lib.tokenizers.byte_level import bytes_to_unicode
from gpt2_lib.tokenizers.tiktoken_engine import tiktoken_equivalence
from tests.real_data import gpt2_encoder_files
from tests.real_data import shakespeare_lines
from tests.real_data import tiktoken_gpt2_reference
from tests.tokenizers.helpers import ADVERSARIAL_STRINGS
from tests.tokenizers.helpers import OpenAIReference
from tests.tokenizers.helpers import byte_vocabulary
from tests.tokenizers.helpers import hf_bpe_reference
from tests.tokenizers.helpers import random_unicode_strings

EOT = "<|endoftext|>"
SMALL_MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "Ġ f", "o x", "Ġf ox"]


def small_tokenizer(**kwargs):
    vocab = byte_vocabulary(SMALL_MERGES)
    kwargs.setdefault("unsplittable_tokens", [EOT])
    return BytePairTokenizer(vocab, SMALL_MERGES, **kwargs)


def real_merges():
    _, vocab_bpe = gpt2_encoder_files()
    return [f"{a} {b}" for a, b in read_merges(vocab_bpe)]


def truncated_gpt2(num_merges):
    """The first `num_merges` rules of GPT-2, as a small preset would use."""
    merges = real_merges()[:num_merges]
    return byte_vocabulary(merges), merges


# ---------------------------------------------------------------------------
# Exactness of both engines against Hugging Face `tokenizers`.


@pytest.mark.parametrize("engine", ["auto", "python"])
def test_small_vocabulary_matches_hf_tokenizers(engine):
    tokenizer = small_tokenizer(engine=engine)
    reference = hf_bpe_reference(byte_vocabulary(SMALL_MERGES), SMALL_MERGES, [EOT])
    texts = ["the fox", " the fox in the box", "a fox<|endoftext|>the"]
    texts += ADVERSARIAL_STRINGS[::3]
    for text in texts:
        assert tokenizer(text) == reference.encode(text).ids, text


@pytest.mark.parametrize("num_merges", [300, 5000])
def test_truncated_gpt2_vocabulary_engines_agree(num_merges):
    vocab, merges = truncated_gpt2(num_merges)
    fast = BytePairTokenizer(vocab, merges, unsplittable_tokens=[EOT])
    exact = BytePairTokenizer(vocab, merges, unsplittable_tokens=[EOT], engine="python")
    # The first merges of a trained vocabulary pass the equivalence check.
    assert fast.engine == "tiktoken", fast.engine_note
    assert exact.engine == "python"
    reference = hf_bpe_reference(vocab, merges, [EOT])
    texts = list(shakespeare_lines()[::200]) + ADVERSARIAL_STRINGS
    texts += random_unicode_strings(100, seed=num_merges)
    expected = [reference.encode(t).ids for t in texts]
    assert fast(texts) == expected
    assert exact(texts) == expected


def test_vocabulary_ids_not_in_merge_order_use_lookup_table():
    vocab, merges = truncated_gpt2(2000)
    # Give the merged tokens shuffled ids: tiktoken ranks must be translated.
    merged = [a + b for a, b in (m.split() for m in merges)]
    ids = [vocab[t] for t in merged]
    random.Random(0).shuffle(ids)
    vocab.update(zip(merged, ids))
    tokenizer = BytePairTokenizer(vocab, merges, unsplittable_tokens=[EOT])
    assert tokenizer.engine == "tiktoken"
    assert tokenizer._state.fast_engine.rank_to_id is not None
    exact = BytePairTokenizer(vocab, merges, unsplittable_tokens=[EOT], engine="python")
    reference = hf_bpe_reference(vocab, merges, [EOT])
    texts = list(shakespeare_lines()[1::300]) + ADVERSARIAL_STRINGS
    expected = [reference.encode(t).ids for t in texts]
    assert tokenizer(texts) == expected
    assert exact(texts) == expected
    assert tokenizer.detokenize(expected) == texts


def _naive_tiktoken(vocab, merges):
    """tiktoken built directly from the ranks, with no equivalence check."""
    import tiktoken

    from gpt2_lib.tokenizers.byte_level import token_to_bytes
    from gpt2_lib.tokenizers.split_pattern import FAST_SPLIT_PATTERN

    ranks = {bytes([b]): b for b in range(256)}
    for i, rule in enumerate(merges):
        ranks[token_to_bytes("".join(rule.split()))] = 256 + i
    return tiktoken.Encoding(
        name="naive",
        pat_str=FAST_SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={},
    )


@pytest.mark.parametrize(
    "merges, text",
    [
        # "abc" is listed as "ab c", but BPE makes "a" + "bc" first.
        (["b c", "a b", "ab c"], "abc"),
        # A rule uses a token that only a later rule makes.
        (["ab a", "a b"], "abab"),
    ],
)
def test_inconsistent_merges_fall_back_to_exact_engine(merges, text):
    vocab = byte_vocabulary(merges, special_tokens=())
    expected = OpenAIReference(vocab, merges).encode(text)
    id_to_token = {i: t for t, i in vocab.items()}
    # tiktoken's merging really differs on these rules (compare the token
    # bytes, as the naive ranks are not our ids)...
    naive = _naive_tiktoken(vocab, merges)
    naive_tokens = [
        naive.decode_single_token_bytes(r) for r in naive.encode_ordinary(text)
    ]
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    reference_tokens = [bytes(decoder[c] for c in id_to_token[i]) for i in expected]
    assert naive_tokens != reference_tokens
    # ...so the tokenizer detects it and uses the exact engine.
    ok, reason = tiktoken_equivalence([tuple(m.split()) for m in merges])
    assert not ok and reason
    tokenizer = BytePairTokenizer(vocab, merges)
    assert tokenizer.engine == "python"
    assert tokenizer.engine_note == reason
    assert tokenizer(text) == expected
    with pytest.raises(ValueError, match="engine='tiktoken'"):
        BytePairTokenizer(vocab, merges, engine="tiktoken")


def test_equivalence_check_on_random_merge_lists():
    """Whenever the check passes, tiktoken equals OpenAI's BPE (and HF's)."""
    rng = random.Random(1)
    alphabet = ["a", "b", "c", "Ġ"]
    passed = failed = 0
    for trial in range(60):
        tokens = list(alphabet)
        merges = []
        for _ in range(rng.randint(3, 12)):
            first, second = rng.choice(tokens), rng.choice(tokens)
            if first + second in tokens:
                continue
            merges.append(f"{first} {second}")
            tokens.append(first + second)
        if trial % 3 == 0:
            rng.shuffle(merges)  # Break the "earlier rules first" property.
        vocab = byte_vocabulary(merges, special_tokens=())
        tokenizer = BytePairTokenizer(vocab, merges)
        exact = BytePairTokenizer(vocab, merges, engine="python")
        reference = OpenAIReference(vocab, merges)
        texts = [
            "".join(rng.choice("abc ") for _ in range(rng.randint(0, 25)))
            for _ in range(150)
        ]
        expected = [reference.encode(t) for t in texts]
        assert exact(texts) == expected
        if tokenizer.engine == "tiktoken":
            passed += 1
            assert tokenizer(texts) == expected, merges
            hf = hf_bpe_reference(vocab, merges)
            assert [e.ids for e in hf.encode_batch(texts)] == expected
        else:
            failed += 1
    # Both branches were exercised.
    assert passed >= 10 and failed >= 5, (passed, failed)


def test_real_gpt2_merges_pass_equivalence_check():
    merges = [tuple(m.split()) for m in real_merges()]
    assert tiktoken_equivalence(merges) == (True, "")


# ---------------------------------------------------------------------------
# Special (unsplittable) tokens.


def test_unsplittable_tokens_kept_whole_like_hf():
    specials = [EOT, "<pad>", "[SEP]"]
    vocab = byte_vocabulary(SMALL_MERGES, special_tokens=specials)
    tokenizer = BytePairTokenizer(vocab, SMALL_MERGES, unsplittable_tokens=specials)
    reference = hf_bpe_reference(vocab, SMALL_MERGES, specials)
    for text in ["the<pad>fox", "[SEP][SEP] the <|endoftext|>", "<pad", "x[SEP]"]:
        assert tokenizer(text) == reference.encode(text).ids
    assert tokenizer("<pad>") == [vocab["<pad>"]]


def test_overlapping_unsplittable_tokens_longest_match():
    specials = ["<s>", "<s>x"]
    vocab = byte_vocabulary(SMALL_MERGES, special_tokens=specials)
    tokenizer = BytePairTokenizer(vocab, SMALL_MERGES, unsplittable_tokens=specials)
    # tiktoken's special matching order is unspecified for prefixes.
    assert tokenizer.engine == "python"
    assert "prefix" in tokenizer.engine_note
    reference = hf_bpe_reference(vocab, SMALL_MERGES, specials)
    for text in ["<s>x the", "<s> the", "a<s>xx<s>"]:
        assert tokenizer(text) == reference.encode(text).ids


def test_without_unsplittable_tokens_special_text_is_split():
    vocab = byte_vocabulary(SMALL_MERGES)
    tokenizer = BytePairTokenizer(vocab, SMALL_MERGES)
    reference = hf_bpe_reference(vocab, SMALL_MERGES)
    assert tokenizer(EOT) == reference.encode(EOT).ids
    assert len(tokenizer(EOT)) > 1


# ---------------------------------------------------------------------------
# Inputs and outputs.


def test_input_types_give_same_ids():
    tokenizer = small_tokenizer()
    expected = tokenizer("the fox")
    assert isinstance(expected, list) and all(isinstance(i, int) for i in expected)
    assert tokenizer(b"the fox") == expected
    assert tokenizer(np.str_("the fox")) == expected
    assert tokenizer(np.array("the fox")) == expected
    assert tokenizer(np.array(b"the fox")) == expected
    batch = [expected, tokenizer("in")]
    assert tokenizer(["the fox", "in"]) == batch
    assert tokenizer(("the fox", "in")) == batch
    assert tokenizer([b"the fox", "in"]) == batch
    assert tokenizer(np.array(["the fox", "in"])) == batch
    assert tokenizer(np.array([b"the fox", b"in"])) == batch
    assert tokenizer(np.array([b"the fox", b"in"], dtype=object)) == batch
    assert tokenizer([]) == []


def test_tensorflow_string_tensors():
    tf = pytest.importorskip("tensorflow")
    tokenizer = small_tokenizer()
    assert tokenizer(tf.constant("the fox")) == tokenizer("the fox")
    assert tokenizer(tf.constant(["the fox", "in"])) == tokenizer(["the fox", "in"])


def test_sequence_length_pads_and_truncates():
    tokenizer = small_tokenizer(sequence_length=4)
    ids = small_tokenizer()("the fox in the")
    assert len(ids) > 4
    out = tokenizer("the fox in the")
    assert isinstance(out, np.ndarray) and out.dtype == np.int32
    np.testing.assert_array_equal(out, ids[:4])
    batch = tokenizer(["the fox in the", "in"])
    assert batch.shape == (2, 4) and batch.dtype == np.int32
    # A BytePairTokenizer without a pad token pads with 0, like KerasHub's.
    in_id = small_tokenizer()("in")
    np.testing.assert_array_equal(batch[1], in_id + [0] * (4 - len(in_id)))
    assert tokenizer([]).shape == (0, 4)
    tokenizer64 = small_tokenizer(sequence_length=3, dtype="int64")
    assert tokenizer64(["in"]).dtype == np.int64


def test_detokenize_input_types():
    tokenizer = small_tokenizer()
    ids = tokenizer("the fox")
    other = tokenizer("in the box")
    assert tokenizer.detokenize(ids) == "the fox"
    assert tokenizer.detokenize(tuple(ids)) == "the fox"
    assert tokenizer.detokenize([ids, other]) == ["the fox", "in the box"]
    assert tokenizer.detokenize(np.array(ids)) == "the fox"
    assert tokenizer.detokenize(np.array(ids, dtype=np.int64)[None]) == ["the fox"]
    assert tokenizer.detokenize(ids[0]) == tokenizer.detokenize([ids[0]])
    assert tokenizer.detokenize(np.int32(ids[0])) == tokenizer.detokenize([ids[0]])
    assert tokenizer.detokenize([]) == ""
    assert tokenizer.detokenize([[], ids]) == ["", "the fox"]
    assert tokenizer.detokenize([np.array(ids), np.array(other)]) == [
        "the fox",
        "in the box",
    ]


def test_detokenize_backend_tensors():
    import keras

    tokenizer = small_tokenizer()
    ids = tokenizer(["the fox", "in the"])
    dense = small_tokenizer(sequence_length=5)(["the fox", "in the"])
    tensor = keras.ops.convert_to_tensor(dense)
    expected = tokenizer.detokenize(dense)
    assert tokenizer.detokenize(tensor) == expected
    assert tokenizer.detokenize(tensor[0]) == expected[0]
    assert expected[0] == "the fox" + "!" * (5 - len(ids[0]))


def test_detokenize_tensorflow_tensors():
    tf = pytest.importorskip("tensorflow")
    tokenizer = small_tokenizer()
    ids = tokenizer(["the fox", "in"])
    assert tokenizer.detokenize(tf.ragged.constant(ids)) == ["the fox", "in"]
    assert tokenizer.detokenize(tf.constant(ids[0])) == "the fox"


def test_vocabulary_accessors():
    vocab = byte_vocabulary(SMALL_MERGES)
    tokenizer = small_tokenizer()
    assert tokenizer.vocabulary_size() == len(vocab)
    assert tokenizer.get_vocabulary() == sorted(vocab, key=vocab.get)
    assert tokenizer.token_to_id("Ġfox") == vocab["Ġfox"]
    assert tokenizer.id_to_token(vocab["Ġthe"]) == "Ġthe"
    assert tokenizer.merges == SMALL_MERGES
    assert tokenizer.vocabulary == vocab


# ---------------------------------------------------------------------------
# Files and assets.


def test_reads_openai_and_hf_files(tmp_path):
    vocab, merges = truncated_gpt2(500)
    # OpenAI's layout: encoder.json + vocab.bpe with a header.
    (tmp_path / "encoder.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "vocab.bpe").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
    # A headerless merges file with CRLF line ends.
    (tmp_path / "merges.txt").write_bytes(
        ("\r\n".join(merges) + "\r\n").encode("utf-8")
    )
    from_objects = BytePairTokenizer(vocab, merges, unsplittable_tokens=[EOT])
    text = "Shakespeare's plays, 1600 <|endoftext|> and more"
    expected = hf_bpe_reference(vocab, merges, [EOT]).encode(text).ids
    for merges_file in ("vocab.bpe", "merges.txt"):
        tokenizer = BytePairTokenizer(
            str(tmp_path / "encoder.json"),
            tmp_path / merges_file,
            unsplittable_tokens=[EOT],
        )
        assert tokenizer(text) == expected
        assert tokenizer.merges == from_objects.merges


def test_save_and_load_assets(tmp_path):
    vocab, merges = truncated_gpt2(1000)
    tokenizer = BytePairTokenizer(vocab, merges, unsplittable_tokens=[EOT])
    tokenizer.save_assets(str(tmp_path))
    merges_text = (tmp_path / "merges.txt").read_text(encoding="utf-8")
    assert merges_text.splitlines()[0] == "#version: 0.2"
    assert merges_text.splitlines()[1:] == merges
    with open(tmp_path / "vocabulary.json", encoding="utf-8") as f:
        assert json.load(f) == vocab
    # Hugging Face `tokenizers` reads the saved files as its own format.
    from tokenizers import Tokenizer
    from tokenizers import models
    from tokenizers import pre_tokenizers

    hf = Tokenizer(
        models.BPE.from_file(
            str(tmp_path / "vocabulary.json"), str(tmp_path / "merges.txt")
        )
    )
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    loaded = BytePairTokenizer(unsplittable_tokens=[EOT])
    loaded.load_assets(str(tmp_path))
    for text in shakespeare_lines()[:300:7]:
        assert loaded(text) == tokenizer(text) == hf.encode(text).ids


def test_config_round_trip_has_no_assets():
    tokenizer = small_tokenizer(sequence_length=7, add_prefix_space=True)
    config = tokenizer.get_config()
    assert config == {
        "name": "byte_pair_tokenizer",
        "trainable": True,
        "dtype": "int32",
        "config_file": "tokenizer.json",
        "sequence_length": 7,
        "add_prefix_space": True,
        "unsplittable_tokens": [EOT],
    }
    json.dumps(config)
    restored = BytePairTokenizer.from_config(config)
    assert restored.get_config() == config
    with pytest.raises(ValueError, match="No vocabulary"):
        restored("x")
    restored.set_vocabulary_and_merges(byte_vocabulary(SMALL_MERGES), SMALL_MERGES)
    np.testing.assert_array_equal(restored("the fox"), tokenizer("the fox"))


def test_keras_serialization_round_trip():
    import keras

    tokenizer = small_tokenizer(sequence_length=3)
    serialized = keras.saving.serialize_keras_object(tokenizer)
    assert serialized["registered_name"] == "gpt2_lib>BytePairTokenizer"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, BytePairTokenizer)
    assert restored.get_config() == tokenizer.get_config()


# ---------------------------------------------------------------------------
# Concurrency and pipelines.


@pytest.mark.parametrize("engine", ["auto", "python"])
def test_thread_safety(engine):
    vocab, merges = truncated_gpt2(3000)
    tokenizer = BytePairTokenizer(
        vocab, merges, unsplittable_tokens=[EOT], engine=engine
    )
    texts = list(shakespeare_lines()[:4000]) + ADVERSARIAL_STRINGS
    expected = hf_bpe_reference(vocab, merges, [EOT]).encode_batch(texts)
    expected = [e.ids for e in expected]
    results = {}
    errors = []

    def work(worker):
        order = list(range(len(texts)))
        random.Random(worker).shuffle(order)
        try:
            results[worker] = {i: tokenizer(texts[i]) for i in order}
        except Exception as e:  # Reported below.
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for worker in range(6):
        assert [results[worker][i] for i in range(len(texts))] == expected


def test_tf_data_numpy_function():
    tf = pytest.importorskip("tensorflow")
    tokenizer = small_tokenizer(sequence_length=6)
    texts = ["the fox", "in the box", "a", "", "the the the the the the the"]
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(2)
    ds = ds.map(
        lambda s: tf.ensure_shape(
            tf.numpy_function(tokenizer, [s], tf.int32), [None, 6]
        ),
        num_parallel_calls=2,
        deterministic=True,
    )
    got = np.concatenate([b.numpy() for b in ds])
    np.testing.assert_array_equal(got, tokenizer(texts))
    # Unbatched elements are scalars: one row per element.
    ds = tf.data.Dataset.from_tensor_slices(texts).map(
        lambda s: tf.numpy_function(tokenizer, [s], tf.int32)
    )
    np.testing.assert_array_equal(np.stack([x.numpy() for x in ds]), tokenizer(texts))


# ---------------------------------------------------------------------------
# Errors.


def test_tokenize_bad_inputs():
    tokenizer = small_tokenizer()
    with pytest.raises(TypeError, match="Item 1 of the batch .* int"):
        tokenizer(["ok", 5])
    with pytest.raises(TypeError, match="Item 0 of the batch .* NoneType"):
        tokenizer([None])
    with pytest.raises(TypeError, match="Item 0 of the batch .* list"):
        tokenizer([["nested"]])
    with pytest.raises(TypeError, match="takes a string"):
        tokenizer(3.5)
    with pytest.raises(TypeError, match="takes a string"):
        tokenizer(None)
    with pytest.raises(ValueError, match="shape \\(1, 2\\)"):
        tokenizer(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="not valid UTF-8"):
        tokenizer(b"\xff\xfe")
    with pytest.raises(ValueError, match="Item 1 .* not valid UTF-8"):
        tokenizer(["a", b"\xc3"])


def test_detokenize_bad_inputs():
    tokenizer = small_tokenizer()
    size = tokenizer.vocabulary_size()
    with pytest.raises(ValueError, match=f"Token id {size} is outside"):
        tokenizer.detokenize([1, size])
    with pytest.raises(ValueError, match="Token id -1 is outside"):
        tokenizer.detokenize([-1])
    with pytest.raises(ValueError, match="Token id 99999 is outside"):
        tokenizer.detokenize(np.array([[1, 99999]]))
    with pytest.raises(TypeError, match="must be integers"):
        tokenizer.detokenize([1.5])
    with pytest.raises(TypeError, match="must be integers"):
        tokenizer.detokenize(np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="must be integers"):
        tokenizer.detokenize(["a"])
    with pytest.raises(ValueError, match="shape"):
        tokenizer.detokenize(np.zeros((1, 1, 1), dtype=int))
    with pytest.raises(TypeError, match="takes token ids"):
        tokenizer.detokenize("the fox")


def test_detokenize_id_hole_is_an_error():
    vocab = byte_vocabulary(SMALL_MERGES)
    vocab[EOT] = len(vocab) + 5  # Ids len(vocab)-1 .. +4 are unused.
    tokenizer = BytePairTokenizer(vocab, SMALL_MERGES, unsplittable_tokens=[EOT])
    assert tokenizer.vocabulary_size() == vocab[EOT] + 1
    assert tokenizer.detokenize([vocab[EOT]]) == EOT
    with pytest.raises(ValueError, match=f"Token id {vocab[EOT] - 1} is outside"):
        tokenizer.detokenize([vocab[EOT] - 1])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokenizer.id_to_token(vocab[EOT] - 1)


def test_vocabulary_and_merges_disagree():
    vocab = byte_vocabulary(SMALL_MERGES)
    del vocab["Ġfox"]
    with pytest.raises(ValueError, match="do not match.*'Ġfox'"):
        BytePairTokenizer(vocab, SMALL_MERGES)
    with pytest.raises(ValueError, match="do not match.*'zz'"):
        BytePairTokenizer(byte_vocabulary(), ["zz y"])


def test_unreadable_files(tmp_path):
    vocab = byte_vocabulary(SMALL_MERGES)
    missing = str(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="vocabulary file .*missing.json.*no such"):
        BytePairTokenizer(missing, SMALL_MERGES)
    with pytest.raises(ValueError, match="merges file .*missing.json.*no such"):
        BytePairTokenizer(vocab, missing)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="Could not read the vocabulary file"):
        BytePairTokenizer(str(bad_json), SMALL_MERGES)
    binary = tmp_path / "merges.bin"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="Could not read the merges file"):
        BytePairTokenizer(vocab, str(binary))
    with pytest.raises(ValueError, match="Could not read the vocabulary file"):
        BytePairTokenizer(str(tmp_path), SMALL_MERGES)  # A directory.
    as_list = tmp_path / "list.json"
    as_list.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="JSON object"):
        BytePairTokenizer(str(as_list), SMALL_MERGES)


def test_bad_vocabulary_and_merges_objects():
    vocab = byte_vocabulary(SMALL_MERGES)
    with pytest.raises(TypeError, match="`vocabulary` must be a dict"):
        BytePairTokenizer(["a"], SMALL_MERGES)
    with pytest.raises(TypeError, match="`merges` must be a list"):
        BytePairTokenizer(vocab, 42)
    with pytest.raises(ValueError, match="Merge rule 1 .* malformed"):
        BytePairTokenizer(vocab, ["Ġ t", "h e x"])
    with pytest.raises(TypeError, match="ids must be integers"):
        BytePairTokenizer({**vocab, "x y": "3"}, SMALL_MERGES)
    with pytest.raises(ValueError, match="used by two tokens"):
        BytePairTokenizer({**vocab, "extra": 0}, SMALL_MERGES)
    with pytest.raises(ValueError, match="non-negative"):
        BytePairTokenizer({**vocab, "extra": -3}, SMALL_MERGES)
    with pytest.raises(ValueError, match="`merges` is missing"):
        BytePairTokenizer(vocab)


def test_bad_arguments():
    vocab = byte_vocabulary(SMALL_MERGES)
    with pytest.raises(ValueError, match="unsplittable token '<x>' is not in"):
        BytePairTokenizer(vocab, SMALL_MERGES, unsplittable_tokens=["<x>"])
    with pytest.raises(TypeError, match="list of strings"):
        BytePairTokenizer(vocab, SMALL_MERGES, unsplittable_tokens=EOT)
    with pytest.raises(ValueError, match="sequence_length"):
        BytePairTokenizer(vocab, SMALL_MERGES, sequence_length=0)
    with pytest.raises(ValueError, match="integer dtype"):
        BytePairTokenizer(vocab, SMALL_MERGES, dtype="string")
    with pytest.raises(ValueError, match="`engine` must be one of"):
        BytePairTokenizer(vocab, SMALL_MERGES, engine="rust")
    with pytest.raises(TypeError, match="unexpected keyword.*sequence_lenght"):
        BytePairTokenizer(vocab, SMALL_MERGES, sequence_lenght=3)
    with pytest.raises(ValueError, match="No vocabulary"):
        BytePairTokenizer().detokenize([1])


def test_missing_byte_tokens_use_exact_engine_and_report_text():
    vocab = byte_vocabulary(SMALL_MERGES)
    del vocab["Ā"]  # The token for byte 0x00.
    tokenizer = BytePairTokenizer(vocab, SMALL_MERGES)
    assert tokenizer.engine == "python"
    assert "byte tokens" in tokenizer.engine_note
    assert tokenizer("the fox") == small_tokenizer()("the fox")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokenizer("a\x00b")


def test_real_files_reference_sanity():
    # The helper vocabulary puts byte tokens at OpenAI's ids.
    encoder_json, _ = gpt2_encoder_files()
    with open(encoder_json, encoding="utf-8") as f:
        real = json.load(f)
    for token, id in byte_vocabulary(special_tokens=()).items():
        assert real[token] == id
    assert tiktoken_gpt2_reference().encode("hello world") == [31373, 995]
    assert os.path.getsize(encoder_json) > 1_000_000


# ---------------------------------------------------------------------------
# Unicode tables of the pre-tokenizer.


def _tiktoken_class(pattern):
    """The code points tiktoken's regex engine puts in a one-char class.

    A tiktoken encoding whose split pattern is the class alone and whose
    tokens are the 256 bytes returns exactly the UTF-8 bytes of the matching
    characters of a text holding every code point.
    """
    import tiktoken

    every_char = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    probe = tiktoken.Encoding(
        name="probe",
        pat_str=pattern,
        mergeable_ranks={bytes([b]): b for b in range(256)},
        special_tokens={},
    )
    matched = bytes(probe.encode_ordinary(every_char)).decode("utf-8")
    return [ord(c) for c in matched]


def _as_ranges(codepoints):
    ranges = []
    for c in codepoints:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return " ".join(f"{a:x}" if a == b else f"{a:x}-{b:x}" for a, b in ranges)


@pytest.mark.parametrize(
    "pattern, name",
    [
        (r"\p{L}", "UNICODE_LETTER_RANGES"),
        (r"\p{N}", "UNICODE_NUMBER_RANGES"),
        (r"\s", "UNICODE_SPACE_RANGES"),
    ],
)
def test_unicode_tables_match_tiktoken(pattern, name):
    from gpt2_lib.tokenizers import unicode_tables

    probed = _as_ranges(_tiktoken_class(pattern))
    # On failure, tiktoken's Unicode tables changed: paste `probed` as the
    # new value of the constant.
    assert getattr(unicode_tables, name).split() == probed.split()


def test_python_engine_splits_newer_unicode_like_tiktoken():
    import regex

    from gpt2_lib.tokenizers.split_pattern import GPT2_SPLIT_PATTERN
    from gpt2_lib.tokenizers.split_pattern import SplitPatterns
    from gpt2_lib.tokenizers.split_pattern import pinned_split_pattern

    patterns = SplitPatterns.get()
    pinned = regex.compile(pinned_split_pattern())
    newer = sorted(patterns.diff)
    rng = random.Random(3)
    pool = newer + list("葺中文日本語abcXYZ019 \n") + ["\u00e9", "\u0663"]
    texts = ["".join(rng.choice(pool) for _ in range(25)) for _ in range(400)]
    texts.append("U\U000e4eaaV芖⯭◝ᢢﲅ\U00032dc8葺<")  # Found by a random test.
    for text in texts:
        assert patterns.split(text) == pinned.findall(text)
    if newer:  # The `regex` module knows a newer Unicode than tiktoken.
        plain = regex.compile(GPT2_SPLIT_PATTERN)
        assert any(plain.findall(t) != pinned.findall(t) for t in texts)
    encoder_json, vocab_bpe = gpt2_encoder_files()
    exact = BytePairTokenizer(
        encoder_json, vocab_bpe, unsplittable_tokens=[EOT], engine="python"
    )
    reference = tiktoken_gpt2_reference()
    assert exact(texts) == [reference.encode(t) for t in texts]


def test_sparse_vocabulary_ids():
    vocab = byte_vocabulary(SMALL_MERGES)
    vocab[EOT] = 2**31 - 2  # Far from the other ids: no giant lookup list.
    tokenizer = BytePairTokenizer(vocab, SMALL_MERGES, unsplittable_tokens=[EOT])
    assert isinstance(tokenizer._state.id_to_bytes, dict)
    assert tokenizer.vocabulary_size() == 2**31 - 1
    ids = tokenizer("the fox<|endoftext|>")
    assert ids[-1] == 2**31 - 2
    assert tokenizer.detokenize(ids) == "the fox<|endoftext|>"
    with pytest.raises(ValueError, match="Token id 1000 is outside"):
        tokenizer.detokenize([1000])
