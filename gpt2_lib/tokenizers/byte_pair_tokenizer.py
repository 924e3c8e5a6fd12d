"""Byte-level byte-pair encoding (BPE), exact to OpenAI's GPT-2 encoder.

Two engines produce the ids, and they agree on every input:

- The pure-Python engine is the definition. It follows OpenAI's
  `encoder.py`: the GPT-2 pre-tokenization pattern (with the `regex`
  module), the byte-to-unicode mapping, then classic BPE, which merges every
  occurrence of the listed pair of lowest rank until no listed pair is left.
  Results are kept in a per-word cache. The pattern's Unicode classes are
  pinned to the ones tiktoken uses (see `UNICODE_LETTER_RANGES`), so that
  characters added in a newer Unicode version split the same way.
- The fast engine is `tiktoken`, built in-process from the same vocabulary
  and merges (nothing is downloaded). tiktoken merges any adjacent pair whose
  concatenation is a token, by the rank of that token, and maps a
  pre-token that is itself a token straight to it. This is the same as
  classic BPE when the merge rules are *consistent*, which
  `tiktoken_equivalence()` checks for each vocabulary: every merge produces a
  different token, a rule only uses tokens made by earlier rules (or single
  bytes), and classic BPE of each merged token's own bytes gives that token
  back. (Sketch of the proof: under these conditions, if classic BPE ever
  holds two adjacent tokens whose concatenation is a token, that pair is the
  token's own rule; ranks grow along merges, so merging one occurrence at a
  time as tiktoken does, or all occurrences of a pair at once, reach the same
  state.) OpenAI's GPT-2 files, and any prefix of their merges, pass. A
  vocabulary that fails falls back to the pure-Python engine.
"""

import json
import os
import re
import threading

import keras
import numpy as np
import regex

from gpt2_lib.tokenizers.tokenizer import Tokenizer

try:  # The fast engine is optional at import time; the Python one is exact.
    import tiktoken
except ImportError:  # pragma: no cover - tiktoken is a core dependency.
    tiktoken = None

VOCAB_FILENAME = "vocabulary.json"
MERGES_FILENAME = "merges.txt"
MERGES_HEADER = "#version: 0.2"

