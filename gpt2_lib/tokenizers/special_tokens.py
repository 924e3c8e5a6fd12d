"""Unsplittable (special) tokens: found in the text before any BPE.

Tokens such as `"<|endoftext|>"` are kept whole wherever they appear and map
to their own id; the text between them is pre-tokenized and encoded as usual.
"""

import regex


def special_token_pattern(tokens):
    """A compiled pattern matching any of `tokens`, or `None` if there are none.

    The longest token matching at a position wins (as in Hugging Face
    `tokenizers`).

    Example:

    >>> special_token_pattern(["<s>", "<s>x"]).findall("<s>x<s>")
    ['<s>x', '<s>']
    """
    if not tokens:
        return None
    alternatives = sorted(tokens, key=len, reverse=True)
    return regex.compile("(" + "|".join(regex.escape(t) for t in alternatives) + ")")


def split_special(text, pattern):
    """Split `text` into `(is_special, segment)` pairs around special tokens.

    Empty segments between special tokens are dropped.

    Example:

    >>> split_special("a<|endoftext|>b", special_token_pattern(["<|endoftext|>"]))
    [(False, 'a'), (True, '<|endoftext|>'), (False, 'b')]
    """
    pieces = pattern.split(text)
    segments = []
    for i, piece in enumerate(pieces):
        if i % 2:
            segments.append((True, piece))
        elif piece:
            segments.append((False, piece))
    return segments
