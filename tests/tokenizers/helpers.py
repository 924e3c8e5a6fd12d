"""Shared test data and independent references for the tokenizer tests."""

import random

# Strings that exercise every branch of the GPT-2 pre-tokenizer and of BPE.
ADVERSARIAL_STRINGS = [
    # Empty and whitespace.
    "",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    " \r\n",
    "\r\n\r\n",
    "a\r\nb",
    "\n\n\n",
    "   \n  x",
    "x   ",
    "x \t \n ",
    "\t\tindented\tcode",
    "a  b   c    d",
    " " * 1000,
    "\n" * 300,
    "\t \t \t",
    "\x0b\x0c",
    "\x1c\x1d\x1e\x1f",
    "\x00null\x01\x7f",
    "\x85NEL",
    "\u2028line sep\u2029",
    # Contractions in any case.
    "don't",
    "DON'T",
    "Don'T",
    "I'm I'M i'M",
    "we'll WE'LL We'Ll",
    "they're THEY'RE",
    "you've YOU'VE",
    "he'd HE'D",
    "it's IT'S It'S",
    "'s 't 're 've 'm 'll 'd",
    "'S 'T 'RE 'VE 'M 'LL 'D",
    "''s'''",
    "rock'n'roll",
    "it’s curly",
    "ʼs modifier",
    # Numbers.
    "123",
    "1234567890123456789",
    "3.14159",
    "1,000,000",
    "-42 +7",
    "1e10 0x1F",
    "١٢٣ ٤٥٦",
    "½ ⅓ Ⅻ ²³",
    "2024-01-01T12:00:00Z",
    # Accents and letters.
    "café naïve Zoë",
    "e\u0301 combining",
    "Ångström İstanbul straße",
    "ﬁ ligature",
    # Emoji, ZWJ sequences, flags.
    "😀",
    "👍🏽",
    "👨‍👩‍👧‍👦 family",
    "🏳️‍🌈",
    "❤️",
    "🇺🇸🇬🇧",
    "a😀b",
    "😀" * 200,
    # Scripts.
    "日本語のテキスト",
    "中文文本，标点。",
    "한국어 텍스트",
    "Ελληνικά",
    "русский текст",
    "עברית",
    "العربية",
    "हिन्दी",
    "ไทย",
    # Special spaces.
    "non\u00a0breaking",
    "\u00a0",
    "\u2009thin\u2009space",
    "\u202fnarrow",
    "\u3000ideographic",
    "zero\u200bwidth",
    "\u200b",
    "\u200d",
    "\ufeffBOM",
    "\u180emongolian",
    # URLs and code.
    "https://example.com/path?query=1&b=two#frag",
    "user@example.com",
    "C:\\Windows\\System32",
    "def f(x):\n    return x ** 2  # comment\n",
    "if (a && b) { c++; }\r\n",
    '<div class="x">&amp;</div>',
    "SELECT * FROM t WHERE id = 1;",
    '{"json": [1, 2.5, null]}',
    "$$\\frac{a}{b}$$",
    # Very long words.
    "a" * 5000,
    "supercalifragilisticexpialidocious" * 50,
    "x" * 10000 + " y",
    "ab" * 3000,
    "!?" * 1000,
    "9" * 2000,
    # <|endoftext|> inside text, and near misses.
    "<|endoftext|>",
    "a<|endoftext|>b",
    "<|endoftext|><|endoftext|>",
    "text <|endoftext|> more",
    " <|endoftext|> ",
    "\n<|endoftext|>\n",
    "<|endoftext",
    "<|endoftext|",
    "<|endofte xt|>",
    "<|ENDOFTEXT|>",
    "<<|endoftext|>>",
    # Mixed.
    "Hello, World! How are you?",
    "ALL CAPS SENTENCE",
    "MiXeD cAsE wOrDs",
]