# OpenAI's GPT-2 pre-tokenization pattern (gpt-2/src/encoder.py). This is the
# definition used by the pure-Python engine.
GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
    r"""|\s+(?!\S)|\s+"""
)
# The same split written with possessive quantifiers, as tiktoken writes it
# for speed. `\s+` in the last branch of the pattern above can only ever match
# one character (a longer run would have matched `\s+(?!\S)`), and a run of
# whitespace that ends the text is what `\s++$` takes.
FAST_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++"""
    r"""|\s++$|\s+(?!\S)|\s"""
)


# Character classes of the pre-tokenization pattern, as code point ranges
# (hex, inclusive). They are the Unicode 16.0 sets that tiktoken's Rust regex
# engine uses for `\p{L}`, `\p{N}` and `\s` (probed from tiktoken 0.14; see
# `test_unicode_tables_match_tiktoken`). The Python engine uses them instead
# of the `regex` module's own tables, whose Unicode version (17.0 in regex
# 2026.x) assigns letters that tiktoken does not know yet; with them, both
# engines split every string the same way.
UNICODE_LETTER_RANGES = (
    "41-5a 61-7a aa b5 ba c0-d6 d8-f6 f8-2c1 2c6-2d1 2e0-2e4 2ec 2ee "
    "370-374 376-377 37a-37d 37f 386 388-38a 38c 38e-3a1 3a3-3f5 3f7-481 "
    "48a-52f 531-556 559 560-588 5d0-5ea 5ef-5f2 620-64a 66e-66f 671-6d3 "
    "6d5 6e5-6e6 6ee-6ef 6fa-6fc 6ff 710 712-72f 74d-7a5 7b1 7ca-7ea "
    "7f4-7f5 7fa 800-815 81a 824 828 840-858 860-86a 870-887 889-88e "
    "8a0-8c9 904-939 93d 950 958-961 971-980 985-98c 98f-990 993-9a8 "
    "9aa-9b0 9b2 9b6-9b9 9bd 9ce 9dc-9dd 9df-9e1 9f0-9f1 9fc a05-a0a "
    "a0f-a10 a13-a28 a2a-a30 a32-a33 a35-a36 a38-a39 a59-a5c a5e a72-a74 "
    "a85-a8d a8f-a91 a93-aa8 aaa-ab0 ab2-ab3 ab5-ab9 abd ad0 ae0-ae1 af9 "
    "b05-b0c b0f-b10 b13-b28 b2a-b30 b32-b33 b35-b39 b3d b5c-b5d b5f-b61 "
    "b71 b83 b85-b8a b8e-b90 b92-b95 b99-b9a b9c b9e-b9f ba3-ba4 ba8-baa "
    "bae-bb9 bd0 c05-c0c c0e-c10 c12-c28 c2a-c39 c3d c58-c5a c5d c60-c61 "
    "c80 c85-c8c c8e-c90 c92-ca8 caa-cb3 cb5-cb9 cbd cdd-cde ce0-ce1 "
    "cf1-cf2 d04-d0c d0e-d10 d12-d3a d3d d4e d54-d56 d5f-d61 d7a-d7f "
    "d85-d96 d9a-db1 db3-dbb dbd dc0-dc6 e01-e30 e32-e33 e40-e46 e81-e82 "
    "e84 e86-e8a e8c-ea3 ea5 ea7-eb0 eb2-eb3 ebd ec0-ec4 ec6 edc-edf f00 "
    "f40-f47 f49-f6c f88-f8c 1000-102a 103f 1050-1055 105a-105d 1061 "
    "1065-1066 106e-1070 1075-1081 108e 10a0-10c5 10c7 10cd 10d0-10fa "
    "10fc-1248 124a-124d 1250-1256 1258 125a-125d 1260-1288 128a-128d "
    "1290-12b0 12b2-12b5 12b8-12be 12c0 12c2-12c5 12c8-12d6 12d8-1310 "
    "1312-1315 1318-135a 1380-138f 13a0-13f5 13f8-13fd 1401-166c 166f-167f "
    "1681-169a 16a0-16ea 16f1-16f8 1700-1711 171f-1731 1740-1751 1760-176c "
    "176e-1770 1780-17b3 17d7 17dc 1820-1878 1880-1884 1887-18a8 18aa "
    "18b0-18f5 1900-191e 1950-196d 1970-1974 1980-19ab 19b0-19c9 1a00-1a16 "
    "1a20-1a54 1aa7 1b05-1b33 1b45-1b4c 1b83-1ba0 1bae-1baf 1bba-1be5 "
    "1c00-1c23 1c4d-1c4f 1c5a-1c7d 1c80-1c8a 1c90-1cba 1cbd-1cbf 1ce9-1cec "
    "1cee-1cf3 1cf5-1cf6 1cfa 1d00-1dbf 1e00-1f15 1f18-1f1d 1f20-1f45 "
    "1f48-1f4d 1f50-1f57 1f59 1f5b 1f5d 1f5f-1f7d 1f80-1fb4 1fb6-1fbc 1fbe "
    "1fc2-1fc4 1fc6-1fcc 1fd0-1fd3 1fd6-1fdb 1fe0-1fec 1ff2-1ff4 1ff6-1ffc "
    "2071 207f 2090-209c 2102 2107 210a-2113 2115 2119-211d 2124 2126 2128 "
    "212a-212d 212f-2139 213c-213f 2145-2149 214e 2183-2184 2c00-2ce4 "
    "2ceb-2cee 2cf2-2cf3 2d00-2d25 2d27 2d2d 2d30-2d67 2d6f 2d80-2d96 "
    "2da0-2da6 2da8-2dae 2db0-2db6 2db8-2dbe 2dc0-2dc6 2dc8-2dce 2dd0-2dd6 "
    "2dd8-2dde 2e2f 3005-3006 3031-3035 303b-303c 3041-3096 309d-309f "
    "30a1-30fa 30fc-30ff 3105-312f 3131-318e 31a0-31bf 31f0-31ff 3400-4dbf "
    "4e00-a48c a4d0-a4fd a500-a60c a610-a61f a62a-a62b a640-a66e a67f-a69d "
    "a6a0-a6e5 a717-a71f a722-a788 a78b-a7cd a7d0-a7d1 a7d3 a7d5-a7dc "
    "a7f2-a801 a803-a805 a807-a80a a80c-a822 a840-a873 a882-a8b3 a8f2-a8f7 "
    "a8fb a8fd-a8fe a90a-a925 a930-a946 a960-a97c a984-a9b2 a9cf a9e0-a9e4 "
    "a9e6-a9ef a9fa-a9fe aa00-aa28 aa40-aa42 aa44-aa4b aa60-aa76 aa7a "
    "aa7e-aaaf aab1 aab5-aab6 aab9-aabd aac0 aac2 aadb-aadd aae0-aaea "
    "aaf2-aaf4 ab01-ab06 ab09-ab0e ab11-ab16 ab20-ab26 ab28-ab2e ab30-ab5a "
    "ab5c-ab69 ab70-abe2 ac00-d7a3 d7b0-d7c6 d7cb-d7fb f900-fa6d fa70-fad9 "
    "fb00-fb06 fb13-fb17 fb1d fb1f-fb28 fb2a-fb36 fb38-fb3c fb3e fb40-fb41 "
    "fb43-fb44 fb46-fbb1 fbd3-fd3d fd50-fd8f fd92-fdc7 fdf0-fdfb fe70-fe74 "
    "fe76-fefc ff21-ff3a ff41-ff5a ff66-ffbe ffc2-ffc7 ffca-ffcf ffd2-ffd7 "
    "ffda-ffdc 10000-1000b 1000d-10026 10028-1003a 1003c-1003d 1003f-1004d "
    "10050-1005d 10080-100fa 10280-1029c 102a0-102d0 10300-1031f "
    "1032d-10340 10342-10349 10350-10375 10380-1039d 103a0-103c3 "
    "103c8-103cf 10400-1049d 104b0-104d3 104d8-104fb 10500-10527 "
    "10530-10563 10570-1057a 1057c-1058a 1058c-10592 10594-10595 "
    "10597-105a1 105a3-105b1 105b3-105b9 105bb-105bc 105c0-105f3 "
    "10600-10736 10740-10755 10760-10767 10780-10785 10787-107b0 "
    "107b2-107ba 10800-10805 10808 1080a-10835 10837-10838 1083c "
    "1083f-10855 10860-10876 10880-1089e 108e0-108f2 108f4-108f5 "
    "10900-10915 10920-10939 10980-109b7 109be-109bf 10a00 10a10-10a13 "
    "10a15-10a17 10a19-10a35 10a60-10a7c 10a80-10a9c 10ac0-10ac7 "
    "10ac9-10ae4 10b00-10b35 10b40-10b55 10b60-10b72 10b80-10b91 "
    "10c00-10c48 10c80-10cb2 10cc0-10cf2 10d00-10d23 10d4a-10d65 "
    "10d6f-10d85 10e80-10ea9 10eb0-10eb1 10ec2-10ec4 10f00-10f1c 10f27 "
    "10f30-10f45 10f70-10f81 10fb0-10fc4 10fe0-10ff6 11003-11037 "
    "11071-11072 11075 11083-110af 110d0-110e8 11103-11126 11144 11147 "
    "11150-11172 11176 11183-111b2 111c1-111c4 111da 111dc 11200-11211 "
    "11213-1122b 1123f-11240 11280-11286 11288 1128a-1128d 1128f-1129d "
    "1129f-112a8 112b0-112de 11305-1130c 1130f-11310 11313-11328 "
    "1132a-11330 11332-11333 11335-11339 1133d 11350 1135d-11361 "
    "11380-11389 1138b 1138e 11390-113b5 113b7 113d1 113d3 11400-11434 "
    "11447-1144a 1145f-11461 11480-114af 114c4-114c5 114c7 11580-115ae "
    "115d8-115db 11600-1162f 11644 11680-116aa 116b8 11700-1171a "
    "11740-11746 11800-1182b 118a0-118df 118ff-11906 11909 1190c-11913 "
    "11915-11916 11918-1192f 1193f 11941 119a0-119a7 119aa-119d0 119e1 "
    "119e3 11a00 11a0b-11a32 11a3a 11a50 11a5c-11a89 11a9d 11ab0-11af8 "
    "11bc0-11be0 11c00-11c08 11c0a-11c2e 11c40 11c72-11c8f 11d00-11d06 "
    "11d08-11d09 11d0b-11d30 11d46 11d60-11d65 11d67-11d68 11d6a-11d89 "
    "11d98 11ee0-11ef2 11f02 11f04-11f10 11f12-11f33 11fb0 12000-12399 "
    "12480-12543 12f90-12ff0 13000-1342f 13441-13446 13460-143fa "
    "14400-14646 16100-1611d 16800-16a38 16a40-16a5e 16a70-16abe "
    "16ad0-16aed 16b00-16b2f 16b40-16b43 16b63-16b77 16b7d-16b8f "
    "16d40-16d6c 16e40-16e7f 16f00-16f4a 16f50 16f93-16f9f 16fe0-16fe1 "
    "16fe3 17000-187f7 18800-18cd5 18cff-18d08 1aff0-1aff3 1aff5-1affb "
    "1affd-1affe 1b000-1b122 1b132 1b150-1b152 1b155 1b164-1b167 "
    "1b170-1b2fb 1bc00-1bc6a 1bc70-1bc7c 1bc80-1bc88 1bc90-1bc99 "
    "1d400-1d454 1d456-1d49c 1d49e-1d49f 1d4a2 1d4a5-1d4a6 1d4a9-1d4ac "
    "1d4ae-1d4b9 1d4bb 1d4bd-1d4c3 1d4c5-1d505 1d507-1d50a 1d50d-1d514 "
    "1d516-1d51c 1d51e-1d539 1d53b-1d53e 1d540-1d544 1d546 1d54a-1d550 "
    "1d552-1d6a5 1d6a8-1d6c0 1d6c2-1d6da 1d6dc-1d6fa 1d6fc-1d714 "
    "1d716-1d734 1d736-1d74e 1d750-1d76e 1d770-1d788 1d78a-1d7a8 "
    "1d7aa-1d7c2 1d7c4-1d7cb 1df00-1df1e 1df25-1df2a 1e030-1e06d "
    "1e100-1e12c 1e137-1e13d 1e14e 1e290-1e2ad 1e2c0-1e2eb 1e4d0-1e4eb "
    "1e5d0-1e5ed 1e5f0 1e7e0-1e7e6 1e7e8-1e7eb 1e7ed-1e7ee 1e7f0-1e7fe "
    "1e800-1e8c4 1e900-1e943 1e94b 1ee00-1ee03 1ee05-1ee1f 1ee21-1ee22 "
    "1ee24 1ee27 1ee29-1ee32 1ee34-1ee37 1ee39 1ee3b 1ee42 1ee47 1ee49 "
    "1ee4b 1ee4d-1ee4f 1ee51-1ee52 1ee54 1ee57 1ee59 1ee5b 1ee5d 1ee5f "
    "1ee61-1ee62 1ee64 1ee67-1ee6a 1ee6c-1ee72 1ee74-1ee77 1ee79-1ee7c "
    "1ee7e 1ee80-1ee89 1ee8b-1ee9b 1eea1-1eea3 1eea5-1eea9 1eeab-1eebb "
    "20000-2a6df 2a700-2b739 2b740-2b81d 2b820-2cea1 2ceb0-2ebe0 "
    "2ebf0-2ee5d 2f800-2fa1d 30000-3134a 31350-323af"
)
UNICODE_NUMBER_RANGES = (
    "30-39 b2-b3 b9 bc-be 660-669 6f0-6f9 7c0-7c9 966-96f 9e6-9ef 9f4-9f9 "
    "a66-a6f ae6-aef b66-b6f b72-b77 be6-bf2 c66-c6f c78-c7e ce6-cef "
    "d58-d5e d66-d78 de6-def e50-e59 ed0-ed9 f20-f33 1040-1049 1090-1099 "
    "1369-137c 16ee-16f0 17e0-17e9 17f0-17f9 1810-1819 1946-194f 19d0-19da "
    "1a80-1a89 1a90-1a99 1b50-1b59 1bb0-1bb9 1c40-1c49 1c50-1c59 2070 "
    "2074-2079 2080-2089 2150-2182 2185-2189 2460-249b 24ea-24ff 2776-2793 "
    "2cfd 3007 3021-3029 3038-303a 3192-3195 3220-3229 3248-324f 3251-325f "
    "3280-3289 32b1-32bf a620-a629 a6e6-a6ef a830-a835 a8d0-a8d9 a900-a909 "
    "a9d0-a9d9 a9f0-a9f9 aa50-aa59 abf0-abf9 ff10-ff19 10107-10133 "
    "10140-10178 1018a-1018b 102e1-102fb 10320-10323 10341 1034a "
    "103d1-103d5 104a0-104a9 10858-1085f 10879-1087f 108a7-108af "
    "108fb-108ff 10916-1091b 109bc-109bd 109c0-109cf 109d2-109ff "
    "10a40-10a48 10a7d-10a7e 10a9d-10a9f 10aeb-10aef 10b58-10b5f "
    "10b78-10b7f 10ba9-10baf 10cfa-10cff 10d30-10d39 10d40-10d49 "
    "10e60-10e7e 10f1d-10f26 10f51-10f54 10fc5-10fcb 11052-1106f "
    "110f0-110f9 11136-1113f 111d0-111d9 111e1-111f4 112f0-112f9 "
    "11450-11459 114d0-114d9 11650-11659 116c0-116c9 116d0-116e3 "
    "11730-1173b 118e0-118f2 11950-11959 11bf0-11bf9 11c50-11c6c "
    "11d50-11d59 11da0-11da9 11f50-11f59 11fc0-11fd4 12400-1246e "
    "16130-16139 16a60-16a69 16ac0-16ac9 16b50-16b59 16b5b-16b61 "
    "16d70-16d79 16e80-16e96 1ccf0-1ccf9 1d2c0-1d2d3 1d2e0-1d2f3 "
    "1d360-1d378 1d7ce-1d7ff 1e140-1e149 1e2f0-1e2f9 1e4f0-1e4f9 "
    "1e5f1-1e5fa 1e8c7-1e8cf 1e950-1e959 1ec71-1ecab 1ecad-1ecaf "
    "1ecb1-1ecb4 1ed01-1ed2d 1ed2f-1ed3d 1f100-1f10c 1fbf0-1fbf9"
)
UNICODE_SPACE_RANGES = "9-d 20 85 a0 1680 2000-200a 2028-2029 202f 205f 3000"


def _char_class(ranges):
    parts = []
    for item in ranges.split():
        first, _, last = item.partition("-")
        part = "\\U%08x" % int(first, 16)
        if last:
            part += "-\\U%08x" % int(last, 16)
        parts.append(part)
    return "".join(parts)


def pinned_split_pattern():
    """OpenAI's GPT-2 pattern with the classes spelled out (see above)."""
    letters = _char_class(UNICODE_LETTER_RANGES)
    numbers = _char_class(UNICODE_NUMBER_RANGES)
    spaces = _char_class(UNICODE_SPACE_RANGES)
    return (
        rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[{letters}]+| ?[{numbers}]+"""
        rf"""| ?[^{spaces}{letters}{numbers}]+|[{spaces}]+(?![^{spaces}])"""
        rf"""|[{spaces}]+"""
    )


def _expand_ranges(ranges):
    for item in ranges.split():
        first, _, last = item.partition("-")
        yield from range(int(first, 16), int(last or first, 16) + 1)


class _SplitPatterns:
    """The Python engine's pre-tokenizers, built once per process.

    `pinned` (the pattern with the classes spelled out) is exact but slow in
    the `regex` module, so `fast` (the same pattern with `regex`'s own
    `\\p{L}`, `\\p{N}`, `\\s`) is used on every text that holds none of the
    characters (`diff`) on which the two sets of tables disagree: on such a
    text, both patterns match the same pieces.
    """

    _instance = None
    _lock = threading.Lock()

    def __init__(self):
        self.fast = regex.compile(GPT2_SPLIT_PATTERN)
        self._pinned = None
        codepoints = np.concatenate(
            [np.arange(0xD800), np.arange(0xE000, 0x110000)]
        ).astype("<u4")
        every_char = codepoints.tobytes().decode("utf-32-le")
        diff = set()
        for prop, ranges in (
            (r"\p{L}", UNICODE_LETTER_RANGES),
            (r"\p{N}", UNICODE_NUMBER_RANGES),
            (r"\s", UNICODE_SPACE_RANGES),
        ):
            theirs = set(regex.findall(prop, every_char))
            diff |= theirs.symmetric_difference(map(chr, _expand_ranges(ranges)))
        self.diff = frozenset(diff)

    @classmethod
    def get(cls):
        if cls._instance is None:
            with cls._lock:
                if cls._instance is None:
                    cls._instance = cls()
        return cls._instance

    def pinned(self):
        if self._pinned is None:
            self._pinned = regex.compile(pinned_split_pattern())
        return self._pinned

    def split(self, text):
        if text.isascii() or self.diff.isdisjoint(text):
            return self.fast.findall(text)
        return self.pinned().findall(text)


ENGINES = ("auto", "tiktoken", "python")

# Verdicts of `tiktoken_equivalence()`, keyed by the merges tuple.
_EQUIVALENCE_CACHE = {}
_EQUIVALENCE_CACHE_SIZE = 8
_EQUIVALENCE_LOCK = threading.Lock()

# Word cache size of the pure-Python engine (cleared when full).
_WORD_CACHE_SIZE = 200_000


def bytes_to_unicode():
    """Returns OpenAI's mapping from byte values to printable characters.

    Bytes that are printable Latin-1 characters (other than the space) map to
    themselves; the others (control characters, space, `\\xa0`, `\\xad`) map
    to `chr(256 + n)`. Byte-level BPE tokens are strings over this alphabet,
    so that whitespace and control bytes never appear in a token string.

    Returns:
        A dict from `int` byte value to one-character `str`.
    """
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}
# `text.encode("utf-8").decode("latin-1").translate(...)` turns text into its
# byte-level string in one C call.
_LATIN1_TO_BYTE_LEVEL = {b: c for b, c in BYTE_ENCODER.items()}
_BYTE_LEVEL_TO_LATIN1 = {ord(c): b for b, c in BYTE_ENCODER.items()}


def to_byte_level(text):
    """Map a string to its byte-level BPE alphabet form (`" a"` -> `"Ġa"`)."""
    return text.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_BYTE_LEVEL)


def token_to_bytes(token):
    """The bytes a byte-level token stands for (`"Ġa"` -> `b" a"`).

    Characters outside the byte-level alphabet (as in added tokens like
    `"<|endoftext|>"`, which are plain ASCII and map to themselves anyway)
    stand for their own UTF-8 encoding.
    """
    try:
        return token.translate(_BYTE_LEVEL_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        return b"".join(
            bytes([BYTE_DECODER[c]]) if c in BYTE_DECODER else c.encode("utf-8")
            for c in token
        )


def fix_surrogates(text):
    """Replace lone surrogates (not encodable as UTF-8) like tiktoken does."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _describe(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
                f"{_describe(token)} in the {source}."
            )
        if isinstance(id, (bool, np.bool_)) or not isinstance(id, (int, np.integer)):
            raise TypeError(
                f"Vocabulary ids must be integers. Received {_describe(id)} "
                f"for token {_describe(token)} in the {source}."
            )
        id = int(id)
        if id < 0:
            raise ValueError(
                f"Vocabulary ids must be non-negative. Received {id} for "
                f"token {_describe(token)} in the {source}."
            )
        if id in seen:
            raise ValueError(
                f"Vocabulary id {id} is used by two tokens, "
                f"{_describe(seen[id])} and {_describe(token)}, in the "
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
                f"`'first second'` or a pair. Received {_describe(line)}."
            )
        if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
            raise ValueError(
                f"Merge rule {index} in the {source} is malformed: "
                f"{_describe(line)}. Each rule is two tokens separated by one "
                "space, e.g. 'Ġ t'."
            )
        pairs.append((parts[0], parts[1]))
    return pairs


def _classic_bpe(word, ranks):
    """Classic BPE of a byte-level `word` string: OpenAI's algorithm.

    Repeatedly merges, everywhere from left to right, the adjacent pair whose
    merge rule has the lowest rank, until no adjacent pair has a rule.
    """
    parts = list(word)
    get = ranks.get
    while len(parts) > 1:
        best_rank = None
        best_index = -1
        for i in range(len(parts) - 1):
            rank = get((parts[i], parts[i + 1]))
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank = rank
                best_index = i
        if best_index < 0:
            break
        first = parts[best_index]
        second = parts[best_index + 1]
        merged = first + second
        new_parts = parts[:best_index]
        i = best_index
        n = len(parts)
        while i < n:
            if i < n - 1 and parts[i] == first and parts[i + 1] == second:
                new_parts.append(merged)
                i += 2
            else:
                new_parts.append(parts[i])
                i += 1
        parts = new_parts
    return parts


def tiktoken_equivalence(merges, ranks=None):
    """Check that tiktoken-style BPE equals classic BPE for these merges.

    Args:
        merges: list of `(first, second)` pairs in rank order.
        ranks: optional dict `{(first, second): rank}` (built if missing).

    Returns:
        `(True, "")` if the rules are consistent (see the module docstring),
        else `(False, reason)`.
    """
    key = tuple(merges)
    with _EQUIVALENCE_LOCK:
        cached = _EQUIVALENCE_CACHE.get(key)
    if cached is not None:
        return cached
    verdict = _check_equivalence(merges, ranks)
    with _EQUIVALENCE_LOCK:
        if len(_EQUIVALENCE_CACHE) >= _EQUIVALENCE_CACHE_SIZE:
            _EQUIVALENCE_CACHE.clear()
        _EQUIVALENCE_CACHE[key] = verdict
    return verdict