def random_unicode_strings(count=200, seed=0):
    """Random strings mixing ASCII, whitespace, and code points of all planes."""
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        " \t\n\r\x0b\x0c\u00a0\u2009\u3000\u200b",
        "0123456789'.,;:!?-_()[]{}<>|/\\\"",
    ]
    strings = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randint(0, 60)):
            kind = rng.random()
            if kind < 0.5:
                chars.append(rng.choice(rng.choice(pools)))
            elif kind < 0.8:
                chars.append(chr(rng.randint(0x80, 0xFFFF)))
            else:
                chars.append(chr(rng.randint(0x10000, 0x10FFFF)))
        text = "".join(chars)
        # Lone surrogates cannot round trip through UTF-8: leave them out.
        text = "".join(c for c in text if not 0xD800 <= ord(c) <= 0xDFFF)
        strings.append(text)
    return strings


def codepoint_sweep_strings(start=0, stop=0x110000, step=1, block=4096):
    """Strings covering code points in contexts that stress the pre-tokenizer.

    Each code point appears between letters, after a space, doubled after a
    space, between digits and before whitespace.
    """
    strings = []
    for base in range(start, stop, block):
        parts = []
        for cp in range(base, min(base + block, stop), step):
            if 0xD800 <= cp <= 0xDFFF:
                continue
            c = chr(cp)
            parts.append(f"a{c}b {c} {c}{c} 1{c}1 {c}\n")
        if parts:
            strings.append("".join(parts))
    return strings


def hf_bpe_reference(vocabulary, merges, special_tokens=(), add_prefix_space=False):
    """A Hugging Face `tokenizers` byte-level BPE (classic merges by rank)."""
    from tokenizers import Tokenizer
    from tokenizers import decoders
    from tokenizers import models
    from tokenizers import pre_tokenizers

    pairs = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in merges]
    tokenizer = Tokenizer(models.BPE(vocab=dict(vocabulary), merges=pairs))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(
        add_prefix_space=add_prefix_space
    )
    tokenizer.decoder = decoders.ByteLevel()
    if special_tokens:
        tokenizer.add_special_tokens(list(special_tokens))
    return tokenizer


def byte_vocabulary(merges=(), special_tokens=("<|endoftext|>",)):
    """GPT-2's 256 byte tokens (in GPT-2's id order), merged tokens, specials."""
    from gpt2_lib.tokenizers.byte_level import bytes_to_unicode

    vocabulary = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for rule in merges:
        first, second = rule.split() if isinstance(rule, str) else rule
        vocabulary.setdefault(first + second, len(vocabulary))
    for token in special_tokens:
        vocabulary.setdefault(token, len(vocabulary))
    return vocabulary


class OpenAIReference:
    """A transcription of OpenAI's `encoder.py` (gpt-2/src/encoder.py).

    Written independently of `gpt2_lib` to serve as the definition on merge
    lists where implementations differ: OpenAI merges *every* occurrence of
    the best pair in one step, whereas Hugging Face `tokenizers` and
    tiktoken merge one occurrence at a time, which can differ when a rule
    uses a token made by a later rule.
    """

    PATTERN = (
        r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
        r"""|\s+(?!\S)|\s+"""
    )

    def __init__(self, encoder, merges):
        import regex

        bs = (
            list(range(ord("!"), ord("~") + 1))
            + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1))
        )
        cs = bs[:]
        n = 0
        for b in range(2**8):
            if b not in bs:
                bs.append(b)
                cs.append(2**8 + n)
                n += 1
        self.byte_encoder = dict(zip(bs, [chr(c) for c in cs]))
        self.encoder = encoder
        pairs = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in merges]
        self.bpe_ranks = dict(zip(pairs, range(len(pairs))))
        self.pat = regex.compile(self.PATTERN)

    @staticmethod
    def get_pairs(word):
        pairs = set()
        prev_char = word[0]
        for char in word[1:]:
            pairs.add((prev_char, char))
            prev_char = char
        return pairs

    def bpe(self, token):
        word = tuple(token)
        pairs = self.get_pairs(word)
        if not pairs:
            return token
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                    new_word.extend(word[i:j])
                    i = j
                except ValueError:
                    new_word.extend(word[i:])
                    break
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = self.get_pairs(word)
        return " ".join(word)

    def encode(self, text):
        bpe_tokens = []
        for token in self.pat.findall(text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            bpe_tokens.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return bpe_tokens