def _check_equivalence(merges, ranks):
    if ranks is None:
        ranks = {pair: i for i, pair in enumerate(merges)}
    made_by = {}
    for i, (first, second) in enumerate(merges):
        merged = first + second
        if merged in made_by:
            return (
                False,
                f"merge rules {made_by[merged]} and {i} both make {merged!r}",
            )
        made_by[merged] = i
    for i, (first, second) in enumerate(merges):
        for part in (first, second):
            if len(part) == 1 and part in BYTE_DECODER:
                continue
            rank = made_by.get(part)
            if rank is None or rank >= i:
                return (
                    False,
                    f"merge rule {i} ({first} {second}) uses {part!r}, which "
                    "no earlier rule makes",
                )
    for i, (first, second) in enumerate(merges):
        merged = first + second
        if _classic_bpe(merged, ranks) != [merged]:
            return (
                False,
                f"classic BPE of the bytes of {merged!r} (rule {i}) does not "
                "give the token back",
            )
    return True, ""


class _PythonEngine:
    """The exact, pure-Python byte-level BPE engine (the definition)."""

    name = "python"

    def __init__(self, vocabulary, ranks, special_ids, special_pattern):
        self.vocabulary = vocabulary
        self.ranks = ranks
        self.special_ids = special_ids
        self.special_pattern = special_pattern
        self.split = _SplitPatterns.get().split
        self.cache = {}

    def _bpe_word(self, word):
        vocabulary = self.vocabulary
        ids = []
        for token in _classic_bpe(to_byte_level(word), self.ranks):
            id = vocabulary.get(token)
            if id is None:
                raise ValueError(
                    f"BPE of the text {word!r} gives the token {token!r}, "
                    "which is not in the vocabulary. The vocabulary must hold "
                    "all 256 byte tokens and the result of every merge rule."
                )
            ids.append(id)
        return ids

    def encode_ordinary(self, text):
        cache = self.cache
        ids = []
        for word in self.split(text):
            word_ids = cache.get(word)
            if word_ids is None:
                word_ids = self._bpe_word(word)
                if len(cache) >= _WORD_CACHE_SIZE:
                    cache.clear()
                cache[word] = word_ids
            ids.extend(word_ids)
        return ids

    def encode_segments(self, segments):
        ids = []
        special_ids = self.special_ids
        for is_special, segment in segments:
            if is_special:
                ids.append(special_ids[segment])
            else:
                ids.extend(self.encode_ordinary(segment))
        return ids

    def _encode(self, text):
        if self.special_pattern is None:
            return self.encode_ordinary(text)
        return self.encode_segments(split_special(text, self.special_pattern))

    def encode(self, text):
        try:
            return self._encode(text)
        except UnicodeEncodeError:
            return self._encode(fix_surrogates(text))


class _TiktokenEngine:
    """The fast engine: tiktoken's Rust BPE built from our own files."""

    name = "tiktoken"

    def __init__(self, mergeable_ranks, special_ranks, rank_to_id):
        encoding = tiktoken.Encoding(
            name="gpt2_lib_bpe",
            pat_str=FAST_SPLIT_PATTERN,
            mergeable_ranks=mergeable_ranks,
            special_tokens=special_ranks,
        )
        self.encoding = encoding
        self.allowed_special = set(special_ranks)
        self.rank_to_id = rank_to_id
        core = getattr(encoding, "_core_bpe", None)
        if core is not None and hasattr(core, "encode"):
            # Calling the Rust object directly skips the per-call checks of
            # `Encoding.encode` (disallowed special tokens), which we never
            # need: every unsplittable token is allowed.
            self._encode = core.encode
            self._encode_ordinary = core.encode_ordinary
        else:  # pragma: no cover - depends on tiktoken internals.
            self._encode = lambda text, allowed: encoding.encode(
                text, allowed_special=allowed, disallowed_special=()
            )
            self._encode_ordinary = encoding.encode_ordinary

    def make_encode(self):
        """Returns the fastest `str -> list[int]` function for this engine.

        tiktoken's special-token aware `encode` is slower than
        `encode_ordinary`, and both give the same ids on text that holds no
        special token, so a substring test picks the cheaper call.
        """
        encode = self._encode
        encode_ordinary = self._encode_ordinary
        allowed = self.allowed_special
        table = self.rank_to_id

        if not allowed:
            raw = encode_ordinary
        elif len(allowed) == 1:
            (special,) = allowed
            if table is None:
                # The common case (GPT-2): one special token, ids are ranks.
                def encode_text(text):
                    try:
                        if special in text:
                            return encode(text, allowed)
                        return encode_ordinary(text)
                    except UnicodeEncodeError:
                        return encode(fix_surrogates(text), allowed)

                return encode_text

            def raw(text):
                if special in text:
                    return encode(text, allowed)
                return encode_ordinary(text)

        else:
            search = re.compile(
                "|".join(re.escape(t) for t in sorted(allowed, key=len))
            ).search

            def raw(text):
                if search(text) is not None:
                    return encode(text, allowed)
                return encode_ordinary(text)

        if table is None:

            def encode_text(text):
                try:
                    return raw(text)
                except UnicodeEncodeError:
                    return raw(fix_surrogates(text))

        else:

            def encode_text(text):
                try:
                    ranks = raw(text)
                except UnicodeEncodeError:
                    ranks = raw(fix_surrogates(text))
                return [table[r] for r in ranks]

        return encode_text

    def encode_ordinary(self, text):
        ranks = self._encode_ordinary(text)
        if self.rank_to_id is None:
            return ranks
        table = self.rank_to_id
        return [table[r] for r in ranks]


def split_special(text, special_pattern):
    """Split `text` into `(is_special, segment)` pairs around special tokens."""
    pieces = special_pattern.split(text)
    segments = []
    for i, piece in enumerate(pieces):
        if i % 2:
            segments.append((True, piece))
        elif piece:
            segments.append((False, piece))
    return segments


class _State:
    """Everything derived from one vocabulary and merges, swapped atomically."""

    def __init__(self, vocabulary, merges, unsplittable_tokens, engine):
        self.vocabulary = vocabulary
        self.merges = merges
        self.id_to_token = {id: token for token, id in vocabulary.items()}
        self.sorted_tokens = None
        self.size = max(vocabulary.values(), default=-1) + 1
        for i, (first, second) in enumerate(merges):
            for token in (first, second, first + second):
                if token not in vocabulary:
                    raise ValueError(
                        f"The vocabulary and merges do not match: merge rule "
                        f"{i} ({first} {second}) uses or makes the token "
                        f"{token!r}, which is not in the vocabulary. Load the "
                        "vocabulary and merges files of the same model."
                    )
        self.ranks = {pair: i for i, pair in enumerate(merges)}

        self.unsplittable_tokens = list(unsplittable_tokens)
        special_ids = {}
        for token in self.unsplittable_tokens:
            if not isinstance(token, str) or not token:
                raise ValueError(
                    "Unsplittable tokens must be non-empty strings. Received: "
                    f"{_describe(token)}."
                )
            if token not in vocabulary:
                raise ValueError(
                    f"The unsplittable token {token!r} is not in the "
                    "vocabulary. Add it to the vocabulary or remove it from "
                    "`unsplittable_tokens`."
                )
            special_ids[token] = vocabulary[token]
        self.special_ids = special_ids
        if special_ids:
            # Longest first, so that the longest token matching at a position
            # wins (as in Hugging Face `tokenizers`).
            alternatives = sorted(special_ids, key=len, reverse=True)
            self.special_pattern = regex.compile(
                "(" + "|".join(regex.escape(t) for t in alternatives) + ")"
            )
        else:
            self.special_pattern = None

        # Bytes of each id, for detokenization; `None` marks unused ids.
        special_set = set(special_ids)
        # A list indexed by id, or a dict if the ids are very sparse.
        if self.size <= 2 * len(vocabulary) + 1024:
            id_to_bytes = [None] * self.size
        else:
            id_to_bytes = {}
        for token, id in vocabulary.items():
            if token in special_set:
                id_to_bytes[id] = token.encode("utf-8")
            else:
                id_to_bytes[id] = token_to_bytes(token)
        self.id_to_bytes = id_to_bytes

        self._python_engine = None
        self.fast_engine = None
        self.engine_note = ""
        if engine != "python":
            self.fast_engine, self.engine_note = self._build_fast_engine()
            if self.fast_engine is None and engine == "tiktoken":
                raise ValueError(
                    "`engine='tiktoken'` was requested but cannot be used "
                    f"exactly with this vocabulary: {self.engine_note}. Use "
                    "`engine='auto'` to fall back to the exact Python engine."
                )
        self.engine = self.fast_engine or self.python_engine

    @property
    def python_engine(self):
        """The exact engine, built on first use (a race builds it twice)."""
        if self._python_engine is None:
            self._python_engine = _PythonEngine(
                self.vocabulary, self.ranks, self.special_ids, self.special_pattern
            )
        return self._python_engine

    def _build_fast_engine(self):
        if tiktoken is None:
            return None, "tiktoken is not installed"
        vocabulary = self.vocabulary
        missing = [b for b, c in BYTE_ENCODER.items() if c not in vocabulary]
        if missing:
            return None, (
                f"{len(missing)} of the 256 byte tokens are not in the vocabulary"
            )
        tokens = list(self.special_ids)
        for a in tokens:
            for b in tokens:
                if a != b and b.startswith(a):
                    return None, (f"the unsplittable token {a!r} is a prefix of {b!r}")
        ok, reason = tiktoken_equivalence(self.merges, self.ranks)
        if not ok:
            return None, reason

        merged_ids = [vocabulary[a + b] for a, b in self.merges]
        identity = all(x < y for x, y in zip(merged_ids, merged_ids[1:]))
        mergeable = {}
        if identity:
            # Ranks are our ids: no translation of tiktoken's output needed.
            for b, c in BYTE_ENCODER.items():
                mergeable[bytes([b])] = vocabulary[c]
            for id in merged_ids:
                mergeable[self.id_to_bytes[id]] = id
            special_ranks = dict(self.special_ids)
            rank_to_id = None
        else:
            # Ranks in merge order, translated to our ids by a lookup table.
            rank_to_id = []
            for b, c in BYTE_ENCODER.items():
                mergeable[bytes([b])] = len(rank_to_id)
                rank_to_id.append(vocabulary[c])
            for id in merged_ids:
                mergeable[self.id_to_bytes[id]] = len(rank_to_id)
                rank_to_id.append(id)
            special_ranks = {}
            for token, id in self.special_ids.items():
                special_ranks[token] = len(rank_to_id)
                rank_to_id.append(id)
        return _TiktokenEngine(mergeable, special_ranks, rank_to_id), ""


def _is_integer_dtype(dtype):
    try:
        return np.issubdtype(np.dtype(dtype), np.integer)
    except TypeError:
        return False


@keras.saving.register_keras_serializable(package="gpt2_lib")
class BytePairTokenizer(Tokenizer):
    """Byte-level byte-pair encoding tokenizer, exact to OpenAI's GPT-2.

    Given the same vocabulary (token to id) and merge rules, this tokenizer
    produces the ids of OpenAI's `encoder.py`, of `tiktoken` and of
    Hugging Face `tokenizers`: the GPT-2 pre-tokenization pattern, the
    byte-to-unicode mapping, then merges by rank. Unsplittable tokens (such
    as `"<|endoftext|>"`) are kept whole wherever they appear in the text.

    Two engines compute the ids: `tiktoken` (fast, used when it is installed
    and proven equivalent for the vocabulary, see `tiktoken_equivalence()`)
    and a pure-Python engine that follows OpenAI's algorithm (used
    otherwise). Both give identical ids.

    Inputs are a string (or UTF-8 bytes), or a batch: a list or tuple of
    strings, a 1-D NumPy array of `str`/`bytes` (what `tf.numpy_function`
    passes), or a TensorFlow string tensor. Outputs are plain Python/NumPy:

    - Without `sequence_length`: a `list` of ids for one string, a `list` of
      such lists for a batch.
    - With `sequence_length`: a NumPy array of `dtype`, shape
      `(sequence_length,)` for one string and `(batch, sequence_length)` for a
      batch, truncated or padded on the right with `pad_token_id` (`0` if the
      tokenizer defines none, as KerasHub's `BytePairTokenizer` does).

    The tokenizer is thread-safe and holds no backend tensors.

    Args:
        vocabulary: dict mapping string tokens to integer ids, or the path of
            a JSON file holding one (OpenAI's `encoder.json`, Transformers'
            `vocab.json`, KerasHub's `vocabulary.json`).
        merges: list of merge rules (`"first second"` strings or
            `(first, second)` pairs, in rank order), or the path of a merges
            file (OpenAI's `vocab.bpe`, Transformers' or KerasHub's
            `merges.txt`).
        sequence_length: int. If set, outputs are padded or truncated to this
            length and returned as NumPy arrays. Defaults to `None`.
        add_prefix_space: bool. Whether to add a space before the text (each
            piece of text between unsplittable tokens that does not already
            start with a space, as Transformers' GPT-2 tokenizer does), so
            that the first word is tokenized like the following ones.
            Defaults to `False`.
        unsplittable_tokens: list of strings that are never split and map to
            their own id (they must be in the vocabulary). Defaults to the
            tokenizer's special tokens.
        dtype: string. Integer dtype of the dense outputs. Defaults to
            `"int32"`.
        engine: string. `"auto"` (default) uses tiktoken when it is exact
            for the vocabulary, else the Python engine; `"python"` forces the
            pure-Python engine; `"tiktoken"` requires tiktoken and raises if
            it cannot be exact. Not saved in the config.
        **kwargs: `name` and `config_file`, and config keys written by
            KerasHub that have no effect here (`trainable`, ...).

    Example:

    ```python
    from gpt2_lib.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    # The 256 byte tokens, then one token per merge rule.
    vocab = {token: i for i, token in enumerate(bytes_to_unicode().values())}
    merges = ["b u", "t t", "e r", "bu tt", "butt er", "f l", "fl y"]
    for rule in merges:
        vocab["".join(rule.split())] = len(vocab)
    tokenizer = gpt2_lib.tokenizers.BytePairTokenizer(vocab, merges)
    tokenizer("butterfly")  # [260, 262]: "butter", "fly"
    tokenizer(["butterfly", "butter"])  # [[260, 262], [260]]
    tokenizer.detokenize([[260, 262]])  # ["butterfly"]

    tokenizer = gpt2_lib.tokenizers.BytePairTokenizer(
        vocab, merges, sequence_length=3
    )
    tokenizer(["butterfly", "butter"])  # array([[260, 262, 0], [260, 0, 0]])
    ```
    """

    def __init__(
        self,
        vocabulary=None,
        merges=None,
        sequence_length=None,
        add_prefix_space=False,
        unsplittable_tokens=None,
        dtype="int32",
        engine="auto",
        **kwargs,
    ):
        super().__init__(dtype=dtype, **kwargs)
        if not _is_integer_dtype(self.dtype):
            raise ValueError(
                "`dtype` must be an integer dtype such as 'int32'. String "
                "outputs are not supported; use `id_to_token()` to read "
                f"tokens. Received: dtype={dtype!r}."
            )
        if engine not in ENGINES:
            raise ValueError(
                f"`engine` must be one of {ENGINES}. Received: engine={engine!r}."
            )
        if engine == "tiktoken" and tiktoken is None:
            raise ValueError(
                "`engine='tiktoken'` requires the `tiktoken` package: "
                "`pip install tiktoken`."
            )
        self._engine_request = engine
        self.sequence_length = sequence_length
        if not isinstance(add_prefix_space, (bool, np.bool_)):
            raise TypeError(
                "`add_prefix_space` must be a bool. Received: "
                f"add_prefix_space={add_prefix_space!r}."
            )
        self.add_prefix_space = bool(add_prefix_space)
        if unsplittable_tokens is None:
            unsplittable_tokens = self.special_tokens
        elif isinstance(unsplittable_tokens, str) or not isinstance(
            unsplittable_tokens, (list, tuple)
        ):
            raise TypeError(
                "`unsplittable_tokens` must be a list of strings. Received: "
                f"{_describe(unsplittable_tokens)}."
            )
        self.unsplittable_tokens = list(unsplittable_tokens)
        self.file_assets = [VOCAB_FILENAME, MERGES_FILENAME]
        self._state = None
        self._encode = None
        self.set_vocabulary_and_merges(vocabulary, merges)

    # ------------------------------------------------------------------
    # Vocabulary.

    @property
    def sequence_length(self):
        """The padded length of outputs, or `None` for unpadded lists."""
        return self._sequence_length

    @sequence_length.setter
    def sequence_length(self, value):
        if value is not None and (
            isinstance(value, (bool, np.bool_))
            or not isinstance(value, (int, np.integer))
            or value < 1
        ):
            raise ValueError(
                "`sequence_length` must be a positive integer or `None`. "
                f"Received: sequence_length={value!r}."
            )
        self._sequence_length = None if value is None else int(value)

    def set_vocabulary_and_merges(self, vocabulary, merges):
        """Set the vocabulary and merge rules from Python objects or files.

        Args:
            vocabulary: dict or JSON file path (see the class docstring).
            merges: list or merges file path (see the class docstring).
        """
        if vocabulary is None and merges is None:
            self._state = None
            self._encode = None
            self.vocabulary = None
            self.merges = None
            return
        if vocabulary is None or merges is None:
            missing = "vocabulary" if vocabulary is None else "merges"
            raise ValueError(
                f"`{missing}` is missing: pass both `vocabulary` and `merges` "
                "(or neither, and load them later with `load_assets()`)."
            )
        vocabulary = read_vocabulary(vocabulary)
        pairs = read_merges(merges)
        state = _State(
            vocabulary, pairs, self.unsplittable_tokens, self._engine_request
        )
        # Check special tokens before publishing the new state.
        previous = self._state
        self._state = state
        try:
            self._update_special_token_ids()
        except ValueError:
            self._state = previous
            raise
        self.vocabulary = state.vocabulary
        self.merges = [f"{a} {b}" for a, b in pairs]
        self._encode = (
            state.fast_engine.make_encode()
            if state.fast_engine is not None
            else state.python_engine.encode
        )

    def _check_vocabulary(self):
        state = self._state
        if state is None:
            raise ValueError(
                f"No vocabulary has been set for {self.__class__.__name__}. "
                "Pass `vocabulary` and `merges` when creating the tokenizer, "
                "or call `load_assets()` / `from_preset()`."
            )
        return state

    @property
    def engine(self):
        """The engine in use: `"tiktoken"` or `"python"` (`None` if unset)."""
        state = self._state
        return None if state is None else state.engine.name

    @property
    def engine_note(self):
        """Why the fast engine is not used (empty when it is)."""
        state = self._state
        return "" if state is None else state.engine_note

    def get_vocabulary(self):
        """Get the vocabulary as a list of string tokens, ordered by id."""
        state = self._check_vocabulary()
        if state.sorted_tokens is None:
            state.sorted_tokens = [
                token for _, token in sorted(state.id_to_token.items())
            ]
        return list(state.sorted_tokens)

    def vocabulary_size(self):
        """The size of the id space: the largest id plus one."""
        return self._check_vocabulary().size

    def id_to_token(self, id):
        """Convert an integer id to a string token."""
        state = self._check_vocabulary()
        if isinstance(id, (bool, np.bool_)) or not isinstance(id, (int, np.integer)):
            raise TypeError(f"`id` must be an integer. Received: {_describe(id)}.")
        token = state.id_to_token.get(int(id))
        if token is None:
            raise ValueError(
                f"Id {id} is not in the vocabulary (ids run from 0 to "
                f"{state.size - 1})."
            )
        return token

    def token_to_id(self, token):
        """Convert a string token to an integer id."""
        state = self._state
        if state is None:
            raise ValueError(
                f"No vocabulary has been set; cannot look up token {_describe(token)}."
            )
        id = state.vocabulary.get(token) if isinstance(token, str) else None
        if id is None:
            raise ValueError(f"Token {_describe(token)} is not in the vocabulary.")
        return id

    def save_assets(self, dir_path):
        """Write `vocabulary.json` and `merges.txt` into `dir_path`.

        The merges file has Transformers' `#version: 0.2` header, which
        KerasHub, Transformers and this tokenizer all skip when reading.
        """
        state = self._check_vocabulary()
        os.makedirs(dir_path, exist_ok=True)
        vocab_path = os.path.join(dir_path, VOCAB_FILENAME)
        merges_path = os.path.join(dir_path, MERGES_FILENAME)
        with open(vocab_path, "w", encoding="utf-8") as f:
            f.write(json.dumps(state.vocabulary, ensure_ascii=False))
        with open(merges_path, "w", encoding="utf-8", newline="\n") as f:
            f.write(MERGES_HEADER + "\n")
            for first, second in state.merges:
                f.write(f"{first} {second}\n")

    def load_assets(self, dir_path):
        """Read `vocabulary.json` and `merges.txt` from `dir_path`."""
        self.set_vocabulary_and_merges(
            os.path.join(dir_path, VOCAB_FILENAME),
            os.path.join(dir_path, MERGES_FILENAME),
        )

    # ------------------------------------------------------------------
    # Tokenization.

    def _canonicalize(self, inputs):
        """Returns `(list of str, batched)` for any accepted input."""
        cls = inputs.__class__
        if cls is str:
            return [inputs], False
        if cls is list or cls is tuple:
            texts = list(inputs)
            for i, item in enumerate(texts):
                if item.__class__ is not str:
                    texts[i] = _to_text(item, i)
            return texts, True
        if isinstance(inputs, str):
            return [str(inputs)], False
        if isinstance(inputs, (bytes, bytearray)):
            return [_to_text(inputs, None)], False
        if not isinstance(inputs, np.ndarray) and _is_tf_tensor(inputs):
            if hasattr(inputs, "to_list"):  # tf.RaggedTensor
                raise ValueError(
                    "`tokenize()` takes a string or a 1-D batch of strings. "
                    "Received a ragged tensor of rank "
                    f"{inputs.shape.rank}; flatten it first."
                )
            return self._canonicalize(inputs.numpy())
        if isinstance(inputs, np.ndarray):
            if inputs.ndim == 0:
                return [_to_text(inputs.item(), None)], False
            if inputs.ndim == 1:
                return [
                    _to_text(item, i) for i, item in enumerate(inputs.tolist())
                ], True
            raise ValueError(
                "`tokenize()` takes a string or a 1-D batch of strings. "
                f"Received an array of shape {inputs.shape}; reshape it to "
                "1-D (e.g. `x.reshape(-1)`) first."
            )
        if isinstance(inputs, np.generic):
            return [_to_text(inputs.item(), None)], False
        raise TypeError(
            "`tokenize()` takes a string, bytes, or a batch of them (list, "
            "tuple, 1-D NumPy array, TensorFlow string tensor). Received: "
            f"{_describe(inputs)} of type {type(inputs).__name__}."
        )

    def _encode_texts(self, texts):
        encode = self._encode
        if self.add_prefix_space:
            encode = self._encode_with_prefix_space
        return [encode(text) for text in texts]

    def _encode_with_prefix_space(self, text):
        state = self._state
        engine = state.engine
        if state.special_pattern is None:
            segments = [(False, text)] if text else []
        else:
            segments = split_special(text, state.special_pattern)
        ids = []
        for is_special, segment in segments:
            if is_special:
                ids.append(state.special_ids[segment])
                continue
            if not segment.startswith(" "):
                segment = " " + segment
            try:
                ids.extend(engine.encode_ordinary(segment))
            except UnicodeEncodeError:
                ids.extend(engine.encode_ordinary(fix_surrogates(segment)))
        return ids

    def _tokenize_unpadded(self, inputs):
        self._check_vocabulary()
        texts, batched = self._canonicalize(inputs)
        return self._encode_texts(texts), batched

    def tokenize(self, inputs):
        """Tokenize a string or a batch of strings into token ids.

        Args:
            inputs: a `str` (or UTF-8 `bytes`), or a batch: list/tuple of
                strings, 1-D NumPy array of `str`/`bytes`, or a TensorFlow
                string tensor of rank 0 or 1.

        Returns:
            Without `sequence_length`: `list[int]` for one string,
            `list[list[int]]` for a batch. With `sequence_length`: a NumPy
            array of shape `(sequence_length,)` or `(batch, sequence_length)`.
        """
        # Fast path: one Python string, the most common call.
        if (
            inputs.__class__ is str
            and self._sequence_length is None
            and not self.add_prefix_space
        ):
            encode = self._encode
            if encode is not None:
                return encode(inputs)
        self._check_vocabulary()
        texts, batched = self._canonicalize(inputs)
        outputs = self._encode_texts(texts)
        if self._sequence_length is not None:
            dense = self._to_dense(outputs, self._sequence_length)
            return dense if batched else dense[0]
        return outputs if batched else outputs[0]

    def _to_dense(self, rows, length):
        pad = getattr(self, "pad_token_id", None)
        pad = 0 if pad is None else pad
        out = np.full((len(rows), length), pad, dtype=self.dtype)
        for i, row in enumerate(rows):
            row = row[:length]
            out[i, : len(row)] = row
        return out

    def detokenize(self, inputs):
        """Convert token ids back to strings.

        Bytes that do not form valid UTF-8 (e.g. a partial multi-byte
        character at the end of a truncated sequence) are replaced by
        U+FFFD, as OpenAI's decoder does.

        Args:
            inputs: a sequence of ids (`list`, 1-D NumPy array or backend
                tensor) or a batch of them (`list` of lists, 2-D array or
                tensor, `tf.RaggedTensor`), or a single id.

        Returns:
            A `str` for a sequence (or a single id), a `list[str]` for a
            batch.
        """
        state = self._check_vocabulary()
        rows, batched = _canonicalize_ids(inputs)
        table = state.id_to_bytes
        size = state.size
        outputs = []
        for row in rows:
            try:
                if row and min(row) < 0:
                    raise IndexError
                text = b"".join([table[i] for i in row])
            except (IndexError, KeyError, TypeError):
                raise _bad_ids_error(row, table, size) from None
            outputs.append(text.decode("utf-8", "replace"))
        return outputs if batched else outputs[0]

    # `__call__` is `tokenize` itself: one call frame less per string.
    __call__ = tokenize

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "tokenize" in cls.__dict__ and "__call__" not in cls.__dict__:
            # A subclass that overrides `tokenize` is called through it.
            cls.__call__ = Tokenizer.__call__

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "add_prefix_space": self.add_prefix_space,
                "unsplittable_tokens": list(self.unsplittable_tokens),
            }
        )
        return config


def _to_text(item, index):
    """Convert one input item to `str`, or raise a clear error."""
    if isinstance(item, str):
        return str(item)
    where = "The input" if index is None else f"Item {index} of the batch"
    if isinstance(item, (bytes, bytearray)):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{where} is bytes that are not valid UTF-8 ({e}). Decode it "
                "first, e.g. `data.decode('utf-8', errors='replace')`."
            ) from None
    raise TypeError(
        f"{where} must be a string or UTF-8 bytes. Received: "
        f"{_describe(item)} of type {type(item).__name__}."
    )


def _is_tf_tensor(value):
    module = type(value).__module__
    return module.startswith("tensorflow") and hasattr(value, "numpy")


def _canonicalize_ids(inputs):
    """Returns `(list of id lists, batched)` for any accepted id input."""
    if isinstance(inputs, (bool, np.bool_)):
        raise TypeError(f"Token ids must be integers. Received: {inputs!r}.")
    if isinstance(inputs, (int, np.integer)):
        return [[int(inputs)]], False
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            return [[]], False
        first = inputs[0]
        if isinstance(first, (list, tuple, np.ndarray)) or _is_tensor(first):
            return [_row_to_list(row, i) for i, row in enumerate(inputs)], True
        return [_row_to_list(inputs, None)], False
    if _is_tf_tensor(inputs):
        if hasattr(inputs, "to_list"):  # tf.RaggedTensor
            rows = inputs.to_list()
            if rows and not isinstance(rows[0], list):
                return [_row_to_list(rows, None)], False
            return [_row_to_list(row, i) for i, row in enumerate(rows)], True
        inputs = inputs.numpy()
    if not isinstance(inputs, np.ndarray):
        if _is_tensor(inputs):
            inputs = keras.ops.convert_to_numpy(inputs)
        elif hasattr(inputs, "__array__"):  # E.g. another framework's tensor.
            inputs = np.asarray(inputs)
        else:
            raise TypeError(
                "`detokenize()` takes token ids: an int, a list of ints, a "
                "list of lists of ints, a NumPy array or a backend tensor. "
                f"Received: {_describe(inputs)} of type "
                f"{type(inputs).__name__}."
            )
    array = _check_int_array(inputs)
    if array.ndim == 0:
        return [[int(array)]], False
    if array.ndim == 1:
        return [array.tolist()], False
    if array.ndim == 2:
        return array.tolist(), True
    raise ValueError(
        "`detokenize()` takes a 1-D sequence or a 2-D batch of ids. Received "
        f"an array of shape {array.shape}."
    )


def _is_tensor(value):
    if isinstance(value, np.ndarray):
        return False
    if _is_tf_tensor(value):
        return True
    try:
        return keras.ops.is_tensor(value)
    except Exception:
        return False


def _check_int_array(array):
    array = np.asarray(array)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            "Token ids must be integers. Received an array of dtype "
            f"{array.dtype}; cast it with `.astype('int32')` if it holds ids."
        )
    return array


def _row_to_list(row, index):
    if isinstance(row, np.ndarray) or _is_tensor(row):
        if not isinstance(row, np.ndarray):
            row = keras.ops.convert_to_numpy(row)
        row = _check_int_array(row)
        if row.ndim != 1:
            raise ValueError(
                f"Row {index} of the batch must be a 1-D sequence of ids. "
                f"Received shape {row.shape}."
            )
        return row.tolist()
    if not isinstance(row, (list, tuple)):
        where = "The input" if index is None else f"Row {index} of the batch"
        raise TypeError(
            f"{where} must be a sequence of integer ids. Received: {_describe(row)}."
        )
    # Item types are checked by `detokenize()` when a lookup fails.
    return row


def _bad_ids_error(row, table, size):
    """The error for the first invalid id of `row`."""
    for id in row:
        if isinstance(id, (bool, np.bool_)) or not isinstance(id, (int, np.integer)):
            return TypeError(
                f"Token ids must be integers. Received {_describe(id)} of "
                f"type {type(id).__name__}."
            )
        if (
            not (0 <= id < size)
            or (table.get(id) if isinstance(table, dict) else table[id]) is None
        ):
            return ValueError(
                f"Token id {id} is outside the vocabulary (valid ids: 0 to "
                f"{size - 1}, vocabulary holes excluded). Check the ids or "
                "use the tokenizer of the model that produced them."
            )
    return ValueError(f"Invalid token ids: {_describe(row)}.")
